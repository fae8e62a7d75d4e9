"""Shrink the space, merge small adjacent edge spaces, expand their weights (SE-NAS 3.3-3.4).

shrink  Walk R by S ascending and drop an op if its edge keeps another alive op (the ABS
        `drop_legal` rule); stop after k drops. Globally over all edges and cell types;
        `one_per_edge` takes at most one op per edge (the paper's DARTS-space setting).
merge   Per cell type, walk the edges in index order and grow a group while the product of
        their alive-op counts stays <= T. A group of >= 2 edges with > 1 partial model is a
        merged child space.
expand  In every cell, each partial model of a merged group (its ops on the group's edges) gets
        private copies of those edges' op modules. A forward pass whose `active` lists one op per
        edge runs each cell's group edges on the copies of the partial model it picked; any other
        forward (several ops on an edge) uses the shared modules.

Expansion lives inside the supernet: an expanded op is a `RoutedOp` (the shared module plus a
ModuleDict of copies) put in the op's place in its cell, and each cell carries a pre-hook that
sets the routes from the `active` it receives (also kept as the cell's `route_partials`, for code
that runs the cell's edges itself, as batched children do). All routing state sits on the cell,
so deep copies (e.g. the averaged-weight model) route through their own copies. To load a
checkpoint of an expanded supernet, `expand(model, groups, mask)` a fresh one first, then
load_state_dict.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..scores.senas import Operator, OperatorScores
from ..spaces import search_cells

# --------------------------------------------------------------------------- shrink


def shrink(mask: Mapping[str, torch.Tensor], scores: OperatorScores, k: int,
           one_per_edge: bool = False) -> tuple[dict[str, torch.Tensor], list[Operator]]:
    """The mask with the k lowest-scoring legal operators removed, and those operators in drop
    order. Fewer than k are dropped only when no other drop is legal."""
    new = {kind: m.clone().bool() for kind, m in mask.items()}
    dropped: list[Operator] = []
    touched: set[tuple[str, int]] = set()
    for kind, e, o in scores.ranked():
        if len(dropped) == k:
            break
        if int(new[kind][e].sum()) < 2 or (one_per_edge and (kind, e) in touched):
            continue
        new[kind][e, o] = False
        dropped.append((kind, e, o))
        touched.add((kind, e))
    return new, dropped


# --------------------------------------------------------------------------- merge


def merge_groups(alive_counts: Sequence[int], threshold: int) -> list[tuple[int, ...]]:
    """Consecutive edges, greedily from the first: a group closes when the next edge would
    push the product of its alive-op counts above `threshold`."""
    groups: list[tuple[int, ...]] = []
    current: list[int] = []
    size = 1
    for e, n in enumerate(alive_counts):
        if current and size * n > threshold:
            groups.append(tuple(current))
            current, size = [], 1
        current.append(e)
        size *= n
    if current:
        groups.append(tuple(current))
    return groups


@dataclass(frozen=True)
class MergedGroup:
    """A merged child space: consecutive edges of one cell type and its partial models."""
    cell_type: str
    edges: tuple[int, ...]
    partial_models: tuple[tuple[int, ...], ...]   # op index per group edge

    def to_json(self) -> dict[str, Any]:
        return {"cell_type": self.cell_type, "edges": list(self.edges),
                "partial_models": [list(p) for p in self.partial_models]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MergedGroup:
        return cls(d["cell_type"], tuple(d["edges"]), tuple(tuple(p) for p in d["partial_models"]))


def merged_child_spaces(mask: Mapping[str, torch.Tensor], threshold: int) -> list[MergedGroup]:
    """Per cell type, the groups of `merge_groups` that are merged child spaces."""
    out = []
    for kind, m in mask.items():
        alive = [torch.nonzero(row).flatten().tolist() for row in m.bool().cpu()]
        for edges in merge_groups([len(a) for a in alive], threshold):
            if len(edges) >= 2 and math.prod(len(alive[e]) for e in edges) > 1:
                out.append(MergedGroup(kind, edges, tuple(itertools.product(*(alive[e] for e in edges)))))
    return out


# --------------------------------------------------------------------------- expand


def partial_key(ops: Sequence[int]) -> str:
    return "_".join(str(o) for o in ops)


class RoutedOp(nn.Module):
    """An op on an edge of a merged group: the shared module and one private copy per partial
    model that uses it, keyed by `partial_key`. `route` names the copy to run (None: shared)."""

    def __init__(self, shared: nn.Module):
        super().__init__()
        self.shared = shared
        self.copies = nn.ModuleDict()
        self.route: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.shared if self.route is None else self.copies[self.route])(x)


def _container(cell: nn.Module, e: int) -> nn.Module:
    edges = cell.edges
    return edges[list(edges.keys())[e]] if isinstance(edges, nn.ModuleDict) else edges[e]


def _op_key(cell: nn.Module, container: nn.Module, o: int) -> int | str:
    # NB201 cells hold an edge's ops in a ModuleList by op index, DARTS cells in a ModuleDict by name
    return o if isinstance(container, nn.ModuleList) else cell.op_names[o]


def _get_op(cell: nn.Module, e: int, o: int) -> nn.Module:
    c = _container(cell, e)
    return c[_op_key(cell, c, o)]


def _set_op(cell: nn.Module, e: int, o: int, module: nn.Module) -> None:
    c = _container(cell, e)
    c[_op_key(cell, c, o)] = module


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _route_partial_models(cell: nn.Module, args: tuple) -> None:
    """Forward pre-hook of an expanded cell: route each merged group by the ops `active` picks."""
    active = args[-1]
    for edges, keys in cell.merged_partials:
        picked = [active[e] for e in edges]
        key = partial_key([ops[0] for ops in picked]) if all(len(ops) == 1 for ops in picked) else None
        for e in edges:
            for op in _container(cell, e).children():
                if isinstance(op, RoutedOp):
                    op.route = key if key in keys and key in op.copies else None


def _mean_state(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {n: (torch.stack([s[n].double() for s in states]).mean(0).to(t.dtype) if t.is_floating_point() else t)
            for n, t in states[0].items()}


def _current_state(cell: nn.Module, e: int, o: int, fixed: Mapping[int, int],
                   alive: torch.Tensor) -> dict[str, torch.Tensor]:
    """The weights op o on edge e runs on for the partial choice `fixed` (edge -> op), as the
    cell is expanded now: its copy if `fixed` determines one, the mean of the copies that agree
    with `fixed` and lie in the current space if several do, the shared module otherwise."""
    op = _get_op(cell, e, o)
    if not isinstance(op, RoutedOp):
        return op.state_dict()
    old_edges = next(edges for edges, _ in cell.merged_partials if e in edges)
    agree = []
    for key, module in op.copies.items():
        q = dict(zip(old_edges, (int(v) for v in key.split("_"))))
        if all(alive[e2, o2] for e2, o2 in q.items()) and all(fixed[e2] == o2 for e2, o2 in q.items() if e2 in fixed):
            agree.append(module.state_dict())
    if not agree:
        return op.shared.state_dict()
    return dict(agree[0]) if len(agree) == 1 else _mean_state(agree)


@torch.no_grad()
def expand(model: nn.Module, groups: Sequence[MergedGroup], mask: Mapping[str, torch.Tensor]) -> None:
    """Make `groups` the merged child spaces of every cell of `model`, in place.

    Every new copy starts from the weights its partial model runs on now, so expanding does not
    change what any architecture of the current space computes; where an earlier grouping does
    not determine those weights (a group was cut), the agreeing old copies are averaged. An edge
    that leaves every merged group gets back shared modules holding the mean of its old copies.
    Call again after each shrink (a fresh model: apply a saved expansion map, then load weights).
    """
    for kind, cell in search_cells(model):
        alive = mask[kind].bool().cpu()
        mine = [g for g in groups if g.cell_type == kind]
        grouped = {e for g in mine for e in g.edges}
        plans = []   # (edge, op, copy key, starting weights)
        for g in mine:
            for p in g.partial_models:
                fixed = dict(zip(g.edges, p))
                for e, o in fixed.items():
                    op = _get_op(cell, e, o)
                    if _has_state(op.shared if isinstance(op, RoutedOp) else op):
                        plans.append((e, o, partial_key(p), _current_state(cell, e, o, fixed, alive)))
        resets = []  # shared modules of edges leaving the merged groups
        for e in range(alive.shape[0]):
            for o in torch.nonzero(alive[e]).flatten().tolist():
                if e not in grouped and isinstance(_get_op(cell, e, o), RoutedOp):
                    resets.append((e, o, _current_state(cell, e, o, {}, alive)))
        for e in range(alive.shape[0]):
            for o in range(alive.shape[1]):
                try:
                    op = _get_op(cell, e, o)
                except KeyError:   # a DARTS edge without this candidate
                    continue
                if isinstance(op, RoutedOp):
                    _set_op(cell, e, o, op.shared)
        for e, o, state in resets:
            _get_op(cell, e, o).load_state_dict(state)
        for e, o, key, state in plans:
            op = _get_op(cell, e, o)
            if not isinstance(op, RoutedOp):
                op = RoutedOp(op)
                _set_op(cell, e, o, op)
            private = copy.deepcopy(op.shared)
            private.load_state_dict(state)
            op.copies[key] = private
        cell.merged_partials = [(g.edges, frozenset(partial_key(p) for p in g.partial_models)) for g in mine]
        if getattr(cell, "route_partials", None) is None:
            cell.register_forward_pre_hook(_route_partial_models)
            cell.route_partials = _route_partial_models


def private_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every private copy (e.g. to count what expansion added)."""
    return [p for m in model.modules() if isinstance(m, RoutedOp) for p in m.copies.parameters()]


def refresh_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    """A new optimizer of the same kind and hyper-parameters over the model's current parameters
    (expansion adds copies and drops old ones); surviving parameters keep their state (momentum),
    new copies start fresh. Build the stage's LR scheduler on the returned optimizer."""
    group = optimizer.param_groups[0]
    settings = {k: group[k] for k in optimizer.defaults if k in group}   # the current lr, not the initial one
    fresh = type(optimizer)(model.parameters(), **settings)
    for p in model.parameters():
        if p in optimizer.state:
            fresh.state[p] = optimizer.state[p]
    return fresh
