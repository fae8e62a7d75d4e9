"""Perturbation scores (DARTS-PT, METHODS.md 5.3): the supernet's validation loss and accuracy with
one op, or one whole edge, taken out; nothing is renormalised and every other row stays as it is.

  ACC\\o(e) = Acc_val(supernet with theta[e, o] := 0)       op strength: removing o hurts most
  ACC\\e    = Acc_val(supernet with theta[e, :] := 0)       edge strength (DARTS-space topology:
                                                            every input scored on the same network)

An op with weight 0 contributes nothing, so it is also left out of the forward pass (same output,
less work). Evaluation is under no_grad with train-mode BN over the batches given (the whole
D_val half in DARTS-PT), as the authors' code does.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..common.progress import loop
from ..supernet.state import SupernetState
from ..supernet.train import evaluate

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def without(weights: dict[str, torch.Tensor], active: dict[str, list[list[int]]], kind: str, edge: int,
            op: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, list[list[int]]]]:
    """Weights and active ops with op `op` (or, for None, every op) of `edge` in cell type `kind` removed."""
    weights = {k: w.clone() for k, w in weights.items()}
    active = {k: [list(row) for row in rows] for k, rows in active.items()}
    if op is None:
        weights[kind][edge] = 0.0
        active[kind][edge] = []
    else:
        weights[kind][edge, op] = 0.0
        active[kind][edge] = [o for o in active[kind][edge] if o != op]
    return weights, active


@torch.no_grad()
def op_removal_table(state: SupernetState, batches: Batches, kind: str, edge: int,
                     candidates: Sequence[int]) -> list[dict]:
    """One row per candidate op: the validation loss and accuracy without it."""
    weights, active = state.weights(), state.active()
    rows = []
    for o in loop(candidates, f"op removals on {kind} edge {edge}"):
        loss, acc = evaluate(state, batches, *without(weights, active, kind, edge, o), train_bn=True)
        rows.append({"op": state.space.ops[o], "index": int(o), "loss": loss, "acc": acc})
    return rows


@torch.no_grad()
def edge_removal_table(state: SupernetState, batches: Batches, kind: str, edges: Sequence[int]) -> list[dict]:
    """One row per incoming edge: the validation loss and accuracy with the whole edge removed."""
    weights, active = state.weights(), state.active()
    rows = []
    for e in loop(edges, f"edge removals of a {kind} node"):
        loss, acc = evaluate(state, batches, *without(weights, active, kind, e), train_bn=True)
        rows.append({"edge": int(e), "loss": loss, "acc": acc})
    return rows


def most_important(rows: list[dict], criterion: str) -> int:
    """Row whose removal hurts most: lowest accuracy (`acc`) or highest loss (`loss`); first wins ties."""
    if criterion == "acc":
        return min(range(len(rows)), key=lambda i: (rows[i]["acc"], i))
    return min(range(len(rows)), key=lambda i: (-rows[i]["loss"], i))


def most_important_k(rows: list[dict], criterion: str, k: int) -> list[int]:
    """The k rows whose removal hurts most, the most harmful first: ascending accuracy (`acc`) or
    descending loss (`loss`); the earlier row wins ties, as in `most_important`."""
    if criterion == "acc":
        order = sorted(range(len(rows)), key=lambda i: (rows[i]["acc"], i))
    else:
        order = sorted(range(len(rows)), key=lambda i: (-rows[i]["loss"], i))
    return order[:k]


def least_important(rows: list[dict], criterion: str) -> int:
    """Row whose removal hurts least: highest accuracy or lowest loss; the last wins ties (as the code)."""
    if criterion == "acc":
        return max(range(len(rows)), key=lambda i: (rows[i]["acc"], i))
    return max(range(len(rows)), key=lambda i: (-rows[i]["loss"], i))
