"""Search-space mutual distillation (SMD, HEP-NAS Eq. 6-7; METHODS.md 2.3.4) and the HEP code's
one-hot alpha regulariser for the DARTS space (METHODS.md 2.3.6).

The loss of child m at level k, on a D_tr batch with logits z:

    L(M_m) = CE(z_m, y)
           + L_dis(z_m, z_T)                                    teacher T = M_opt^(k-1), frozen
           + 1/(D_k - 1) * sum_{i != m} L_dis(z_m, z_i)         siblings at their current state

with L_dis a batch-mean KL divergence between the softmax distributions (at temperature tau,
scaled by tau^2; the papers' tau is 1). `kd_direction`: teacher_first = KL(p_guide || p_student),
the code's KLDivLoss(log_softmax(z_m), softmax(z_guide)); student_first = KL(p_student || p_guide),
paper Eq. 6. `guidance` (paper Table 7): none, previous (teacher only), siblings, both; the
code's --kd_loss none, single_teacher, dml, multi_teacher.

Registers the training modes `smd`, `smd_fixed_alpha` and `bilevel_onehot_reg` in train.MODES.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import NasflowError
from ..data.search_data import SearchData
from ..supernet.state import SupernetState
from ..supernet.train import MODES, Hook, StepSettings, StepStats, alpha_step, train_epoch, weight_step

KD_DIRECTIONS = ("teacher_first", "student_first")
GUIDANCES = ("none", "previous", "siblings", "both")


# --------------------------------------------------------------------------- the SMD loss


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p || q) = sum_c p_c (log p_c - log q_c), p = softmax(p_logits / tau), averaged over the batch."""
    log_p = F.log_softmax(p_logits / temperature, dim=1)
    log_q = F.log_softmax(q_logits / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def distillation_loss(student_logits: torch.Tensor, guide_logits: torch.Tensor, kd_direction: str = "teacher_first",
                      temperature: float = 1.0) -> torch.Tensor:
    """L_dis between the student and one guide, times tau^2 so its gradient keeps its size as tau grows."""
    if kd_direction == "teacher_first":
        kl = kl_divergence(guide_logits, student_logits, temperature)
    elif kd_direction == "student_first":
        kl = kl_divergence(student_logits, guide_logits, temperature)
    else:
        raise NasflowError(f"unknown kd_direction {kd_direction!r}; valid: {', '.join(KD_DIRECTIONS)}")
    return temperature ** 2 * kl


def uses_teacher(guidance: str) -> bool:
    return guidance in ("previous", "both")


def uses_siblings(guidance: str) -> bool:
    return guidance in ("siblings", "both")


def smd_loss(logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None = None,
             sibling_logits: Sequence[torch.Tensor] = (), guidance: str = "both", kd_direction: str = "teacher_first",
             temperature: float = 1.0) -> torch.Tensor:
    """Eq. 7: CE + L_dis to the teacher + the mean L_dis to the siblings, as `guidance` selects.
    Guide logits the guidance does not use are ignored; with no siblings their term is 0."""
    if guidance not in GUIDANCES:
        raise NasflowError(f"unknown SMD guidance {guidance!r}; valid: {', '.join(GUIDANCES)}")
    loss = F.cross_entropy(logits, y)
    if uses_teacher(guidance):
        if teacher_logits is None:
            raise NasflowError(f"SMD guidance {guidance!r} needs the previous optimum's logits")
        loss = loss + distillation_loss(logits, teacher_logits, kd_direction, temperature)
    if uses_siblings(guidance) and len(sibling_logits) > 0:
        sibling_terms = [distillation_loss(logits, z, kd_direction, temperature) for z in sibling_logits]
        loss = loss + torch.stack(sibling_terms).mean()
    return loss


# --------------------------------------------------------------------------- the SMD training step


@dataclass(frozen=True)
class SMDSettings(StepSettings):
    """Step settings of SMD; `teacher` and `siblings` are set per child by smd_epoch."""
    guidance: str = "both"
    kd_direction: str = "teacher_first"
    temperature: float = 1.0
    teacher: SupernetState | None = field(default=None, compare=False, repr=False)
    siblings: tuple[SupernetState, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.guidance not in GUIDANCES:
            raise NasflowError(f"unknown SMD guidance {self.guidance!r}; valid: {', '.join(GUIDANCES)}")
        if self.kd_direction not in KD_DIRECTIONS:
            raise NasflowError(f"unknown kd_direction {self.kd_direction!r}; valid: {', '.join(KD_DIRECTIONS)}")
        if not self.temperature > 0:
            raise NasflowError(f"the distillation temperature must be positive, got {self.temperature}")


@contextmanager
def batch_statistics_untracked(model: nn.Module) -> Iterator[None]:
    """Train-mode BN (batch statistics) that leaves the running statistics as they are."""
    was_training = model.training
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    model.train()
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True
        model.train(was_training)


@torch.no_grad()
def guide_logits(guide: SupernetState, x: torch.Tensor, mixing: str = "softmax") -> torch.Tensor:
    """A teacher's or sibling's logits on the student's batch: no gradient, batch statistics as in
    the code's train-mode guides, and nothing of the guide changes (not even BN running stats)."""
    with batch_statistics_untracked(guide.model):
        return guide.model(x, guide.weights(mixing), guide.active())


def smd_weight_step(state: SupernetState, data: SearchData, s: SMDSettings, stats: StepStats) -> None:
    """train.weight_step with the SMD loss: the student's next D_tr batch (drawn through its own
    generator, so siblings see different batches), scored by the guides too; the student's weights
    take one clipped SGD step. `stats` records the SMD loss."""
    x, y = data.train_batch(state)
    use_teacher = uses_teacher(s.guidance) and s.teacher is not None
    teacher_logits = guide_logits(s.teacher, x, s.mixing) if use_teacher else None
    sibling_logits = [guide_logits(g, x, s.mixing) for g in s.siblings] if uses_siblings(s.guidance) else []
    weights = {k: w.detach() for k, w in state.weights(s.mixing).items()}
    state.w_optimizer.zero_grad(set_to_none=True)
    logits = state.model(x, weights, state.active())
    loss = smd_loss(logits, y, teacher_logits, sibling_logits, s.guidance, s.kd_direction, s.temperature)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), s.grad_clip)
    state.w_optimizer.step()
    stats.add(logits.detach(), y, loss.detach())


def smd(state, data, s: SMDSettings, train_stats, val_stats, hooks) -> None:
    """An SMD step with the architecture update: plain first-order alpha step (the code's
    proj=False: no regulariser), then the SMD weight step."""
    alpha_step(state, data, s, val_stats, hooks)
    smd_weight_step(state, data, s, train_stats)


def smd_fixed_alpha(state, data, s: SMDSettings, train_stats, val_stats, hooks) -> None:
    """An SMD step while alpha is frozen (warm-up)."""
    smd_weight_step(state, data, s, train_stats)


def smd_epoch(children: Sequence[SupernetState], teacher: SupernetState | None, data: SearchData,
              settings: SMDSettings, update_alpha: bool, hooks: Iterable[Hook] = (),
              progress: bool = True) -> list[dict[str, float]]:
    """One round robin of SMD (Algorithm 1, line 9): child 1 trains one epoch, then child 2, ...
    Each child reads its own batches and is guided, on them, by the teacher and by its siblings
    as they are at that moment (those before it already trained this round). Each child steps its
    own optimizers and scheduler and advances its own epoch counter. `update_alpha` is the
    caller's warm-up decision for this round's epoch label. Returns one train_epoch record per child."""
    if uses_teacher(settings.guidance) and teacher is None:
        raise NasflowError(f"SMD guidance {settings.guidance!r} needs the previous optimum as teacher")
    mode = "smd" if update_alpha else "smd_fixed_alpha"
    records = []
    for m, child in enumerate(children):
        siblings = tuple(c for i, c in enumerate(children) if i != m)
        guided = replace(settings, teacher=teacher, siblings=siblings)
        records.append(train_epoch(child, data, mode, guided, hooks, progress))
    return records


# --------------------------------------------------------------------------- the one-hot alpha regulariser


def onehot_regulariser(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per cell type -(1/(E*|O|)) * sum_e log(max_o theta[e, o]), summed over the cell types: the
    code's F.kl_div(log(sorted theta), one-hot, reduction='mean'), which pulls each edge towards
    one op. The code's zero -> 1e-4 guard only reaches a maximum on an edge with no alive op."""
    total = torch.zeros((), device=next(iter(weights.values())).device)
    for theta in weights.values():
        total = total - theta.amax(dim=-1).clamp_min(1e-4).log().sum() / theta.numel()
    return total


def onehot_regularised_alpha_step(state: SupernetState, data: SearchData, s: StepSettings, stats: StepStats,
                                  hooks: Iterable[Hook]) -> None:
    """train.alpha_step with L_val + onehot_regulariser(theta); `stats` records L_val."""
    hooks = list(hooks)
    x, y = data.val_batch(state.generator)
    state.a_optimizer.zero_grad(set_to_none=True)
    weights = state.weights(s.mixing)
    if hooks:
        for w in weights.values():
            w.retain_grad()          # hooks read dL/dtheta off this backward pass, as in train.alpha_step
    logits = state.model(x, weights, state.active())
    val_loss = F.cross_entropy(logits, y)
    (val_loss + onehot_regulariser(weights)).backward()
    for hook in hooks:
        hook.after_alpha_backward(state, weights)
    state.a_optimizer.step()
    stats.add(logits.detach(), y, val_loss.detach())


def bilevel_onehot_reg(state, data, s, train_stats, val_stats, hooks) -> None:
    """First-order DARTS with the one-hot regulariser on the architecture loss: the HEP DARTS-space
    code's one-shot, continue-training and final-tuning epochs while alpha is updated."""
    onehot_regularised_alpha_step(state, data, s, val_stats, hooks)
    weight_step(state, data, s, train_stats)


MODES.update(smd=smd, smd_fixed_alpha=smd_fixed_alpha, bilevel_onehot_reg=bilevel_onehot_reg)
