"""Pick the training device. On a workstation with several GPUs Snakemake never sets
CUDA_VISIBLE_DEVICES, so each GPU job claims a free card itself with a lock file per device;
the lock is an flock, released by the kernel when the process exits or crashes."""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

import torch

from .errors import NasflowError

_held_locks: list[int] = []  # open fds keep the claims for the life of the process


def lock_dir() -> Path:
    d = Path(os.environ.get("NASFLOW_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / f"nasflow-gpu-locks-{os.getuid()}"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def claim_free_gpu(count: int, wait_s: float = 3600.0, poll_s: float = 2.0) -> int:
    """Lock and return the first unclaimed device index in [0, count); wait while all are busy."""
    deadline = time.monotonic() + wait_s
    while True:
        for i in range(count):
            fd = os.open(lock_dir() / f"gpu{i}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            _held_locks.append(fd)
            return i
        if time.monotonic() > deadline:
            raise NasflowError(f"all {count} GPUs stayed claimed for {wait_s:.0f} s (locks in {lock_dir()}); "
                               "lower --resources gpu=K or free a device")
        time.sleep(poll_s)


def resolve_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda") or requested == "auto":
        if not torch.cuda.is_available():
            if requested == "auto":
                return torch.device("cpu")
            raise NasflowError(f"device {requested!r} asked for but CUDA is not available; set device: auto or cpu")
        if ":" in requested:
            return torch.device(requested)
        count = torch.cuda.device_count()
        # a scheduler that sets CUDA_VISIBLE_DEVICES (SLURM) has already given this job its cards
        if count == 1 or "CUDA_VISIBLE_DEVICES" in os.environ:
            return torch.device("cuda:0")
        return torch.device(f"cuda:{claim_free_gpu(count)}")
    raise NasflowError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")
