"""P(a): the validation accuracy of child architecture a with the weights of the model passed in
(SE-NAS: the snapshot-averaged weights of Eq. 4; the SPOS baseline: the live supernet weights),
and how well such accuracies rank architectures against the benchmark (Kendall tau, Spearman rho).

Evaluating up to 15,625 NB201 children is the cost of an SE-NAS stage, so `evaluate_children`
does nothing per child but the forward passes: the scoring images are drawn once and stay on the
device, every child sees the same images, the mixing weights are one all-ones tensor (only the
ops listed in `active` are computed, so ones make each child's path exactly), BN is switched
once, and correct counts stay on the device until one transfer at the end. Under batch
statistics, NB201 children that differ only on edges that cannot reach the cell output compute
the same logits and are evaluated once (9,445 forwards for the 15,625 cells). On a GPU, NB201
children share forward passes, 16 at a time (`spaces/nb201_children.py`).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..common.progress import loop
from ..evaluation.benchmark import RANK_METRIC
from ..spaces import nb201, search_cells
from ..spaces.nb201 import EDGES, NUM_NODES, ops_to_str, str_to_ops
from ..spaces.nb201_children import forward_children

ArchKey = tuple[tuple[int, ...], ...]  # per cell type (in the space's cell_types order), the op index on each edge
BN_MODES = ("batch_stats", "eval")     # se.eval_bn


# --------------------------------------------------------------------------- the current space


def alive_ops(mask: Mapping[str, torch.Tensor], cell_types: Sequence[str]) -> list[list[list[int]]]:
    """Per cell type and edge, the alive op indices."""
    return [[torch.nonzero(row).flatten().tolist() for row in mask[k].cpu()] for k in cell_types]


def space_size(mask: Mapping[str, torch.Tensor], cell_types: Sequence[str]) -> int:
    return math.prod(len(ops) for cell in alive_ops(mask, cell_types) for ops in cell)


def current_space(mask: Mapping[str, torch.Tensor], cell_types: Sequence[str]) -> Iterator[ArchKey]:
    """Every architecture of the current space, the last edge varying fastest."""
    per_cell = alive_ops(mask, cell_types)
    sizes = [len(cell) for cell in per_cell]
    for choice in itertools.product(*(ops for cell in per_cell for ops in cell)):
        yield split_key(choice, sizes)


def split_key(flat: Sequence[int], sizes: Sequence[int]) -> ArchKey:
    """Ops over all edges of all cell types, in order -> ArchKey (`sizes`: edges per cell type)."""
    key, start = [], 0
    for n in sizes:
        key.append(tuple(flat[start:start + n]))
        start += n
    return tuple(key)


def nb201_key(arch: str, op_names: Sequence[str]) -> ArchKey:
    """Arch string -> key, in the supernet's op order (which may differ from the benchmark's)."""
    return (tuple(list(op_names).index(op) for op in str_to_ops(arch)),)


def nb201_arch(key: ArchKey, op_names: Sequence[str]) -> str:
    return ops_to_str([op_names[o] for o in key[0]])


# --------------------------------------------------------------------------- P(a)


def scoring_batches(data, generator: torch.Generator, images: int = 512,
                    batch_size: int = 512) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A random subset of D_val, unaugmented, drawn once so that every child is measured on the
    same images (METHODS.md 3.3: one random D_val batch of 512)."""
    pick = data.val_idx[torch.randperm(len(data.val_idx), generator=generator)[:images]]
    return [data.images.batch(pick[i:i + batch_size]) for i in range(0, len(pick), batch_size)]


@contextmanager
def bn_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """`batch_stats`: BN normalises with each batch's own statistics and leaves its running
    statistics untouched; `eval`: BN uses the (averaged) running statistics."""
    if mode not in BN_MODES:
        raise ValueError(f"unknown BN mode {mode!r}; valid: {', '.join(BN_MODES)}")
    was_training = {m: m.training for m in model.modules()}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracking = [m.track_running_stats for m in norms]
    model.eval()
    if mode == "batch_stats":
        for m in norms:
            # training + no tracking: batch statistics, and the running buffers are neither read nor written
            m.train()
            m.track_running_stats = False
    try:
        yield
    finally:
        for m, t in zip(norms, tracking):
            m.track_running_stats = t
        for m, t in was_training.items():
            m.training = t


def _void_edges_to_none(ops: Sequence[int], none: int) -> tuple[int, ...]:
    """An NB201 cell with `none` on every edge that cannot reach its output: edges out of a node
    that is exactly zero, and edges into a node whose every way to the output passes `none`."""
    ops = list(ops)
    while True:
        zero = {0: False}
        for i in range(1, NUM_NODES):
            zero[i] = all(ops[e] == none or zero[j] for e, (n, j) in enumerate(EDGES) if n == i)
        dead = {NUM_NODES - 1: False}
        for j in range(NUM_NODES - 2, -1, -1):
            dead[j] = all(ops[e] == none or dead[i] for e, (i, n) in enumerate(EDGES) if n == j)
        void = [e for e, (i, j) in enumerate(EDGES) if ops[e] != none and (zero[j] or dead[i])]
        if not void:
            return tuple(ops)
        for e in void:
            ops[e] = none


def _zero_preserving_nb201(model: nn.Module) -> bool:
    """True if every NB201 cell op maps an all-zero input to exactly zero under batch statistics
    (BN without affine shift); then cells that differ only on void edges compute the same."""
    cells = [cell for _, cell in search_cells(model)]
    return bool(cells) and all(isinstance(c, nb201.SearchCell) for c in cells) and not any(
        m.affine for c in cells for m in c.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def _merged_routes(model: nn.Module) -> list[tuple[int, ...]]:
    """The edges of each merged group of an expanded NB201 supernet (none before expansion)."""
    return [edges for edges, _ in getattr(search_cells(model)[0][1], "merged_partials", [])]


def _route(key: ArchKey, routes: list[tuple[int, ...]]) -> tuple:
    """Which private copies child `key` runs through: its ops on each merged group's edges."""
    return tuple(tuple(key[0][e] for e in edges) for edges in routes)


def _equivalence(model: nn.Module, archs: list[ArchKey], none: int | None, bn: str) -> dict[ArchKey, ArchKey]:
    """Each child's representative: children of the same representative compute the same logits.
    Merged groups route by the ops on their edges, void or not, so those stay part of the key."""
    if none is None or bn != "batch_stats" or not _zero_preserving_nb201(model):
        return {a: a for a in archs}
    routes = _merged_routes(model)
    reps: dict[tuple, ArchKey] = {}
    out = {}
    for a in archs:
        signature = (_void_edges_to_none(a[0], none), _route(a, routes))
        out[a] = reps.setdefault(signature, a)
    return out


@torch.inference_mode()
def evaluate_children(model: nn.Module, archs: Iterable[ArchKey], batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                      cell_types: Sequence[str], num_ops: int, bn: str = "batch_stats",
                      none_index: int | None = None, progress: str = "child models",
                      per_pass: int | None = None) -> dict[ArchKey, float]:
    """{a: top-1 accuracy % of child a on `batches`}, with the weights `model` holds: the
    averaged-weight copy (`spos.averaged_copy`) for SE-NAS, the live supernet for SPOS. Weights,
    BN buffers and train/eval flags are left as they were; an expanded supernet routes each child
    through its own copies.
    With `none_index` (NB201, batch statistics), children that differ only on edges that cannot
    reach the cell output are computed once (9,445 forwards for the full 15,625-cell space).
    `per_pass` children share one forward pass (default: `children_per_pass`); the accuracies
    are the same either way, up to float rounding inside kernels."""
    archs = list(dict.fromkeys(archs))
    if not archs:
        return {}
    representative = _equivalence(model, archs, none_index, bn)
    unique = list(dict.fromkeys(representative.values()))
    if bn == "eval" and len(batches) > 1:
        # running statistics make each image independent of its batch: one forward per child
        batches = [(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))]
    device = batches[0][0].device
    total = sum(len(y) for _, y in batches)
    per_pass = per_pass or children_per_pass(model, device, max(len(y) for _, y in batches))
    with bn_mode(model, bn):
        if per_pass > 1 and isinstance(model, nb201.Supernet):
            unique, correct = _correct_in_groups(model, unique, batches, per_pass, progress)
        else:
            correct = _correct_one_by_one(model, unique, batches, cell_types, num_ops, progress)
    accuracy = dict(zip(unique, (100.0 * correct.double() / total).tolist()))  # one copy to the host
    return {a: accuracy[representative[a]] for a in archs}


def children_per_pass(model: nn.Module, device: torch.device, images: int) -> int:
    """How many children share one forward pass: on a GPU as many as keep a pass near 8,192
    images (launches dominate there; NB201 supernets only); elsewhere one, since a CPU is busy
    with one child's arithmetic and batching saves it nothing."""
    if device.type != "cuda" or not isinstance(model, nb201.Supernet):
        return 1
    return max(1, 8192 // max(1, images))


def _correct_one_by_one(model: nn.Module, unique: list[ArchKey], batches, cell_types: Sequence[str],
                        num_ops: int, progress: str) -> torch.Tensor:
    device = batches[0][0].device
    ones = {k: torch.ones(len(unique[0][i]), num_ops, device=device) for i, k in enumerate(cell_types)}
    correct = []
    for key in loop(unique, progress):
        active = {k: [[o] for o in ops] for k, ops in zip(cell_types, key)}
        hits = torch.zeros((), dtype=torch.long, device=device)
        for x, y in batches:
            hits += (model(x, ones, active).argmax(1) == y).sum()
        correct.append(hits)
    return torch.stack(correct)


def _correct_in_groups(model: nn.Module, unique: list[ArchKey], batches, per_pass: int,
                       progress: str) -> tuple[list[ArchKey], torch.Tensor]:
    """NB201 children `per_pass` at a time through one batched forward (`nb201_children`); those
    routed alike through an expanded supernet's merged groups go together. Returns the children in
    the order evaluated and their correct counts."""
    routes = _merged_routes(model)
    by_route: dict[tuple, list[ArchKey]] = {}
    for key in unique:
        by_route.setdefault(_route(key, routes), []).append(key)
    chunks = [group[i:i + per_pass] for group in by_route.values() for i in range(0, len(group), per_pass)]
    order, correct = [], []
    for chunk in loop(chunks, f"{progress} ({per_pass} per pass)"):
        order += chunk
        correct.append(_correct_together(model, [key[0] for key in chunk], batches))
    return order, torch.cat(correct)


def _correct_together(model: nn.Module, cells: list[tuple[int, ...]], batches) -> torch.Tensor:
    """Correct counts of `cells` from one batched pass per batch; a pass that does not fit the
    GPU's memory is split in halves."""
    try:
        hits = torch.zeros(len(cells), dtype=torch.long, device=batches[0][0].device)
        for x, y in batches:
            hits += (forward_children(model, x, cells).argmax(1).view(len(cells), len(y)) == y).sum(1)
        return hits
    except torch.cuda.OutOfMemoryError:
        if len(cells) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(cells) // 2
        return torch.cat([_correct_together(model, part, batches) for part in (cells[:half], cells[half:])])


def evaluate_nb201(model: nn.Module, arch_strs: Iterable[str], batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   op_names: Sequence[str], bn: str = "batch_stats", progress: str = "cells") -> dict[str, float]:
    """`evaluate_children` keyed by NB201 arch strings."""
    keys = {a: nb201_key(a, op_names) for a in arch_strs}
    none = list(op_names).index("none") if "none" in op_names else None
    p = evaluate_children(model, keys.values(), batches, ("cell",), len(op_names), bn, none, progress)
    return {a: p[k] for a, k in keys.items()}


# --------------------------------------------------------------------------- ranking quality


def rank_correlation(predicted: Mapping[str, float], truth: Mapping[str, float]) -> dict[str, float]:
    """Kendall tau-b and Spearman rho over the architectures present in both mappings."""
    common = [a for a in predicted if a in truth]
    if len(common) < 2:
        raise ValueError(f"need at least two architectures in common, got {len(common)}")
    x = [predicted[a] for a in common]
    y = [truth[a] for a in common]
    from scipy import stats  # here: half a second of import that most jobs never need

    return {"kendall_tau": float(stats.kendalltau(x, y).statistic),
            "spearman_rho": float(stats.spearmanr(x, y).statistic), "n": len(common)}


def benchmark_accuracies(benchmark, archs: Iterable[str], metric: str = RANK_METRIC) -> dict[str, float]:
    """{canonical arch string: the benchmark's `metric`} from a `benchmark.Benchmark`, in one table read."""
    column = benchmark.table[metric]
    archs = list(archs)
    missing = [a for a in archs if a not in column.index]
    if missing:
        raise ValueError(f"{len(missing)} architectures are not in the benchmark, e.g. {missing[0]!r}")
    return dict(zip(archs, column.loc[archs].astype(float).tolist()))
