"""Single-path one-shot training (SPOS, Guo et al. 2020): one uniformly sampled path per step.

Each step picks one alive op per edge uniformly at random, gives it weight 1 and computes only
that op (`active` lists one op per edge), then takes a weight step on a D_tr batch: CE, clip,
SGD. No alpha step. METHODS.md 3.3:

  * sampling `per_arch`: one cell architecture per cell type, shared by every cell (SPOS);
    `per_cell`: every cell draws its own (the ABS NB201 code).
  * a node whose incoming edges all drew `none` redraws them (`resample_all_none`, ABS
    `forward_urs`), unless `none` is the only op left on all of them.
  * snapshots: at K evenly spaced steps of a stage's last epoch, add every parameter and BN
    buffer to a running sum; their mean Wbar is the weight set SE-NAS measures P(a) with (Eq. 4).
    A training stage whose `search` settings hold `snapshots: K` keeps that average in the
    state (`KeptSnapshots`) next to the live weights, which the model keeps: SE-NAS's stages
    measure P(a) with Wbar (`averaged_copy`), the plain SPOS search with the live weights.

All draws come from the state's CPU generator, so a run is reproducible and resumes exactly.
The mode registers itself in `train.MODES` as "spos" when this module is imported.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..spaces import darts as darts_space
from ..spaces import nb201, search_cells
from ..supernet import train
from ..supernet.state import SupernetState

ArchOps = dict[str, tuple[int, ...]]  # per cell type, the one op index chosen on each edge


@dataclass(frozen=True)
class SposSettings(train.StepSettings):
    sampling: str = "per_arch"           # se.sampling: per_arch | per_cell
    resample_all_none: bool = True       # redraw a node whose inputs all drew `none`


# --------------------------------------------------------------------------- edges and nodes


def edge_nodes(space_name: str) -> tuple[int, ...]:
    """The node each edge feeds (the resampling rule works node by node)."""
    if space_name == "nb201":
        return tuple(i for i, _ in nb201.EDGES)
    if space_name == "darts":
        return darts_space.EDGE_NODE
    raise ValueError(f"no edge-to-node map for space {space_name!r}")


# --------------------------------------------------------------------------- sampling


def _alive(row: torch.Tensor) -> list[int]:
    return torch.nonzero(row).flatten().tolist()


def _uniform(choices: Sequence[int], generator: torch.Generator) -> int:
    return choices[int(torch.randint(len(choices), (1,), generator=generator))]


def sample_cell(mask: torch.Tensor, generator: torch.Generator, nodes: Sequence[int],
                none_index: int | None, resample_all_none: bool = True) -> tuple[int, ...]:
    """One alive op per edge of one cell type, uniformly; node by node so that a node whose
    edges all drew `none` can redraw them."""
    alive = [_alive(row) for row in mask.cpu()]
    if any(not ops for ops in alive):
        raise ValueError("an edge has no alive op; shrinking must keep at least one per edge")
    chosen: list[int] = [0] * len(alive)
    for node in dict.fromkeys(nodes):
        edges = [e for e, n in enumerate(nodes) if n == node]
        can_avoid_none = any(o != none_index for e in edges for o in alive[e])
        while True:
            draw = [_uniform(alive[e], generator) for e in edges]
            if not (resample_all_none and can_avoid_none and all(o == none_index for o in draw)):
                break
        for e, o in zip(edges, draw):
            chosen[e] = o
    return tuple(chosen)


def sample_arch(mask: Mapping[str, torch.Tensor], generator: torch.Generator, nodes: Sequence[int],
                none_index: int | None, resample_all_none: bool = True) -> ArchOps:
    """One cell architecture per cell type."""
    return {k: sample_cell(m, generator, nodes, none_index, resample_all_none) for k, m in mask.items()}


def one_hot_path(arch: Mapping[str, Sequence[int]], num_ops: int,
                 device: torch.device | str) -> tuple[dict[str, torch.Tensor], dict[str, list[list[int]]]]:
    """(weights, active) that make the supernet compute exactly the path `arch`."""
    weights = {k: F.one_hot(torch.tensor(list(ops)), num_ops).float().to(device) for k, ops in arch.items()}
    active = {k: [[o] for o in ops] for k, ops in arch.items()}
    return weights, active


def _override_path(cell: nn.Module, args: tuple, path: tuple[torch.Tensor, list[list[int]]]) -> tuple:
    # every search cell takes (..., weights, active) as its last two positional arguments
    return (*args[:-2], *path)


@contextmanager
def per_cell_paths(model: nn.Module, paths: Sequence[tuple[torch.Tensor, list[list[int]]]]) -> Iterator[None]:
    """Within the block, search cell i computes paths[i] = (weights, active) whatever the
    supernet passes it. Runs before any other pre-hook (e.g. expansion routing)."""
    cells = search_cells(model)
    if len(paths) != len(cells):
        raise ValueError(f"{len(paths)} paths for {len(cells)} search cells")
    handles = [cell.register_forward_pre_hook(lambda mod, args, p=p: _override_path(mod, args, p), prepend=True)
               for (_, cell), p in zip(cells, paths)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- the training step


def spos_step(state: SupernetState, data, settings: train.StepSettings, train_stats: train.StepStats,
              val_stats: train.StepStats, hooks) -> None:
    """Sample a path, CE on a D_tr batch, clip, SGD; then `after_weight_step` hooks."""
    sampling = getattr(settings, "sampling", "per_arch")
    resample = getattr(settings, "resample_all_none", True)
    x, y = data.train_batch(state)  # the state's pass over D_tr
    nodes = edge_nodes(state.space.name)
    none_index = state.space.ops.index("none") if "none" in state.space.ops else None
    n_ops = len(state.space.ops)
    state.w_optimizer.zero_grad(set_to_none=True)  # ops off the path keep grad None: SGD leaves them alone
    if sampling == "per_arch":
        arch = sample_arch(state.mask, state.generator, nodes, none_index, resample)
        weights, active = one_hot_path(arch, n_ops, x.device)
        logits = state.model(x, weights, active)
    elif sampling == "per_cell":
        cells = [(kind, sample_cell(state.mask[kind], state.generator, nodes, none_index, resample))
                 for kind, _ in search_cells(state.model)]
        paths = []
        for kind, ops in cells:
            w, a = one_hot_path({kind: ops}, n_ops, x.device)
            paths.append((w[kind], a[kind]))
        # the supernet still wants arguments per cell type; each cell replaces them with its own path
        weights, active = one_hot_path({kind: ops for kind, ops in cells}, n_ops, x.device)
        with per_cell_paths(state.model, paths):
            logits = state.model(x, weights, active)
    else:
        raise ValueError(f"unknown SPOS sampling {sampling!r}; valid: per_arch, per_cell")
    loss = F.cross_entropy(logits, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), settings.grad_clip)
    state.w_optimizer.step()
    train_stats.add(logits.detach(), y, loss.detach())
    for hook in hooks:
        if hasattr(hook, "after_weight_step"):
            hook.after_weight_step(state)


train.MODES["spos"] = spos_step
train.MODE_SETTINGS["spos"] = SposSettings


# --------------------------------------------------------------------------- snapshots (Eq. 4)


def snapshot_steps(steps_per_epoch: int, k: int) -> list[int]:
    """The 0-based steps after which to snapshot: K evenly spaced, the last one ends the epoch.
    With fewer steps than K, every step is one snapshot."""
    return sorted({(i + 1) * steps_per_epoch // k - 1 for i in range(k)} - {-1})


class WeightAverage:
    """Running sum of snapshots of every floating tensor in a model's state_dict (parameters and
    BN running statistics). Integer buffers (BN step counters) keep the latest value."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.latest: dict[str, torch.Tensor] = {}
        self.count = 0

    @torch.no_grad()
    def add(self, model: nn.Module) -> None:
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                self.latest[name] = t.detach().clone()
            elif name in self.sums:
                self.sums[name] += t.double()
            else:
                # float64 sums: the mean of K snapshots is exact to the tensor's own precision
                self.sums[name] = t.detach().double().clone()
                self.dtypes[name] = t.dtype
        self.count += 1

    def mean(self) -> dict[str, torch.Tensor]:
        """Wbar = (1/K) sum_k W_k, each tensor in its own dtype and on its own device."""
        if not self.count:
            raise ValueError("no snapshot was taken")
        out = {name: (s / self.count).to(self.dtypes[name]) for name, s in self.sums.items()}
        out.update(self.latest)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {n: t.cpu() for n, t in self.sums.items()}, "dtypes": dict(self.dtypes),
                "latest": {n: t.cpu() for n, t in self.latest.items()}, "count": self.count}

    def load_state_dict(self, saved: Mapping[str, Any], device: torch.device | str = "cpu") -> None:
        self.sums = {n: t.to(device) for n, t in saved["sums"].items()}
        self.latest = {n: t.to(device) for n, t in saved["latest"].items()}
        self.dtypes, self.count = dict(saved["dtypes"]), int(saved["count"])


class SnapshotHook:
    """Pass to `train_epoch(..., hooks=[hook])` for a stage's last epoch: after the weight steps
    in `snapshot_steps(steps_per_epoch, k)` it adds the model to `average`. Start both afresh
    whenever that epoch (re)starts; save `average.state_dict()` with the epoch's checkpoint."""

    def __init__(self, average: WeightAverage, steps_per_epoch: int, k: int):
        self.average = average
        self.due = set(snapshot_steps(steps_per_epoch, k))
        self.step = 0

    def after_alpha_backward(self, state: SupernetState, weights: dict[str, torch.Tensor]) -> None:
        pass  # train.Hook protocol; SPOS takes no alpha step

    def after_weight_step(self, state: SupernetState) -> None:
        if self.step in self.due:
            self.average.add(state.model)
        self.step += 1


SNAPSHOTS_KEY = "snapshots"   # state.extra entry holding the last snapshot average (WeightAverage.state_dict);
                              # the state's model keeps the live weights beside it


class KeptSnapshots(SnapshotHook):
    """A SnapshotHook on a fresh average that puts the average into `state.extra[SNAPSHOTS_KEY]`
    after each snapshot; the last one ends the epoch, so the epoch's checkpoint carries Wbar."""

    def __init__(self, steps_per_epoch: int, k: int):
        super().__init__(WeightAverage(), steps_per_epoch, k)

    def after_weight_step(self, state: SupernetState) -> None:
        due = self.step in self.due
        super().after_weight_step(state)
        if due:
            state.extra[SNAPSHOTS_KEY] = self.average.state_dict()


def kept_average(state: SupernetState) -> WeightAverage | None:
    """The snapshot average a stage left in `state.extra`, on the state's device (None: none taken)."""
    saved = state.extra.get(SNAPSHOTS_KEY)
    if not saved:
        return None
    average = WeightAverage()
    average.load_state_dict(saved, state.device)
    return average


def averaged_copy(model: nn.Module, average: WeightAverage) -> nn.Module:
    """A copy of `model` holding Wbar (the live model keeps training weights)."""
    twin = copy.deepcopy(model)
    twin.load_state_dict(average.mean())
    return twin
