"""Many NB201 child models in one forward pass.

Evaluating P(a) for thousands of children one at a time is kernel-launch bound on a GPU: a child
is a few hundred small kernels on 512 images. Children only differ in which op each edge runs, so
K children can share one pass over K x B images (child k owns rows k*B .. (k+1)*B-1): per edge,
each op runs once on the rows of the children that picked it, and every batch norm that uses
batch statistics normalises each child's rows by their own statistics. Each child then computes
what it computes alone, in the same order of additions; only the reductions inside kernels may
round differently.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .nb201 import EDGE_KEYS, EDGES, NUM_NODES, SearchCell, Supernet
from .ops import in_network_format, is_zero_op

# per edge: (op index, row indices of the children that picked it, or None for every row)
EdgePlan = list[list[tuple[int, torch.Tensor | None]]]


def edge_plan(cells: Sequence[Sequence[int]], images_per_child: int, device: torch.device) -> EdgePlan:
    """For children `cells` (each the op index on every edge), which rows each op runs on."""
    plan = []
    for e in range(len(EDGES)):
        picks = [cell[e] for cell in cells]
        row_ops = []
        for o in dict.fromkeys(picks):
            children = [k for k, p in enumerate(picks) if p == o]
            rows = None if len(children) == len(cells) else (
                torch.tensor(children, device=device).repeat_interleave(images_per_child) * images_per_child
                + torch.arange(images_per_child, device=device).repeat(len(children)))
            row_ops.append((o, rows))
        plan.append(row_ops)
    return plan


def cell_forward(cell: SearchCell, x: torch.Tensor, plan: EdgePlan) -> torch.Tensor:
    """`SearchCell.forward` of every child at once; `x` holds each child's rows."""
    nodes = [x]
    for i in range(1, NUM_NODES):
        total = torch.zeros_like(x)  # 0 + a == a: each child sums its edges in the single-child order
        for j in range(i):
            e = EDGES.index((i, j))
            ops = cell.edges[EDGE_KEYS[e]]
            for o, rows in plan[e]:
                if is_zero_op(ops[o]):
                    continue
                if rows is None:
                    total += ops[o](nodes[j])
                else:
                    total.index_add_(0, rows, ops[o](nodes[j].index_select(0, rows)))
        nodes.append(total)
    return nodes[-1]


@torch.inference_mode()
def forward_children(model: Supernet, x: torch.Tensor, cells: Sequence[Sequence[int]]) -> torch.Tensor:
    """Logits of every child in `cells` on the images `x`: shape (len(cells) * len(x), classes),
    child k's in rows k*len(x) .. (k+1)*len(x)-1. Children of one call must agree on the edges of
    any merged group of an expanded supernet (`child_eval.evaluate_children` groups them so)."""
    b = x.shape[0]
    plan = edge_plan(cells, b, x.device)
    with grouped_batch_norm(model, b):
        h = model.stem(in_network_format(x, model.stem[0]))  # the stem is the same for every child
        h = torch.cat([h] * len(cells))
        for layer in model.layers:
            if isinstance(layer, SearchCell):
                # an expanded cell routes through private copies by the first child's ops: the
                # children of one call must route alike
                route = getattr(layer, "route_partials", None)
                if route is not None:
                    route(layer, (h, None, [[o] for o in cells[0]]))
                h = cell_forward(layer, h, plan)
            else:
                h = layer(h)
        return model.classifier(model.head(h))


def _grouped_norm(norm: nn.modules.batchnorm._BatchNorm, group: int, x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == group:  # one child: exactly the single-child computation
        return type(norm).forward(norm, x)
    x5 = x.reshape(x.shape[0] // group, group, *x.shape[1:])
    var, mean = torch.var_mean(x5, dim=(1, 3, 4), keepdim=True, correction=0)
    y = (x5 - mean) * torch.rsqrt(var + norm.eps)
    if norm.affine:
        y = y * norm.weight.view(1, 1, -1, 1, 1) + norm.bias.view(1, 1, -1, 1, 1)
    return y.reshape(x.shape)


@contextmanager
def grouped_batch_norm(model: nn.Module, group: int) -> Iterator[None]:
    """Within the block, every batch norm of `model` that normalises by batch statistics does so
    per group of `group` consecutive rows (running statistics are neither read nor written);
    batch norms that use running statistics are left alone."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and (m.training or not m.track_running_stats)]
    for m in norms:
        m.forward = lambda x, m=m: _grouped_norm(m, group, x)
    try:
        yield
    finally:
        for m in norms:
            del m.forward
