"""What a found architecture scores: the NAS-Bench-201 lookup table, the discrete networks and
their retraining from scratch. May import `common`, `spaces`, `data` and `supernet`.
"""
