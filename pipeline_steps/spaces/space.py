"""What a search space is: its ops and cell types, how it builds its supernet and derives an architecture.

A supernet's `forward(x, weights, active)` takes, per cell type (NB201: "cell"; DARTS: "normal",
"reduce"), the (edges x ops) mixing weights and the list of ops to compute on each edge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Space:
    name: str
    ops: tuple[str, ...]
    cell_types: tuple[str, ...]
    num_edges: int
    build: Callable[..., nn.Module]          # build(num_classes)
    derive: Callable[..., Any]               # derive(weights, mask, allow_none) -> arch
    available: Callable[[], dict] | None = None  # ops present per edge (spaces with per-edge op lists)

    def op_index(self, name: str) -> int:
        return self.ops.index(name)

    def initial_mask(self) -> dict[str, torch.Tensor]:
        """The mask a search starts from: every op the space offers on each edge is alive."""
        if self.available is not None:
            return {k: m.clone().bool() for k, m in self.available().items()}
        return {k: torch.ones(self.num_edges, len(self.ops), dtype=torch.bool) for k in self.cell_types}
