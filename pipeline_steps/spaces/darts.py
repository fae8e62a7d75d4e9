"""The DARTS cell space: op sets, the CIFAR search supernet and the DARTS genotype parse.

An op set gives, per cell type, the candidate ops of each of the 14 edges. The space's op list
(the alpha columns) is the union of those names in ALL_OPS order; where an edge lacks an op
(RobustDARTS S1), `initial_mask()` marks it unavailable, so the supernet state starts with it
masked and the softmax runs over that edge's own candidates only, as in the reference code.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..common.errors import NasflowError
from .darts_ops import ALL_OPS, FactorizedReduce, ReLUConvBN, make_op
from .genotype import CELLS, DARTS_V2, STEPS, Genotype  # noqa: F401  (DARTS_V2 re-exported)
from .ops import in_network_format, is_zero_op
from .space import Space

NUM_EDGES = sum(2 + i for i in range(STEPS))                      # 14
# edge e feeds node EDGE_NODE[e] (2..5) from input EDGE_INPUT[e]; node 2 <- edges 0-1, 3 <- 2-4, ...
EDGE_NODE = tuple(2 + i for i in range(STEPS) for _ in range(2 + i))
EDGE_INPUT = tuple(j for i in range(STEPS) for j in range(2 + i))

DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
             "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def _same(ops: Sequence[str]) -> dict[str, list[list[str]]]:
    return {cell: [list(ops)] * NUM_EDGES for cell in CELLS}


# RobustDARTS S1 (Zela et al., ICLR 2020, src/spaces.py; identical in darts-pt sota/cnn/spaces.py):
# per edge, the two ops that had the highest alpha in the DARTS search space.
_S1_NORMAL = [
    ["skip_connect", "dil_conv_3x3"], ["skip_connect", "dil_conv_5x5"], ["skip_connect", "dil_conv_5x5"],
    ["skip_connect", "sep_conv_3x3"], ["skip_connect", "dil_conv_3x3"], ["max_pool_3x3", "skip_connect"],
    ["skip_connect", "sep_conv_3x3"], ["skip_connect", "sep_conv_3x3"], ["skip_connect", "dil_conv_3x3"],
    ["skip_connect", "sep_conv_3x3"], ["max_pool_3x3", "skip_connect"], ["skip_connect", "dil_conv_3x3"],
    ["dil_conv_3x3", "dil_conv_5x5"], ["dil_conv_3x3", "dil_conv_5x5"],
]
_S1_REDUCE = [
    ["max_pool_3x3", "avg_pool_3x3"], ["max_pool_3x3", "dil_conv_3x3"], ["max_pool_3x3", "avg_pool_3x3"],
    ["max_pool_3x3", "avg_pool_3x3"], ["skip_connect", "dil_conv_5x5"], ["max_pool_3x3", "avg_pool_3x3"],
    ["max_pool_3x3", "sep_conv_3x3"], ["skip_connect", "dil_conv_3x3"], ["skip_connect", "dil_conv_5x5"],
    ["max_pool_3x3", "avg_pool_3x3"], ["max_pool_3x3", "avg_pool_3x3"], ["skip_connect", "dil_conv_5x5"],
    ["skip_connect", "dil_conv_5x5"], ["skip_connect", "dil_conv_5x5"],
]

OP_SETS: dict[str, dict[str, list[list[str]]]] = {
    "darts": _same(DARTS_OPS),
    "darts_no_none": _same(DARTS_OPS[1:]),     # space `s5` of the DARTS-PT and HEP-NAS code
    "s1": {"normal": _S1_NORMAL, "reduce": _S1_REDUCE},
    "s2": _same(["skip_connect", "sep_conv_3x3"]),
    "s3": _same(["none", "skip_connect", "sep_conv_3x3"]),
    "s4": _same(["noise", "sep_conv_3x3"]),
}


def edge_ops(op_set: str) -> dict[str, list[list[str]]]:
    """Per cell type, the 14 per-edge candidate lists of a named op set."""
    key = op_set.lower() if isinstance(op_set, str) else op_set
    if key not in OP_SETS:
        raise NasflowError(f"unknown DARTS op set {op_set!r}; valid op sets: {', '.join(OP_SETS)}")
    return OP_SETS[key]


def space_ops(op_set: str) -> tuple[str, ...]:
    """The alpha columns: every op the set uses anywhere, in ALL_OPS order."""
    used = {op for lists in edge_ops(op_set).values() for ops in lists for op in ops}
    return tuple(op for op in ALL_OPS if op in used)


def availability(per_edge: dict[str, list[list[str]]], op_names: Sequence[str]) -> dict[str, torch.Tensor]:
    return {cell: torch.tensor([[op in ops for op in op_names] for ops in per_edge[cell]], dtype=torch.bool)
            for cell in CELLS}


def initial_mask(op_set: str) -> dict[str, torch.Tensor]:
    """The op-availability mask a search starts from: (14 x |ops|) bool per cell type."""
    return availability(edge_ops(op_set), space_ops(op_set))


# --------------------------------------------------------------------------- supernet


class SearchCell(nn.Module):
    """Two preprocessed inputs, 4 nodes each summing its mixed incoming edges, output = concat.

    Each edge holds modules for its own candidates only (keyed by op name); `active[e]` lists the
    alpha columns to compute. `none` is skipped (it contributes zero) and masked ops cost nothing.
    """

    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool,
                 op_names: Sequence[str], per_edge: Sequence[Sequence[str]]):
        super().__init__()
        self.reduction = reduction
        self.op_names = tuple(op_names)
        self.preprocess0 = (FactorizedReduce(c_pp, c, affine=False) if reduction_prev
                            else ReLUConvBN(c_pp, c, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for e, ops in enumerate(per_edge):
            stride = 2 if reduction and EDGE_INPUT[e] < 2 else 1
            self.edges.append(nn.ModuleDict({op: make_op(op, c, stride, affine=False, pool_bn=True) for op in ops}))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                active: Sequence[Sequence[int]]) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        stride = 2 if self.reduction else 1
        e = 0
        for node in range(2, 2 + STEPS):
            total = None
            for j in range(node):
                ops = self.edges[e]
                for o in active[e]:
                    name = self.op_names[o]
                    if name not in ops:
                        raise ValueError(f"op {name!r} is active on edge {e} but is no candidate there; "
                                         "start the mask from initial_mask()")
                    if is_zero_op(ops[name]):
                        continue
                    out = weights[e, o] * ops[name](states[j])
                    total = out if total is None else total + out
                e += 1
            states.append(torch.zeros_like(states[1][:, :, ::stride, ::stride]) if total is None else total)
        return torch.cat(states[2:], dim=1)


class SearchNetwork(nn.Module):
    """The DARTS CIFAR supernet: stem conv3x3(3 -> m*C) + BN, `layers` cells (reduction at
    layers//3 and 2*layers//3, doubling C), global average pool, linear classifier."""

    cell_types = CELLS

    def __init__(self, num_classes: int, op_set: str = "darts", channels: int = 16, layers: int = 8,
                 stem_multiplier: int = 3):
        super().__init__()
        per_edge = edge_ops(op_set)
        self.op_set = op_set
        self.op_names = space_ops(op_set)
        self._availability = availability(per_edge, self.op_names)
        c_curr = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(3, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            kind = "reduce" if reduction else "normal"
            self.cells.append(SearchCell(c_pp, c_p, c_curr, reduction, reduction_prev, self.op_names, per_edge[kind]))
            reduction_prev = reduction
            c_pp, c_p = c_p, STEPS * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def initial_mask(self) -> dict[str, torch.Tensor]:
        return {k: m.clone() for k, m in self._availability.items()}

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor],
                active: dict[str, Sequence[Sequence[int]]]) -> torch.Tensor:
        s0 = s1 = self.stem(in_network_format(x, self.stem[0]))
        for cell in self.cells:
            kind = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, weights[kind], active[kind])
        return self.classifier(self.global_pooling(s1).flatten(1))


# --------------------------------------------------------------------------- derive


def derive(weights: dict[str, torch.Tensor], mask: dict[str, torch.Tensor], op_names: Sequence[str],
           allow_none: bool = False) -> Genotype:
    """The DARTS parse (METHODS.md 1.3): per intermediate node, rank the incoming edges by their
    largest non-`none` alive weight, keep the top two, and on each take the argmax non-`none`
    alive op. Masked ops are never picked. `allow_none` is ignored: the DARTS rule never picks
    `none` (the argument exists to share Space.derive's signature with NB201)."""
    del allow_none
    cells = {}
    for kind in CELLS:
        w = weights[kind].detach().float().cpu().clone()
        w[~mask[kind].cpu().bool()] = float("-inf")
        if "none" in op_names:
            w[:, list(op_names).index("none")] = float("-inf")
        pairs: list[tuple[str, int]] = []
        start = 0
        for node in range(2, 2 + STEPS):
            rows = w[start:start + node]
            strength = rows.max(dim=1).values.tolist()
            ranked = sorted(range(node), key=lambda j: -strength[j])[:2]   # stable: ties keep the lower input
            if any(strength[j] == float("-inf") for j in ranked):
                raise NasflowError(f"cannot derive the {kind} cell: node {node} has fewer than two incoming edges "
                                   "with an alive op other than none")
            pairs += [(op_names[int(rows[j].argmax())], j) for j in ranked]
            start += node
        cells[kind] = pairs
    concat = tuple(range(2, 2 + STEPS))
    return Genotype(cells["normal"], concat, cells["reduce"], concat)


# --------------------------------------------------------------------------- space


def make_space(settings: dict) -> Space:
    """settings: op_set (name, default "darts"), channels (16), layers (8), stem_multiplier (3)."""
    op_set = settings.get("op_set", "darts")
    ops = space_ops(op_set)
    channels, layers = settings.get("channels", 16), settings.get("layers", 8)
    stem = settings.get("stem_multiplier", 3)
    for key, value in (("channels", channels), ("layers", layers), ("stem_multiplier", stem)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise NasflowError(f"darts space setting {key} must be a positive integer, got {value!r}")
    if channels % 2:
        raise NasflowError(f"darts space channels must be even (reduction cells halve them per branch), got {channels}")

    def build(num_classes: int) -> nn.Module:
        return SearchNetwork(num_classes, op_set, channels=channels, layers=layers, stem_multiplier=stem)

    def derive_arch(weights, mask, allow_none: bool) -> Genotype:
        return derive(weights, mask, ops, allow_none)

    return Space("darts", ops, CELLS, NUM_EDGES, build, derive_arch, available=lambda: initial_mask(op_set))
