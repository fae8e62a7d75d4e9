"""Search spaces. A space says which ops exist, builds its supernet and derives an architecture.

A supernet's `forward(x, weights, active)` takes, per cell type (NB201: "cell"; DARTS: "normal",
"reduce"), the (edges x ops) mixing weights and the list of ops to compute on each edge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import NasflowError
from . import nb201


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


def _nb201(settings: dict) -> Space:
    ops = tuple(settings.get("op_order") or nb201.OPS)
    if sorted(ops) != sorted(nb201.OPS):
        raise NasflowError(f"nb201 op_order {list(ops)} must be a permutation of {list(nb201.OPS)}")

    def build(num_classes: int) -> nn.Module:
        return nb201.Supernet(num_classes, channels=settings["channels"], cells_per_stage=settings["cells_per_stage"],
                              op_names=ops, bn_affine=settings.get("bn_affine", False),
                              pool_bn=settings.get("pool_bn", False))

    def derive(weights, mask, allow_none: bool) -> str:
        return nb201.derive(weights, mask, ops, allow_none)

    return Space("nb201", ops, ("cell",), len(nb201.EDGES), build, derive)


def _darts(settings: dict) -> Space:
    from . import darts

    return darts.make_space(settings)


SPACES: dict[str, Callable[[dict], Space]] = {"nb201": _nb201, "darts": _darts}


def get_space(name: str, settings: dict) -> Space:
    if name not in SPACES:
        raise NasflowError(f"unknown search space {name!r}; valid spaces: {', '.join(SPACES)}")
    return SPACES[name](settings)
