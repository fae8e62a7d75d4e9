"""DARTS, first order (Liu et al., ICLR 2019): the baseline the other methods build on.

  1. supernet  Train the weight-sharing supernet bilevel for `search.epochs` epochs: per step,
               an Adam step of alpha on a D_val batch, then an SGD step of w on a D_tr batch
               (train.MODES["bilevel"]). This stage is shared with every method whose supernet
               settings agree.
  2. derive    Magnitude: on every edge keep the op with the largest softmax(alpha).
  3. lookup    NAS-Bench-201 accuracies of the derived cell (DARTS space: retrain).
"""
from __future__ import annotations

from .base import Method


class Darts(Method):
    params_key = "darts"

    def supernet_mode(self, cfg: dict) -> str:
        return cfg["method"]["darts"]["supernet"]
