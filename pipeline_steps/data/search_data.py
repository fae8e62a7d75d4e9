"""Search data on the training device: the whole (sub)set lives there as uint8 and is augmented
there, so no loader workers and no host-to-device copies per step.

Random draws come from a CPU generator so that a run is the same on any device and resumes
exactly from a checkpoint.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .catalog import dataset_info
from .datasets import load_split


@dataclass(frozen=True)
class DataSettings:
    dataset: str
    root: str
    source: str = "auto"
    download: bool = False
    image_size: int | None = None     # resize once at load (quick profile); None keeps the native size
    max_images: int | None = None     # class-agnostic seeded subset of the training set
    train_portion: float = 0.5        # D_tr = first half, D_val = last half (METHODS.md 1.4)
    crop_padding: int | None = None   # None: 4 for 32 px images, 2 for 16 px (NB201 convention)


class DeviceImages:
    """uint8 images + labels on one device; returns normalised (optionally augmented) batches."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, device: torch.device | str,
                 crop_padding: int):
        self.images = torch.from_numpy(images).to(device)
        self.labels = torch.from_numpy(labels).long().to(device)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.pad = crop_padding
        size = self.images.shape[-1]
        self._grid = torch.arange(size, device=device)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `idx`; with a generator, random crop (zero padding, as torchvision) and horizontal flip."""
        # non_blocking: the host never waits for the device between steps (small pageable copies
        # are staged at once, so the source may change afterwards)
        idx = idx.to(self.images.device, non_blocking=True)
        x = self.images[idx].float()
        if generator is not None:
            x = self._augment(x, generator)
        return (x - self.mean) / self.std, self.labels[idx]

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.pad
        offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator).to(x.device, non_blocking=True)
        flips = (torch.rand(b, generator=generator) < 0.5).to(x.device, non_blocking=True)
        # pad with the value that normalises to (0 - mean)/std, i.e. raw zero, like torchvision's padding
        padded = F.pad(x, (p, p, p, p))
        rows = (offsets[0][:, None] + self._grid[:h][None, :])            # (b, h)
        cols = (offsets[1][:, None] + self._grid[:w][None, :])            # (b, w)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def load_images(settings: DataSettings, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split as uint8 arrays, shuffled (image folders), subset (training split) and resized as set."""
    images, labels = load_split(settings.dataset, split, source=settings.source, root=settings.root,
                                download=settings.download)
    if settings.source == "folder" or (settings.source == "auto" and _is_folder(settings.root)):
        # image folders list images class by class: shuffle once (fixed seed) so that both halves
        # of the search split hold every class; torchvision's files keep the official order
        order = np.random.default_rng(0).permutation(len(labels))
        images, labels = images[order], labels[order]
    if split == "train" and settings.max_images is not None and settings.max_images < len(labels):
        # fixed seed: every run seed sees the same subset, so seeds differ only in the search
        keep = np.sort(np.random.default_rng(0).permutation(len(labels))[: settings.max_images])
        images, labels = images[keep], labels[keep]
    if settings.image_size is not None and settings.image_size != images.shape[-1]:
        images = resize_uint8(images, settings.image_size)
    return images, labels


def device_images(settings: DataSettings, split: str, device: torch.device | str) -> DeviceImages:
    info = dataset_info(settings.dataset)
    images, labels = load_images(settings, split)
    size = images.shape[-1]
    pad = settings.crop_padding if settings.crop_padding is not None else (4 if size >= 32 else max(1, size // 8))
    out = DeviceImages(images, labels, info.mean, info.std, device, pad)
    out.fingerprint = fingerprint(images, labels)
    return out


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """What the images are, not where they lie: a hash of the pixels and labels a stage trains on."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
    return h.hexdigest()


class TrainPass:
    """One shuffled pass over D_tr: its order and how far it has been read. Kept in the supernet
    state, so a stage resumed mid-epoch sees exactly the batches an uninterrupted run would."""

    def __init__(self) -> None:
        self.order: torch.Tensor | None = None
        self.cursor = 0

    def next(self, pool_size: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        if self.order is None or self.cursor >= len(self.order) or len(self.order) != pool_size:
            self.order, self.cursor = torch.randperm(pool_size, generator=generator), 0
        idx = self.order[self.cursor:self.cursor + batch_size]
        self.cursor += len(idx)
        return idx

    def state_dict(self) -> dict:
        return {"order": None if self.order is None else self.order.clone(), "cursor": self.cursor}

    def load_state_dict(self, d: dict) -> None:
        self.order = None if d.get("order") is None else d["order"].clone()
        self.cursor = int(d.get("cursor", 0))


class SearchData:
    """The search split of the training set: D_tr (weights) and D_val (alpha), both augmented."""

    def __init__(self, settings: DataSettings, batch_size: int, device: torch.device | str):
        self.images = device_images(settings, "train", device)
        self.num_classes = dataset_info(settings.dataset).num_classes
        self.batch_size = batch_size
        split = int(math.floor(len(self.images) * settings.train_portion))
        self.train_idx = torch.arange(0, split)
        self.val_idx = torch.arange(split, len(self.images))
        self.steps_per_epoch = math.ceil(len(self.train_idx) / batch_size)
        self.fingerprint = self.images.fingerprint

    def _sample(self, pool: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        # next(iter(DataLoader(SubsetRandomSampler))): a fresh random batch, no epoch bookkeeping
        pick = torch.randperm(len(pool), generator=generator)[: self.batch_size]
        return self.images.batch(pool[pick], generator)

    def train_batch(self, state) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of `state`'s shuffled pass over D_tr (`for x, y in train_queue`): an epoch
        of `steps_per_epoch` batches sees every training image once. A new pass is drawn from the
        state's generator when the last one is used up; the pass is part of the checkpoint."""
        idx = state.train_pass.next(len(self.train_idx), self.batch_size, state.generator)
        return self.images.batch(self.train_idx[idx], state.generator)

    def random_train_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh random D_tr batch, independent of any pass (e.g. gradient-matching batches)."""
        return self._sample(self.train_idx, generator)

    def val_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`next(iter(valid_queue))`: a fresh random D_val batch every architecture step."""
        return self._sample(self.val_idx, generator)

    def val_batches(self, batch_size: int | None = None, limit: int | None = None,
                    generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """D_val unaugmented (for scoring and evaluation), `limit` images at most: the first ones in
        order, or with a generator a random subset of that size drawn from it."""
        if generator is None:
            idx = self.val_idx if limit is None else self.val_idx[:limit]
        else:
            n = len(self.val_idx) if limit is None else min(limit, len(self.val_idx))
            idx = self.val_idx[torch.randperm(len(self.val_idx), generator=generator)[:n]]
        bs = batch_size or self.batch_size
        for start in range(0, len(idx), bs):
            yield self.images.batch(idx[start:start + bs])


def _is_folder(root: str) -> bool:
    return (Path(root) / "train").is_dir()


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(images).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()
