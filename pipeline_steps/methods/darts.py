"""DARTS, first order (Liu et al., ICLR 2019): the baseline the other methods build on.

  1. supernet  Train the weight-sharing supernet bilevel for `search.epochs` epochs: per step,
               an Adam step of alpha on a D_val batch, then an SGD step of w on a D_tr batch
               (train.MODES["bilevel"]). This stage is shared with every method whose supernet
               settings agree.
  2. derive    Magnitude: on every edge keep the op with the largest softmax(alpha).
  3. lookup    NAS-Bench-201 accuracies of the derived cell.
"""
from __future__ import annotations

import torch

from ..spaces import Space
from ..supernet import mixing_weights


def supernet_mode(cfg: dict) -> str:
    return cfg["method"]["darts"]["supernet"]


def derive_settings(cfg: dict) -> dict:
    return {"allow_none": cfg["method"]["darts"]["allow_none_in_derive"]}


def derive(space: Space, alpha: dict, mask: dict, settings: dict):
    """Magnitude derive from alpha (a checkpoint's or one epoch's of the history)."""
    mask = {k: torch.as_tensor(m, dtype=torch.bool) for k, m in mask.items()}
    weights = {k: mixing_weights(torch.as_tensor(a), mask[k], "softmax") for k, a in alpha.items()}
    return space.derive(weights, mask, settings["allow_none"])
