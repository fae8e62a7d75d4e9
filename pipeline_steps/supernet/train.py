"""One training loop for every method; what differs between methods is the step mode.

Modes:
  bilevel      first-order DARTS: alpha step on a D_val batch (Adam), then weight step on a
               D_tr batch (SGD, grad-norm clip). METHODS.md 1.4.
  fixed_alpha  weight steps only, alpha frozen (warm-up, DARTS-PT's fix-alpha supernet).
Methods add modes by registering a step function in MODES.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import torch
import torch.nn.functional as F

from ..common.progress import StepProgress
from ..data.search_data import SearchData
from .state import SupernetState


@dataclass(frozen=True)
class StepSettings:
    grad_clip: float = 5.0
    mixing: str = "softmax"


class Hook(Protocol):
    """Per-step callback; e.g. OStr accumulates |dL/dalpha| right after the alpha backward.
    `weights` are the mixing weights of that step, with their gradients retained."""

    def after_alpha_backward(self, state: SupernetState, weights: dict[str, torch.Tensor]) -> None: ...


class StepStats:
    """Running loss/accuracy sums kept on the device: no host sync per step, one per epoch."""

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.correct: torch.Tensor | int = 0
        self.count = 0

    def add(self, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        self.loss_sum = self.loss_sum + loss.detach() * len(y)
        self.correct = self.correct + (logits.detach().argmax(1) == y).sum()
        self.count += len(y)

    def means(self) -> tuple[float, float]:
        n = max(self.count, 1)
        return float(self.loss_sum) / n, 100.0 * float(self.correct) / n


def weight_step(state: SupernetState, data: SearchData, s: StepSettings, stats: StepStats) -> None:
    x, y = data.train_batch(state)
    weights = {k: w.detach() for k, w in state.weights(s.mixing).items()}
    state.w_optimizer.zero_grad(set_to_none=True)
    logits = state.model(x, weights, state.active())
    loss = F.cross_entropy(logits, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), s.grad_clip)
    state.w_optimizer.step()
    stats.add(logits.detach(), y, loss.detach())


def alpha_step(state: SupernetState, data: SearchData, s: StepSettings, stats: StepStats,
               hooks: Iterable[Hook]) -> None:
    x, y = data.val_batch(state.generator)
    state.a_optimizer.zero_grad(set_to_none=True)
    weights = state.weights(s.mixing)
    if hooks:
        for w in weights.values():
            w.retain_grad()  # dL/dtheta, for scores read off the same backward pass
    logits = state.model(x, weights, state.active())
    loss = F.cross_entropy(logits, y)
    loss.backward()
    for hook in hooks:
        hook.after_alpha_backward(state, weights)
    state.a_optimizer.step()
    stats.add(logits.detach(), y, loss.detach())


def bilevel(state, data, s, train_stats, val_stats, hooks) -> None:
    alpha_step(state, data, s, val_stats, hooks)
    weight_step(state, data, s, train_stats)


def fixed_alpha(state, data, s, train_stats, val_stats, hooks) -> None:
    weight_step(state, data, s, train_stats)


MODES: dict[str, Callable[..., None]] = {"bilevel": bilevel, "fixed_alpha": fixed_alpha}
# modes whose step reads more settings than StepSettings holds register their settings class here
MODE_SETTINGS: dict[str, type[StepSettings]] = {}


def step_settings(mode: str | None, search: dict) -> StepSettings:
    """The step settings of `mode`, each field read from the stage's `search` settings where present."""
    kind = MODE_SETTINGS.get(mode, StepSettings)
    return kind(**{f.name: search[f.name] for f in dataclasses.fields(kind) if f.name in search})


def train_epoch(state: SupernetState, data: SearchData, mode: str, settings: StepSettings = StepSettings(),
                hooks: Iterable[Hook] = (), progress: bool = True, captured: str = "off",
                label: str | None = None) -> dict[str, float]:
    """One epoch (one pass over D_tr: len(D_tr)/batch steps) in `mode`; steps the LR schedule once,
    advances state.epoch. `captured`: off (the plain step) | eager (the captured step's function run
    as it is) | graph (recorded once as a CUDA graph and replayed; eager on CPU) | compiled (graph,
    the network torch.compile'd) | auto (graph on CUDA, off elsewhere). Modes the captured step does
    not cover always run plain. `progress`: a bar on a terminal, heartbeat lines in a log
    (common/progress.py); `label` (e.g. the stage) heads them."""
    hooks = list(hooks)
    state.model.train()
    train_stats, val_stats = StepStats(), StepStats()
    lr = state.w_optimizer.param_groups[0]["lr"]
    fast = _captured_step(state, mode, settings, hooks, captured)
    if fast is None:
        measure = lambda: _running(train_stats, val_stats)  # noqa: E731
    else:
        measure = lambda: (float(fast.train_loss) / max(fast.train_count, 1), fast.train_count)  # noqa: E731
    meter = StepProgress(f"{label + ' ' if label else ''}epoch {state.epoch + 1}", data.steps_per_epoch, measure,
                         enabled=progress)
    try:
        if fast is None:
            step = MODES[mode]
            for _ in range(data.steps_per_epoch):
                step(state, data, settings, train_stats, val_stats, hooks)
                meter.step()
        else:
            for _ in range(data.steps_per_epoch):
                val = data.val_batch(state.generator) if mode == "bilevel" else None
                fast(val, data.train_batch(state))
                meter.step()
            fast.finish(train_stats, val_stats)
    finally:
        meter.close()
    with warnings.catch_warnings():  # the captured step updates the weights without optimizer.step()
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
        state.scheduler.step()
    state.epoch += 1
    train_loss, train_acc = train_stats.means()
    record = {"epoch": state.epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
              "step_path": "plain" if fast is None else fast.path}
    if val_stats.count:
        record["val_loss"], record["val_acc"] = val_stats.means()
    return record


def _running(train_stats: StepStats, val_stats: StepStats) -> tuple[float, int]:
    """(mean loss, images) of the epoch's steps so far: weight steps, or alpha steps for a mode without them."""
    stats = train_stats if train_stats.count else val_stats
    return (stats.means()[0] if stats.count else float("nan")), stats.count


CAPTURED_CHOICES = ("off", "eager", "graph", "compiled", "auto")


def _captured_step(state: SupernetState, mode: str, settings: StepSettings, hooks: list, captured: str):
    if captured not in CAPTURED_CHOICES:
        raise ValueError(f"captured step {captured!r}: use {', '.join(CAPTURED_CHOICES)}")
    use_graph = captured in ("graph", "compiled") or (captured == "auto" and state.device.type == "cuda")
    if captured == "off" or (captured == "auto" and not use_graph):
        return None
    from .captured_step import CapturedStep, supported

    if supported(state, mode, hooks) is not None:
        return None
    ostr = next(iter(hooks), None)
    return CapturedStep(state, mode, settings.mixing, settings.grad_clip, ostr, use_graph,
                        compile_network=captured == "compiled")


@torch.no_grad()
def evaluate(state: SupernetState, batches, weights: dict[str, torch.Tensor] | None = None,
             active: dict[str, list[list[int]]] | None = None, train_bn: bool = True) -> tuple[float, float]:
    """(loss, accuracy %) over `batches`. train_bn=True uses batch statistics, as the search codes do."""
    was_training = state.model.training
    state.model.train(train_bn)
    weights = weights if weights is not None else state.weights()
    active = active if active is not None else state.active()
    stats = StepStats()
    for x, y in batches:
        logits = state.model(x, weights, active)
        stats.add(logits, y, F.cross_entropy(logits, y))
    state.model.train(was_training)
    return stats.means()

