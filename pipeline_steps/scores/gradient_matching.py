"""Gradient-matching distances between the ops of an edge (GM-NAS, used by HEP-NAS; METHODS.md 2.3.1).

For an edge e and each op o alive on it, g_o is the gradient of the training loss with respect to
the shared weights W_s(e) when o is the only op enabled on e (everything else as in the state):

    d(o_i, o_j) = 1 - <g_i, g_j> / (||g_i|| * ||g_j|| + 1e-6)          (1 - cosine similarity)
    Dbar_e      = mean of d over R independent D_tr batches (all ops see the same batch)

W_s(e) follows the authors' `get_split_gradients`: every parameter of the cell-level modules
except the ops of edge e, in every cell of e's type. NB201: the search cells and the residual
reduction blocks (not the stem, not the classifier head). DARTS: the ops of every edge of every
cell (not the preprocess convs, not the stem or classifier); for edge e of the normal cell the
reduction cells contribute all their edges.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import NasflowError
from ..common.progress import loop
from ..data.search_data import SearchData
from ..spaces import darts, nb201
from ..supernet.state import SupernetState

COSINE_EPS = 1e-6          # the authors' `match_loss(dis_metric='cos')` adds it to the norm product


@dataclass(frozen=True)
class EdgeDistances:
    """The averaged distance matrix of one edge; row/column i is the op `ops[i]` (an alpha column)."""
    cell_type: str
    edge: int
    ops: tuple[int, ...]
    distance: torch.Tensor        # (|ops|, |ops|) float64 on CPU, symmetric, zero diagonal


def shared_weights(model: nn.Module, cell_type: str, edge: int) -> list[nn.Parameter]:
    """W_s(e): the weights whose gradients are matched when edge `edge` of `cell_type` is split."""
    if isinstance(model, nb201.Supernet):
        if cell_type != "cell":
            raise NasflowError(f"the NB201 supernet has the cell type 'cell' only, got {cell_type!r}")
        params: list[nn.Parameter] = []
        for layer in model.layers:
            if isinstance(layer, nb201.SearchCell):
                for key in nb201.EDGE_KEYS:
                    if key != nb201.EDGE_KEYS[edge]:
                        params += list(layer.edges[key].parameters())
            else:
                params += list(layer.parameters())          # residual reduction block
        return params
    if isinstance(model, darts.SearchNetwork):
        if cell_type not in darts.CELLS:
            raise NasflowError(f"unknown DARTS cell type {cell_type!r}; valid: {', '.join(darts.CELLS)}")
        params = []
        for cell in model.cells:
            kind = "reduce" if cell.reduction else "normal"
            for e, ops in enumerate(cell.edges):
                if not (kind == cell_type and e == edge):
                    params += list(ops.parameters())
        return params
    raise NasflowError(f"gradient matching does not know the supernet {type(model).__name__}")


def single_op_weights(weights: dict[str, torch.Tensor], active: dict[str, list[list[int]]], cell_type: str,
                      edge: int, op: int, hard: bool) -> tuple[dict[str, torch.Tensor], dict[str, list[list[int]]]]:
    """theta_o: row e zeroed, then theta_o[e, o] = 1 (hard, NB201 code) or theta[e, o] (soft, DARTS
    code); every other edge keeps its mixing weights. Only `op` is computed on the edge."""
    row = weights[cell_type][edge]
    theta_o = weights[cell_type].clone()
    theta_o[edge] = 0.0
    theta_o[edge, op] = 1.0 if hard else row[op]
    edge_ops = [list(ops) for ops in active[cell_type]]
    edge_ops[edge] = [op]
    return {**weights, cell_type: theta_o}, {**active, cell_type: edge_ops}


def cosine_distances(gradients: torch.Tensor) -> torch.Tensor:
    """(n, P) flattened gradients -> (n, n) matrix of 1 - cosine similarity (diagonal left as computed)."""
    g = gradients.double()
    norms = g.norm(dim=1)
    return 1.0 - (g @ g.T) / (norms[:, None] * norms[None, :] + COSINE_EPS)


def op_gradients(state: SupernetState, x: torch.Tensor, y: torch.Tensor, cell_type: str, edge: int,
                 ops: Sequence[int], hard: bool, mixing: str = "softmax") -> torch.Tensor:
    """(|ops|, |W_s(e)|): per op, the flattened CE gradient on the batch with only that op enabled on e.

    A weight the loss does not reach gets a zero gradient: the authors drop such tensors, which
    gives the same cosine as long as every op leaves the same tensors unreached, and keeps the
    vectors aligned when one does not."""
    params = shared_weights(state.model, cell_type, edge)
    with torch.no_grad():
        weights = {k: w.detach() for k, w in state.weights(mixing).items()}
    active = state.active()
    rows = []
    for op in ops:
        theta_o, active_o = single_op_weights(weights, active, cell_type, edge, op, hard)
        loss = F.cross_entropy(state.model(x, theta_o, active_o), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)   # leaves every .grad untouched
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)]))
    return torch.stack(rows)


def gradient_matching_distances(state: SupernetState, data: SearchData, edges: Sequence[tuple[str, int]],
                                generator: torch.Generator, *, hard: bool, repeats: int = 100,
                                mixing: str = "softmax") -> list[EdgeDistances]:
    """Dbar_e for each (cell_type, edge) in `edges`, each from its own `repeats` D_tr batches (as the
    authors' split loop: edges in turn, batches inside). `hard` is the `gm_hard` setting (the code:
    NB201 true, DARTS false). The model runs in train mode (batch statistics), as in the code.
    Nothing of the state changes: gradients go through torch.autograd.grad, BN running statistics
    are restored, the only random draws are the batches taken from `generator`."""
    if repeats < 1:
        raise NasflowError(f"gradient matching needs at least one batch, got repeats={repeats}")
    was_training = state.model.training
    buffers = {name: b.clone() for name, b in state.model.named_buffers()}
    state.model.train()
    results = []
    try:
        for cell_type, edge in loop(edges, "gradient matching, edges"):
            ops = tuple(torch.nonzero(state.mask[cell_type][edge].cpu()).flatten().tolist())
            if len(ops) < 2:
                raise NasflowError(f"edge {edge} of the {cell_type} cell has {len(ops)} alive op(s); "
                                   "gradient matching needs at least two")
            total = torch.zeros(len(ops), len(ops), dtype=torch.float64)
            for _ in range(repeats):
                x, y = data.random_train_batch(generator)
                total += cosine_distances(op_gradients(state, x, y, cell_type, edge, ops, hard, mixing)).cpu()
            mean = total / repeats
            mean = (mean + mean.T) / 2            # exact symmetry (the cosine is symmetric up to rounding)
            mean.fill_diagonal_(0.0)              # d(o, o) = 0; the min-cut reads off-diagonal entries only
            results.append(EdgeDistances(cell_type, edge, ops, mean))
    finally:
        with torch.no_grad():
            for name, b in state.model.named_buffers():
                b.copy_(buffers[name])
        state.model.train(was_training)
    return results
