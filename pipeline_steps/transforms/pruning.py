"""Mask transformations: soft decay of alpha, hard pruning, and "ops kept" prune schedules.

Shared by the pruning methods (HPE-DARTS, METHODS.md 4.3 and 4.6; usable by any method that ranks
ops per edge by an importance matrix). Importance comes per cell type, shaped like alpha (edges x
ops); a larger value means a more important op; entries of dead ops are ignored (NaN by the
scores' convention). Within an edge, ties rank by column order: the lower column counts as less
important, so every decision is deterministic.

Schedules are written as the number of ops kept per edge before the first stage and after each
stage, e.g. [5, 3, 1] on NAS-Bench-201 and [8, 5, 3, 1] in the DARTS space (paper Table 3), so
Pop_st = kept[st - 1] - kept[st] and sum_st Pop_st = |O| - 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..common.errors import NasflowError

DENOMINATORS = ("E_prune", "E_prune_minus_one")
Importance = Mapping[str, torch.Tensor]
Mask = Mapping[str, torch.Tensor]


# --------------------------------------------------------------------------- ranking


def _jsonable(t: torch.Tensor) -> list:
    """Nested lists for a JSON log, NaN (an unscored, dead op) as null."""
    return [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in t.tolist()]


def least_important(importance: torch.Tensor, alive: torch.Tensor, k: int) -> list[int]:
    """The k alive ops of one edge with the smallest importance (ties: lower column first), in rank order."""
    score = {int(o): float(importance[o]) for o in torch.nonzero(alive).flatten()}
    for o, value in score.items():
        if math.isnan(value):
            raise NasflowError(f"importance of alive op column {o} is NaN; score every alive op before ranking")
    return sorted(score, key=lambda o: (score[o], o))[:max(k, 0)]


def _check_shapes(importance: Importance, mask: Mask) -> None:
    if set(importance) != set(mask):
        raise ValueError(f"importance covers cell types {sorted(importance)}, the mask {sorted(mask)}")
    for kind, m in mask.items():
        if tuple(importance[kind].shape) != tuple(m.shape):
            raise ValueError(f"{kind}: importance shape {tuple(importance[kind].shape)} != mask shape {tuple(m.shape)}")


# --------------------------------------------------------------------------- soft decay


def decay_factor(epoch_in_stage: int, epochs_per_stage: int, denominator: str = "E_prune") -> float:
    """Paper Eq. 7: alpha_{o,i} = alpha_{o,i-1} * (1 - i / E_prune), 0 <= i < E_prune.

    i counts the epochs of the current stage from 0 (so the first epoch's factor is 1 and a
    5-epoch stage uses 1, 0.8, 0.6, 0.4, 0.2). `E_prune_minus_one` is the SP-DARTS variant
    1 - i / (E_prune - 1), whose last factor is 0 (`hpe.decay_denominator`).
    """
    if denominator not in DENOMINATORS:
        raise NasflowError(f"unknown hpe.decay_denominator {denominator!r}; valid: {', '.join(DENOMINATORS)}")
    if not 0 <= epoch_in_stage < epochs_per_stage:
        raise NasflowError(f"soft-pruning epoch index {epoch_in_stage} is outside 0..{epochs_per_stage - 1} "
                           f"(E_prune = {epochs_per_stage})")
    span = epochs_per_stage if denominator == "E_prune" else epochs_per_stage - 1
    if span == 0:
        raise NasflowError("hpe.decay_denominator E_prune_minus_one needs E_prune >= 2")
    return 1.0 - epoch_in_stage / span


@dataclass(frozen=True)
class SoftDecayRecord:
    """One soft-pruning decision, for the log: which ops were decayed, by what, alpha around it."""
    epoch_in_stage: int
    factor: float
    decayed: dict[str, list[list[int]]]        # per cell type and edge, the decayed op columns
    alpha_before: dict[str, torch.Tensor]
    alpha_after: dict[str, torch.Tensor]

    def to_dict(self) -> dict:
        return {"epoch_in_stage": self.epoch_in_stage, "factor": self.factor, "decayed": self.decayed,
                "alpha_before": {k: v.tolist() for k, v in self.alpha_before.items()},
                "alpha_after": {k: v.tolist() for k, v in self.alpha_after.items()}}


def soft_decay(alpha: Mapping[str, torch.Tensor], importance: Importance, mask: Mask, k_soft: int | str,
               epoch_in_stage: int, epochs_per_stage: int, denominator: str = "E_prune") -> SoftDecayRecord:
    """Multiply, in place, the entries of the `k_soft` least important alive ops per edge by
    decay_factor(i) (paper Eq. 7, METHODS.md 4.3).

    alpha: the tensors to decay, per cell type. Under `hpe.mixing = raw_alpha` these are the alpha
    parameters themselves (modified in place under no_grad, so optimiser state stays attached);
    under `softmax` pass the multiplicative factors applied to theta.
    k_soft: an int (`hpe.k_soft = pop_of_stage`: the stage's Pop_st) or "alive_minus_one". On
    every edge at most alive - 1 ops are decayed, so the most important op never is.
    """
    _check_shapes(importance, mask)
    factor = decay_factor(epoch_in_stage, epochs_per_stage, denominator)
    if not (k_soft == "alive_minus_one" or (isinstance(k_soft, int) and not isinstance(k_soft, bool) and k_soft >= 0)):
        raise NasflowError(f"hpe.k_soft must be a non-negative integer or alive_minus_one, got {k_soft!r}")
    before = {k: a.detach().cpu().clone() for k, a in alpha.items()}
    decayed: dict[str, list[list[int]]] = {}
    with torch.no_grad():
        for kind, m in mask.items():
            decayed[kind] = []
            for e, alive in enumerate(m.cpu().bool()):
                n_alive = int(alive.sum())
                k = n_alive - 1 if k_soft == "alive_minus_one" else min(int(k_soft), n_alive - 1)
                low = least_important(importance[kind][e].cpu(), alive, k)
                if low:
                    alpha[kind][e, low] *= factor
                decayed[kind].append(low)
    after = {k: a.detach().cpu().clone() for k, a in alpha.items()}
    return SoftDecayRecord(epoch_in_stage, factor, decayed, before, after)


# --------------------------------------------------------------------------- hard prune


@dataclass(frozen=True)
class HardPruneRecord:
    """One hard-pruning decision: the ops removed per edge, the importance behind it, the new mask."""
    pop: int
    removed: dict[str, list[list[int]]]        # per cell type and edge, the removed op columns
    importance: dict[str, torch.Tensor]
    mask_after: dict[str, torch.Tensor]

    def to_dict(self) -> dict:
        return {"pop": self.pop, "removed": self.removed,
                "importance": {k: _jsonable(v) for k, v in self.importance.items()},
                "mask_after": {k: v.int().tolist() for k, v in self.mask_after.items()}}


def hard_prune(mask: Mask, importance: Importance, pop: int) -> HardPruneRecord:
    """Remove for good (mask False, in place) the `pop` least important alive ops of every edge.

    At most alive - 1 ops go from an edge: the last op of an edge is never removed.
    """
    _check_shapes(importance, mask)
    if isinstance(pop, bool) or not isinstance(pop, int) or pop < 0:
        raise NasflowError(f"the number of ops to prune per edge must be a non-negative integer, got {pop!r}")
    removed: dict[str, list[list[int]]] = {}
    for kind, m in mask.items():
        removed[kind] = []
        for e in range(m.shape[0]):
            alive = m[e].cpu().bool()
            low = least_important(importance[kind][e].cpu(), alive, min(pop, int(alive.sum()) - 1))
            m[e, low] = False
            removed[kind].append(low)
    return HardPruneRecord(pop, removed, {k: v.detach().cpu().clone() for k, v in importance.items()},
                           {k: m.cpu().clone() for k, m in mask.items()})


# --------------------------------------------------------------------------- schedules


def validate_schedule(kept: Sequence[int], mask: Mask | None = None) -> tuple[int, ...]:
    """Check an "ops kept" schedule; with `mask`, also against the alive ops of every edge.

    Valid: at least two integers >= 1, strictly decreasing, ending at 1, and (with a mask) starting
    at exactly the number of alive ops on every edge, so that pruning Pop_st per stage leaves one op
    on each edge. Each violation is a one-line NasflowError.
    """
    shown = list(kept) if isinstance(kept, (list, tuple)) else kept
    if not isinstance(kept, (list, tuple)) or any(isinstance(n, bool) or not isinstance(n, int) for n in kept):
        raise NasflowError(f"prune schedule {shown!r} must be a list of integers (ops kept per edge), e.g. [5, 3, 1]")
    if len(kept) < 2:
        raise NasflowError(f"prune schedule {shown} needs the starting op count and at least one stage, e.g. [5, 3, 1]")
    if kept[-1] != 1:
        raise NasflowError(f"prune schedule {shown} must end at 1 op per edge, ends at {kept[-1]}")
    for before, after in zip(kept, kept[1:]):
        if after >= before:
            raise NasflowError(f"prune schedule {shown} must be strictly decreasing ({before} then {after})")
    if mask is not None:
        for kind, m in mask.items():
            counts = m.bool().sum(dim=1).tolist()
            for e, n_alive in enumerate(counts):
                if kept[0] > n_alive:
                    raise NasflowError(f"prune schedule {shown} keeps {kept[0]} ops but {kind} edge {e} has only "
                                       f"{n_alive}; start the schedule at {n_alive}")
                if kept[0] < n_alive:
                    raise NasflowError(f"prune schedule {shown} starts at {kept[0]} ops but {kind} edge {e} has "
                                       f"{n_alive}; start the schedule at {n_alive}")
    return tuple(kept)


def pops_per_stage(kept: Sequence[int], mask: Mask | None = None) -> tuple[int, ...]:
    """Pop_st for st = 1..S: the ops each stage's hard prune removes per edge ([5, 3, 1] -> (2, 2))."""
    kept = validate_schedule(kept, mask)
    return tuple(before - after for before, after in zip(kept, kept[1:]))
