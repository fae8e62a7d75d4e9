"""Shared fixtures: a tiny learnable image-folder dataset (offline) and paths to ../shared."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def make_image_folder(root: Path, n_train: int = 24, n_test: int = 4, size: int = 8, classes: int = 10) -> Path:
    """Each class has its own colour and stripe pattern plus noise, so a small net learns it."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = rng.integers(30, 225, size=(classes, 3))
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.tile(colours[c], (size, size, 1)).astype(np.int16)
                img[c % size, :, :] = 255 - img[c % size, :, :]
                img += rng.integers(-25, 26, size=img.shape)
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny_cifar10"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run faster on one torch thread than on several."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
