"""The supernet state every method transforms (network, alphas, masks, optimisers, generator) and
the one training loop with its modes, plus that step as one graph-recordable function. May import
`common`, `spaces` and `data`.
"""
