"""Scores: one number per (edge, op) that a method selects or prunes by."""
