"""From-scratch training of a derived architecture (METHODS.md 1.3, evaluation protocol).

This is a different kind of training from the supernet's: a fixed network, no alpha, a plain
epoch over a shuffled training set, with DARTS' regularisers (cutout, drop path ramped over the
epochs, auxiliary loss, gradient clipping). The networks themselves live in networks.py.

Random draws: batch order, crop/flip and cutout centres come from a CPU generator, so they are
the same on any device; drop-path masks come from the device's global RNG. Both, and every other
RNG, are checkpointed after each epoch, so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..common.atomic import atomic_path
from ..common.checkpoints import load_resume
from ..common.errors import NasflowError
from ..common.progress import StepProgress, duration, log_line
from ..common.rng import rng_state, seed_everything, set_rng_state
from ..data.search_data import DeviceImages
from ..spaces.genotype import Genotype
from ..supernet.train import StepStats
from .networks import NB201Network, NetworkCIFAR, NetworkImageNet, count_flops_m, count_params_m  # noqa: F401


@dataclass(frozen=True)
class RetrainSettings:
    """DARTS CIFAR evaluation protocol by default (METHODS.md 1.3)."""
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    cutout: int = 16                 # side of the zeroed square; 0 disables
    drop_path: float = 0.2           # final drop-path probability (ramped linearly from 0)
    auxiliary_weight: float = 0.4    # 0 disables the auxiliary head
    grad_clip: float = 5.0           # max gradient norm; 0 disables
    layers: int = 20
    channels: int = 36
    lr_min: float = 0.0
    nesterov: bool = False


# NAS-Bench-201's own training recipe for its cell networks (200 epochs, Nesterov SGD 0.1 -> 0
# cosine, weight decay 5e-4, batch 256, crop + flip only).
NB201_PROTOCOL = RetrainSettings(epochs=200, batch_size=256, lr=0.1, weight_decay=5e-4, cutout=0, drop_path=0.0,
                                 auxiliary_weight=0.0, grad_clip=0.0, nesterov=True)


def cifar_network(genotype: Genotype, num_classes: int, settings: RetrainSettings) -> NetworkCIFAR:
    return NetworkCIFAR(settings.channels, num_classes, settings.layers, settings.auxiliary_weight > 0, genotype)


def cutout(x: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a length x length square per image at a random centre, clipped at the borders (DARTS'
    Cutout: rows [cy - length//2, cy + length//2)); centres come from the CPU generator."""
    b, _, h, w = x.shape
    half = length // 2
    cy = torch.randint(0, h, (b, 1), generator=generator).to(x.device)
    cx = torch.randint(0, w, (b, 1), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= cy - half) & (rows < cy + half)                  # (b, h)
    in_cols = (cols >= cx - half) & (cols < cx + half)                  # (b, w)
    hole = in_rows[:, :, None] & in_cols[:, None, :]
    return x.masked_fill(hole[:, None], 0.0)


@torch.no_grad()
def evaluate(model: nn.Module, images: DeviceImages, batch_size: int) -> tuple[float, float]:
    """(loss, top-1 accuracy %) over all of `images`, unaugmented, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=images.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=images.labels.device)
    for start in range(0, len(images), batch_size):
        x, y = images.batch(torch.arange(start, min(start + batch_size, len(images))))
        logits, _ = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = max(len(images), 1)
    return float(loss_sum) / n, 100.0 * float(correct) / n


def retrain(model: nn.Module, train: DeviceImages, test: DeviceImages, settings: RetrainSettings,
            checkpoint_path: str | Path, seed: int, on_epoch: Callable[[dict], None] | None = None,
            progress: bool = True, meta: dict | None = None) -> dict[str, Any]:
    """Train `model` (already on its device) from scratch and test it after every epoch.

    SGD + cosine LR (to lr_min), cutout, drop path prob = drop_path * epoch / epochs, auxiliary
    loss, gradient clipping. After each epoch the checkpoint at `checkpoint_path` is replaced
    atomically; if it exists on entry, training resumes from it. `on_epoch(record)` runs after
    the checkpoint is written; `meta` is stored in it as is (e.g. a tracking run id). `progress`: a
    line per epoch and a heartbeat within it (a bar on a terminal; common/progress.py). Returns test_acc /
    test_error (%, last epoch), params_m, flops_m, epochs, history and wall_time_s (summed over resumes).
    """
    s = settings
    generator = seed_everything(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                                nesterov=s.nesterov)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(s.epochs, 1), eta_min=s.lr_min)
    params_m = count_params_m(model)
    flops_m = count_flops_m(model, (1, *train.images.shape[1:]))
    fingerprint = {"settings": asdict(s), "seed": seed}
    start_epoch, history, wall = 0, [], 0.0

    path = Path(checkpoint_path)
    ckpt = load_resume(path)
    if ckpt is not None:
        if ckpt.get("fingerprint") != fingerprint:
            raise NasflowError(f"checkpoint {path} was written with other retrain settings or seed "
                               f"({ckpt.get('fingerprint')}); restore them or delete the checkpoint")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError:
            raise NasflowError(f"checkpoint {path} does not fit this network; delete it to start over") from None
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, history, wall = ckpt["epoch"], list(ckpt["history"]), ckpt["wall_time_s"]
        set_rng_state(ckpt["rng"], generator)

    n, bs = len(train), s.batch_size
    steps = math.ceil(n / bs)
    if progress:
        log_line(f"retrain: {params_m:.3f}M params, {flops_m:.1f}M FLOPs, {s.epochs} epochs of {steps} steps "
                 f"(batch {bs}) on {train.labels.device}"
                 + (f"; resuming after epoch {start_epoch}" if start_epoch else ""))
    for epoch in range(start_epoch, s.epochs):
        started = time.monotonic()
        if hasattr(model, "drop_path_prob"):
            model.drop_path_prob = s.drop_path * epoch / s.epochs
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        stats = StepStats()
        order = torch.randperm(n, generator=generator)
        meter = StepProgress(f"retrain epoch {epoch + 1}", steps, lambda: (stats.means()[0], stats.count),
                             enabled=progress)
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            if len(idx) < 2 and start > 0:
                break  # a one-image batch cannot train batch norm
            x, y = train.batch(idx, generator)
            if s.cutout > 0:
                x = cutout(x, s.cutout, generator)
            logits, logits_aux = model(x)
            loss = F.cross_entropy(logits, y)
            if logits_aux is not None and s.auxiliary_weight > 0:
                loss = loss + s.auxiliary_weight * F.cross_entropy(logits_aux, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            optimizer.step()
            stats.add(logits, y, loss)
            meter.step()
        meter.close()
        scheduler.step()
        test_loss, test_acc = evaluate(model, test, bs)
        wall += time.monotonic() - started
        train_loss, train_acc = stats.means()
        record = {"epoch": epoch + 1, "lr": lr, "drop_path_prob": getattr(model, "drop_path_prob", 0.0),
                  "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
        history.append(record)
        with atomic_path(path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                        "wall_time_s": wall, "rng": rng_state(generator), "fingerprint": fingerprint,
                        "meta": meta or {}}, tmp)
        if progress:
            left = (s.epochs - epoch - 1) * wall / (epoch + 1)  # the mean epoch so far, resumed ones included
            log_line(f"retrain epoch {epoch + 1}/{s.epochs} lr={lr:.4g} train_loss={train_loss:.4g} "
                     f"train_acc={train_acc:.2f} test_loss={test_loss:.4g} test_acc={test_acc:.2f} "
                     f"{time.monotonic() - started:.1f}s ETA {duration(left)}")
        if on_epoch is not None:
            on_epoch(record)

    test_acc = history[-1]["test_acc"] if history else evaluate(model, test, bs)[1]
    return {"test_acc": test_acc, "test_error": 100.0 - test_acc, "params_m": params_m, "flops_m": flops_m,
            "epochs": s.epochs, "history": history, "wall_time_s": wall}
