"""SE-NAS operator scores (Hu et al., Pattern Recognition 2021, Eq. 5-7; METHODS.md 3.3).

For an operator o = (cell type, edge e, op) of the current space:

  SI_o = mean_{a in A_o} P(a)                  selection importance; A_o = child models containing o
  SC_o = Var_{o' alive on e} SI_o'             selection confidence; population variance, one value per edge
  S_o  = normalize(SI_o) / normalize(SC_o)     normalize(x)_o = x_o / mean_{o' in R} x_o'

R is the set of removable operators: alive ops on edges that still have at least two. Only R is
scored. Low importance on an edge of high confidence gives a low score: such ops go first.
A_o is every architecture of the P(a) table that contains o (exhaustive on NB201), or, with
per-operator samples (the DARTS space: 1000 per operator), the architectures drawn for o.

Tensors are (edges x ops) per cell type, float64, NaN where a quantity is undefined.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .child_eval import ArchKey, alive_ops, current_space, space_size, split_key

Operator = tuple[str, int, int]  # (cell type, edge, op index)
ENUMERATE_UP_TO = 200_000         # spaces this small are listed to draw distinct children from


def removable(mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """R: alive ops on edges with at least two alive ops."""
    return {k: m.bool().cpu() & (m.bool().cpu().sum(1, keepdim=True) >= 2) for k, m in mask.items()}


def _nan_like(mask: torch.Tensor) -> torch.Tensor:
    return torch.full(mask.shape, float("nan"), dtype=torch.float64)


def selection_importance(p: Mapping[ArchKey, float], mask: Mapping[str, torch.Tensor], cell_types: Sequence[str],
                         samples: Mapping[Operator, Sequence[ArchKey]] | None = None) -> dict[str, torch.Tensor]:
    """SI (Eq. 5). Without `samples`: the mean of P over every table entry containing the op.
    With `samples`: the mean of P over the architectures drawn for that op (repeats count)."""
    si = {k: _nan_like(mask[k]) for k in cell_types}
    if samples is not None:
        for (kind, e, o), archs in samples.items():
            t = list(cell_types).index(kind)
            if not archs or any(a[t][e] != o for a in archs):
                raise ValueError(f"the samples for operator {(kind, e, o)} must be non-empty and contain it")
            si[kind][e, o] = sum(p[a] for a in archs) / len(archs)
        return si
    keys = list(p)
    if not keys:
        raise ValueError("empty P(a) table")
    acc = torch.tensor([p[a] for a in keys], dtype=torch.float64)
    for t, kind in enumerate(cell_types):
        ops = torch.tensor([a[t] for a in keys], dtype=torch.long)            # (archs, edges)
        alive = mask[kind].bool().cpu()
        if not alive.gather(1, ops.T).all():
            raise ValueError(f"the P(a) table holds {kind} architectures with ops outside the current space")
        sums = torch.zeros(alive.shape, dtype=torch.float64)
        counts = torch.zeros(alive.shape, dtype=torch.float64)
        for e in range(alive.shape[0]):
            sums[e].index_add_(0, ops[:, e], acc)
            counts[e].index_add_(0, ops[:, e], torch.ones_like(acc))
        si[kind] = torch.where(counts > 0, sums / counts.clamp(min=1), si[kind])
    return si


def selection_confidence(si: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SC (Eq. 6): per edge, the population variance of SI over its alive ops, on every alive op."""
    sc = {}
    for kind, values in si.items():
        alive = mask[kind].bool().cpu()
        out = _nan_like(alive)
        for e in range(alive.shape[0]):
            v = values[e][alive[e]]
            out[e][alive[e]] = ((v - v.mean()) ** 2).mean()
        sc[kind] = out
    return sc


def score(si: Mapping[str, torch.Tensor], sc: Mapping[str, torch.Tensor],
          mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """S (Eq. 7) on R, with mean normalisation over R. SC_o = 0 (no spread on the edge, so no
    confidence to prune by) gives S_o = +inf."""
    r = removable(mask)
    if not any(m.any() for m in r.values()):
        return {k: _nan_like(m) for k, m in r.items()}
    mean_si = torch.cat([si[k][m] for k, m in r.items()]).mean()
    mean_sc = torch.cat([sc[k][m] for k, m in r.items()]).mean()
    s = {}
    for kind, m in r.items():
        n_si = si[kind] / mean_si if mean_si > 0 else torch.zeros_like(si[kind])
        n_sc = sc[kind] / mean_sc if mean_sc > 0 else torch.zeros_like(sc[kind])
        ratio = torch.full_like(n_si, float("inf"))
        confident = m & (n_sc > 0)
        ratio[confident] = n_si[confident] / n_sc[confident]
        s[kind] = torch.where(m, ratio, _nan_like(m))
    return s


@dataclass
class OperatorScores:
    si: dict[str, torch.Tensor]
    sc: dict[str, torch.Tensor]
    s: dict[str, torch.Tensor]
    removable: dict[str, torch.Tensor]

    def ranked(self) -> list[Operator]:
        """R by S ascending (the first would be dropped first); ties keep (cell type, edge, op) order."""
        ops = [(k, e, o) for k, m in self.removable.items() for e, o in torch.nonzero(m).tolist()]
        order = list(self.removable)
        return sorted(ops, key=lambda op: (float(self.s[op[0]][op[1], op[2]]), order.index(op[0]), op[1], op[2]))

    def to_json(self, op_names: Sequence[str]) -> dict[str, Any]:
        """Per cell type, edge and op name: SI, SC and S (None where undefined); and the ranking."""
        def table(t: torch.Tensor) -> list[dict[str, float | None]]:
            return [{op_names[o]: None if math.isnan(v) else v for o, v in enumerate(row)} for row in t.tolist()]

        return {"si": {k: table(v) for k, v in self.si.items()}, "sc": {k: table(v) for k, v in self.sc.items()},
                "s": {k: table(v) for k, v in self.s.items()},
                "ranked": [[k, e, op_names[o]] for k, e, o in self.ranked()]}


def operator_scores(p: Mapping[ArchKey, float], mask: Mapping[str, torch.Tensor], cell_types: Sequence[str],
                    samples: Mapping[Operator, Sequence[ArchKey]] | None = None) -> OperatorScores:
    si = selection_importance(p, mask, cell_types, samples)
    sc = selection_confidence(si, mask)
    return OperatorScores(si, sc, score(si, sc, mask), removable(mask))


def sample_archs_per_operator(mask: Mapping[str, torch.Tensor], cell_types: Sequence[str], per_operator: int,
                              generator: torch.Generator) -> dict[Operator, list[ArchKey]]:
    """For every operator o in R, `per_operator` architectures drawn uniformly from those of the
    current space that contain o (every other edge uniform over its alive ops)."""
    alive = alive_ops(mask, cell_types)
    r = removable(mask)
    samples: dict[Operator, list[ArchKey]] = {}
    for t, kind in enumerate(cell_types):
        for e, o in torch.nonzero(r[kind]).tolist():
            columns = []
            for t2, cell in enumerate(alive):
                for e2, ops in enumerate(cell):
                    if (t2, e2) == (t, e):
                        columns.append(torch.full((per_operator,), o, dtype=torch.long))
                    else:
                        columns.append(torch.tensor(ops)[torch.randint(len(ops), (per_operator,), generator=generator)])
            rows = torch.stack(columns, 1).tolist()
            sizes = [len(cell) for cell in alive]
            samples[(kind, e, o)] = [split_key(row, sizes) for row in rows]
    return samples


def candidate_archs(mask: dict[str, torch.Tensor], cell_types, limit, generator: torch.Generator) -> list[ArchKey]:
    """Every child of the current space (`limit` exhaustive or >= its size), else `limit`
    distinct children drawn uniformly."""
    size = space_size(mask, cell_types)
    if limit == "exhaustive" or size <= limit:
        return list(current_space(mask, cell_types))
    if size <= ENUMERATE_UP_TO:
        every = list(current_space(mask, cell_types))
        return [every[i] for i in sorted(torch.randperm(size, generator=generator)[:limit].tolist())]
    per_cell = alive_ops(mask, cell_types)
    edges, sizes = [ops for cell in per_cell for ops in cell], [len(cell) for cell in per_cell]
    drawn: dict[ArchKey, None] = {}
    while len(drawn) < limit:    # uniform over the product space = each edge uniform over its ops
        flat = [ops[int(torch.randint(len(ops), (1,), generator=generator))] for ops in edges]
        drawn.setdefault(split_key(flat, sizes), None)
    return list(drawn)
