"""Search spaces (NAS-Bench-201, DARTS): ops, supernets, genotypes, and the registry below that
builds a space from its settings and finds a supernet's search cells. May import `common` only.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..common.errors import NasflowError
from . import darts, nb201
from .space import Space


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


SPACES: dict[str, Callable[[dict], Space]] = {"nb201": _nb201, "darts": darts.make_space}


def get_space(name: str, settings: dict) -> Space:
    if name not in SPACES:
        raise NasflowError(f"unknown search space {name!r}; valid spaces: {', '.join(SPACES)}")
    return SPACES[name](settings)


def search_cells(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(cell type, cell) for every search cell of a supernet, in forward order."""
    cells = []
    for m in model.modules():
        if isinstance(m, nb201.SearchCell):
            cells.append(("cell", m))
        elif isinstance(m, darts.SearchCell):
            cells.append(("reduce" if m.reduction else "normal", m))
    return cells
