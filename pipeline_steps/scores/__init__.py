"""Scores: one number per (edge, op), or per child, that a method selects or prunes by. May import
`common`, `spaces`, `data`, `supernet` and `evaluation` (the benchmark a ranking is checked against).
"""
