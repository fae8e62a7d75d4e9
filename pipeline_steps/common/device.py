"""Pick the training device. On a workstation with several GPUs Snakemake never sets
CUDA_VISIBLE_DEVICES, so each GPU job claims a free card itself with a lock file per card;
the lock is an flock, released by the kernel when the process exits or crashes."""
from __future__ import annotations

import fcntl
import os
import re
import tempfile
import time
from pathlib import Path

import torch

from .errors import NasflowError

_claimed: dict[int, int] = {}  # device index -> open lock fd, held for the life of the process


def lock_dir() -> Path:
    """One directory for every user of the machine, so that two people's jobs never share a card."""
    d = Path(os.environ.get("NASFLOW_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / "nasflow-gpu-locks"))
    if not d.is_dir():
        d.mkdir(parents=True, exist_ok=True)
        try:
            d.chmod(0o1777)  # world-writable and sticky, like /tmp
        except PermissionError:
            pass  # another user created it first
    return d


def card_ids(count: int) -> list[str]:
    """A name per visible card that is the same in every process: CUDA_VISIBLE_DEVICES renumbers
    cards from 0 in each process, so the card's UUID where torch reports it, else its entry in
    CUDA_VISIBLE_DEVICES, else its index."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    ids = []
    for i in range(count):
        try:
            uuid = str(torch.cuda.get_device_properties(i).uuid)
        except (AttributeError, AssertionError, RuntimeError):  # older torch, or no driver to ask
            uuid = ""
        ids.append(uuid or (visible[i] if i < len(visible) else str(i)))
    return ids


def _try_lock(card: str, slot: int = 0) -> int | None:
    name = re.sub(r'[^A-Za-z0-9_.-]', '_', card)
    path = lock_dir() / (f"gpu-{name}.lock" if slot == 0 else f"gpu-{name}-slot{slot}.lock")
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    try:
        os.fchmod(fd, 0o666)  # other users lock the same file (the umask narrowed the mode)
    except PermissionError:
        pass  # created by another user, who set the mode
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def claim_free_gpu(cards: list[str], wait_s: float = 3600.0, poll_s: float = 2.0, slots: int = 1) -> int:
    """Lock one of the `slots` places on a card in `cards` (see card_ids) and return the card's
    index; wait while every place is taken. Free places fill card by card at the same depth (every
    card's first slot before any second one). A process keeps what it claimed: asking again
    returns it."""
    if slots < 1:
        raise NasflowError(f"gpu_slots {slots}: at least 1 training job per GPU")
    if _claimed:
        return next(iter(_claimed))
    deadline = time.monotonic() + wait_s
    while True:
        for slot in range(slots):
            for i, card in enumerate(cards):
                fd = _try_lock(card, slot)
                if fd is not None:
                    _claimed[i] = fd
                    return i
        if time.monotonic() > deadline:
            raise NasflowError(f"all {len(cards)} GPUs x {slots} slots stayed claimed for {wait_s:.0f} s (locks in "
                               f"{lock_dir()}); lower --resources gpu=K or free a device")
        time.sleep(poll_s)


def resolve_device(requested: str, slots: int = 1) -> torch.device:
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
        # one visible card: the job's own (SLURM sets CUDA_VISIBLE_DEVICES to its allocation)
        if count == 1:
            return torch.device("cuda:0")
        return torch.device(f"cuda:{claim_free_gpu(card_ids(count), slots=slots)}")
    raise NasflowError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")


def device_name(device: torch.device) -> str:
    """The card's name (e.g. NVIDIA H100 80GB HBM3), or `cpu`."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def use_memory_format(model: torch.nn.Module, device: torch.device, setting: str) -> str:
    """`channels_last`: auto (= on), on, off. NHWC runs the search networks' 16-64-channel
    convolutions and batch norms 1.3-2x faster on an H200 (bench/step_profile.py), and on a CPU
    (2 threads) a paper-scale NB201 step 1.3x and a DARTS-space step 2.5x faster: oneDNN's
    depthwise convolutions are far slower in NCHW. Returns the format used."""
    if setting not in ("auto", "on", "off"):
        raise NasflowError(f"channels_last {setting!r}: use auto, on or off")
    if setting in ("auto", "on"):
        model.to(memory_format=torch.channels_last)
        return "channels_last"
    return "contiguous"
