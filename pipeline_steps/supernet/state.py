"""The supernet state every method transforms, and its one-file checkpoint.

State = network weights, architecture parameters alpha (one tensor per cell type), the
op-availability mask (same shape, bool), both optimizers, the LR scheduler, RNG states, the
epoch counter and a per-epoch history. Saving and loading it is all a stage needs to resume.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..common.atomic import atomic_path
from ..common.rng import rng_state, seed_everything, set_rng_state
from ..data.search_data import TrainPass
from ..spaces import Space


@dataclass
class SupernetState:
    space: Space
    model: nn.Module
    alpha: dict[str, nn.Parameter]
    mask: dict[str, torch.Tensor]
    w_optimizer: torch.optim.Optimizer
    a_optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator            # drives batch sampling and augmentation (CPU, device independent)
    epoch: int = 0
    train_pass: TrainPass = field(default_factory=TrainPass)   # the current shuffled pass over D_tr
    history: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    _device_masks: dict = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def weights(self, mixing: str = "softmax") -> dict[str, torch.Tensor]:
        """Mixing weights per cell type; masked ops get exactly 0 (softmax over alive ops only)."""
        return {k: mixing_weights(a, self.device_mask(k, a.device), mixing) for k, a in self.alpha.items()}

    def device_mask(self, kind: str, device: torch.device) -> torch.Tensor:
        """The mask of `kind` on `device`, copied only when the mask changed (masks are edited in
        place; comparing a few dozen CPU booleans is cheaper than a copy that waits on the device)."""
        mask = self.mask[kind]
        cached = self._device_masks.get(kind)
        if cached is None or cached[1].device != torch.device(device) or not torch.equal(cached[0], mask):
            # copy=True: on the CPU .to() would hand back the live mask, which later in-place edits change
            cached = (mask.clone(), mask.to(device, non_blocking=True, copy=True))
            self._device_masks[kind] = cached
        return cached[1]

    def active(self) -> dict[str, list[list[int]]]:
        """Per cell type and edge, the indices of the ops still alive (computed on CPU: no device sync)."""
        return {k: [torch.nonzero(row).flatten().tolist() for row in m] for k, m in self.mask.items()}

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "alpha": {k: a.detach().cpu() for k, a in self.alpha.items()},
            "mask": {k: m.clone() for k, m in self.mask.items()},
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.a_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "train_pass": self.train_pass.state_dict(),
            "history": self.history,
            "extra": self.extra,
            "rng": rng_state(self.generator),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        with torch.no_grad():
            for k, a in self.alpha.items():
                a.copy_(ckpt["alpha"][k])
        self.mask = {k: m.clone().bool() for k, m in ckpt["mask"].items()}
        self.w_optimizer.load_state_dict(ckpt["w_optimizer"])
        self.a_optimizer.load_state_dict(ckpt["a_optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch = ckpt["epoch"]
        self.train_pass = TrainPass()
        if "train_pass" in ckpt:
            self.train_pass.load_state_dict(ckpt["train_pass"])
        self.history = list(ckpt["history"])
        self.extra = dict(ckpt["extra"])
        set_rng_state(ckpt["rng"], self.generator)

    def save(self, path: str | Path, **meta: Any) -> None:
        with atomic_path(path) as tmp:
            torch.save({**self.state_dict(), "meta": meta}, tmp)


def mixing_weights(alpha: torch.Tensor, mask: torch.Tensor, mixing: str) -> torch.Tensor:
    if mixing == "softmax":
        # an edge with no alive op (a dropped DARTS-space input) mixes nothing: 0, not NaN
        return alpha.masked_fill(~mask, float("-inf")).softmax(dim=-1).nan_to_num(0.0)
    if mixing == "raw":
        return alpha * mask
    raise ValueError(f"unknown mixing {mixing!r}")


@dataclass(frozen=True)
class Optimisation:
    """The DARTS optimiser settings (METHODS.md 1.4); one instance per stage."""
    epochs: int
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    alpha_init: str = "randn_1e-3"
    lr_period: int | None = None         # cosine T_max in epochs; None: `epochs` (HEP-NAS sets its own)
    nesterov: bool = False               # Nesterov momentum for w (the SE-NAS / ABS SPOS optimiser)


def init_state(space: Space, num_classes: int, opt: Optimisation, seed: int, device: torch.device | str) -> SupernetState:
    """A fresh supernet: seeded weights, alpha ~ 1e-3 * randn, every op alive."""
    gen = seed_everything(seed)
    model = space.build(num_classes).to(device)
    alpha = {}
    for k in space.cell_types:
        shape = (space.num_edges, len(space.ops))
        init = 1e-3 * torch.randn(shape) if opt.alpha_init == "randn_1e-3" else torch.full(shape, 1.0 / len(space.ops))
        alpha[k] = nn.Parameter(init.to(device))
    mask = space.initial_mask()
    w_opt = torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay,
                            nesterov=opt.nesterov)
    a_opt = torch.optim.Adam(alpha.values(), lr=opt.arch_lr, betas=tuple(opt.arch_betas),
                             weight_decay=opt.arch_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=max(opt.lr_period or opt.epochs, 1), eta_min=opt.lr_min)
    return SupernetState(space, model, alpha, mask, w_opt, a_opt, sched, gen)
