"""NAS-Bench-201: ops, the 4-node cell keyed like the benchmark, and the arch string.

The canonical arch string is `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`; every lookup is keyed by
it, never by integer op ids (several incompatible integer orders circulate).
"""
from __future__ import annotations

import itertools
from typing import Iterator, Sequence

import torch
from torch import nn

from ..common.errors import NasflowError
from .ops import Pool, ReLUConvBN, Zero, in_network_format, is_zero_op

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# Edge order = ModuleDict keys 'i<-j' sorted = left-to-right order of the arch string.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
EDGE_KEYS = tuple(f"{i}<-{j}" for i, j in EDGES)
NUM_NODES = 4


def ops_to_str(edge_ops: Sequence[str]) -> str:
    """Per-edge op names in EDGES order -> canonical arch string."""
    if len(edge_ops) != len(EDGES):
        raise NasflowError(f"an NB201 cell has {len(EDGES)} edges, got {len(edge_ops)} ops: {list(edge_ops)}")
    for op in edge_ops:
        if op not in OPS:
            raise NasflowError(f"unknown NB201 op {op!r}; valid ops: {', '.join(OPS)}")
    ops = iter(edge_ops)
    nodes = []
    for i in range(1, NUM_NODES):
        nodes.append("|" + "|".join(f"{next(ops)}~{j}" for j in range(i)) + "|")
    return "+".join(nodes)


def str_to_ops(arch: str) -> tuple[str, ...]:
    """Canonical arch string -> per-edge op names; anything else is an error naming the string."""
    bad = f"malformed NB201 arch string {arch!r}; expected the form |op~0|+|op~0|op~1|+|op~0|op~1|op~2| with ops {', '.join(OPS)}"
    if not isinstance(arch, str):
        raise NasflowError(bad)
    nodes = arch.strip().split("+")
    if len(nodes) != NUM_NODES - 1:
        raise NasflowError(bad)
    ops: list[str] = []
    for i, node in enumerate(nodes, start=1):
        if not (node.startswith("|") and node.endswith("|")):
            raise NasflowError(bad)
        parts = node[1:-1].split("|")
        if len(parts) != i:
            raise NasflowError(bad)
        for j, part in enumerate(parts):
            op, sep, src = part.partition("~")
            if sep != "~" or src != str(j):
                raise NasflowError(bad)
            if op not in OPS:
                raise NasflowError(f"unknown NB201 op {op!r} in arch string {arch!r}; valid ops: {', '.join(OPS)}")
            ops.append(op)
    return tuple(ops)


def all_arch_strings() -> Iterator[str]:
    """All 5^6 = 15,625 cells."""
    for edge_ops in itertools.product(OPS, repeat=len(EDGES)):
        yield ops_to_str(edge_ops)


# --------------------------------------------------------------------------- supernet


def make_op(name: str, channels: int, bn_affine: bool, pool_bn: bool) -> nn.Module:
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1, 0, affine=bn_affine)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1, 1, affine=bn_affine)
    if name == "avg_pool_3x3":
        return Pool("avg", channels, bn=pool_bn, affine=bn_affine)
    raise NasflowError(f"unknown NB201 op {name!r}; valid ops: {', '.join(OPS)}")


class SearchCell(nn.Module):
    """node_i = sum_{j<i} mixed_edge(i<-j)(node_j); output = node 3.

    Only the ops listed in `active[e]` are computed, so masked ops cost nothing; `none` is
    skipped too because it contributes exactly zero.
    """

    def __init__(self, channels: int, op_names: Sequence[str], bn_affine: bool, pool_bn: bool):
        super().__init__()
        self.edges = nn.ModuleDict({key: nn.ModuleList(make_op(o, channels, bn_affine, pool_bn) for o in op_names)
                                    for key in EDGE_KEYS})

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: Sequence[Sequence[int]]) -> torch.Tensor:
        nodes = [x]
        for i in range(1, NUM_NODES):
            total = None
            for j in range(i):
                e = EDGES.index((i, j))
                ops = self.edges[EDGE_KEYS[e]]
                for o in active[e]:
                    if is_zero_op(ops[o]):
                        continue
                    out = weights[e, o] * ops[o](nodes[j])
                    total = out if total is None else total + out
            nodes.append(torch.zeros_like(x) if total is None else total)
        return nodes[-1]


class ResidualBlock(nn.Module):
    """NB201 reduction block: ReLUConvBN 3x3 s2 -> ReLUConvBN 3x3, shortcut AvgPool 2x2 + 1x1 conv."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class Supernet(nn.Module):
    """stem -> N cells @C -> res(2C) -> N cells @2C -> res(4C) -> N cells @4C -> BN-ReLU-GAP-FC.

    One alpha (6 x |ops|) is shared by every cell; `forward` takes the mixing weights and the
    active ops per edge under the key "cell".
    """

    cell_types = ("cell",)

    def __init__(self, num_classes: int, channels: int = 16, cells_per_stage: int = 5,
                 op_names: Sequence[str] = OPS, bn_affine: bool = False, pool_bn: bool = False):
        super().__init__()
        self.op_names = tuple(op_names)
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage > 0:
                layers.append(ResidualBlock(c, 2 * c))
                c *= 2
            layers.extend(SearchCell(c, self.op_names, bn_affine, pool_bn) for _ in range(cells_per_stage))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor],
                active: dict[str, Sequence[Sequence[int]]]) -> torch.Tensor:
        h = self.stem(in_network_format(x, self.stem[0]))
        for layer in self.layers:
            h = layer(h, weights["cell"], active["cell"]) if isinstance(layer, SearchCell) else layer(h)
        return self.classifier(self.head(h))


def derive(weights: dict[str, torch.Tensor], mask: dict[str, torch.Tensor], op_names: Sequence[str],
           allow_none: bool) -> str:
    """Magnitude derive: per edge the alive op with the largest mixing weight -> arch string."""
    w = weights["cell"].detach().float().cpu().clone()
    w[~mask["cell"].cpu()] = float("-inf")
    if not allow_none and "none" in op_names:
        w[:, list(op_names).index("none")] = float("-inf")
    return ops_to_str([op_names[int(i)] for i in w.argmax(dim=1)])
