"""One first-order DARTS search iteration on random CIFAR-sized data: time, peak memory, and
what DARTS-PT, OStr and P(a) add to it (bench/bench.py runs each supernet in its own process)."""
from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_steps.common.device import use_memory_format  # noqa: E402  (needs ROOT on sys.path)
from pipeline_steps.data.catalog import dataset_info  # noqa: E402
from pipeline_steps.data.search_data import DeviceImages  # noqa: E402
from pipeline_steps.scores.ostr import OStrStatistics  # noqa: E402
from pipeline_steps.scores.perturbation import op_removal_table  # noqa: E402
from pipeline_steps.supernet.state import Optimisation, init_state  # noqa: E402
from pipeline_steps.supernet.train import MODES, StepSettings, StepStats, alpha_step  # noqa: E402

SUPERNETS = {  # the papers' CIFAR search scale: batch 64, 32 px, 10 classes
    "nb201": "NB201 supernet C=16 N=5",
    "darts_no_none": "DARTS supernet 8 cells C=16, 7 ops (darts_no_none)",
    "darts": "DARTS supernet 8 cells C=16, 8 ops (darts)",
}
BATCH, NUM_IMAGES, WARMUP = 64, 50_000, 2
PT_VAL_IMAGES = 1_024
CHILDREN = 8


def paper_params() -> dict:
    """The paper profile's resolved parameters (params/, merged as the pipeline merges them)."""
    from pipeline_steps.pipeline.config import load_params

    return load_params(ROOT / "params", {"profile": "paper"})


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- one search iteration (child process)

class RandomSearchData:
    """SearchData's sampling (a fresh random batch per step; D_tr = first half, D_val = last half)
    over random uint8 CIFAR-sized images, held and augmented on the device by DeviceImages."""

    def __init__(self, device: torch.device, n: int = NUM_IMAGES, batch_size: int = BATCH):
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).numpy()
        labels = torch.randint(0, 10, (n,), generator=g).numpy()
        info = dataset_info("cifar10")
        self.images = DeviceImages(images, labels, info.mean, info.std, device, crop_padding=4)
        self.batch_size = batch_size
        self.train_idx, self.val_idx = torch.arange(n // 2), torch.arange(n // 2, n)
        self.steps_per_epoch = len(self.train_idx) // batch_size

    def _sample(self, pool: torch.Tensor, generator: torch.Generator):
        pick = torch.randperm(len(pool), generator=generator)[: self.batch_size]
        return self.images.batch(pool[pick], generator)

    def train_batch(self, state):
        return self._sample(self.train_idx, state.generator)

    def random_train_batch(self, generator: torch.Generator):
        return self._sample(self.train_idx, generator)

    def val_batch(self, generator: torch.Generator):
        return self._sample(self.val_idx, generator)


def build_state(kind: str, device: torch.device):
    if kind == "nb201":
        from pipeline_steps.spaces import get_space
        settings = yaml.safe_load((ROOT / "params" / "nasflow.yaml").read_text())["space"]["nb201"]
        space = get_space("nb201", {**settings, "channels": 16, "cells_per_stage": 5})
    else:
        from pipeline_steps.spaces.darts import initial_mask, make_space
        space = make_space({"op_set": kind, "channels": 16, "layers": 8})
    state = init_state(space, 10, Optimisation(epochs=50), seed=0, device=device)
    use_memory_format(state.model, torch.device(device), "auto")  # the layout the stages run in
    if kind != "nb201":
        state.mask = initial_mask(kind)  # the mask a DARTS search starts from (all True for these op sets)
    return state


def max_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def measure(kind: str, device_name: str, iters: int) -> dict:
    """Time train.MODES['bilevel'] (alpha step on D_val, then weight step on D_tr) and its peak memory."""
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    data = RandomSearchData(device)
    state = build_state(kind, device)
    state.model.train()
    step, settings = MODES["bilevel"], StepSettings(grad_clip=5.0)
    train_stats, val_stats = StepStats(), StepStats()
    sync()
    rss_before = max_rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        alloc_before = torch.cuda.memory_allocated(device)
    times = []
    for i in range(WARMUP + iters):
        log(f"{kind} on {device_name}: iteration {i + 1}/{WARMUP + iters}{' (warm-up)' if i < WARMUP else ''}")
        sync()
        t0 = time.perf_counter()
        step(state, data, settings, train_stats, val_stats, [])
        sync()
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    # memory right after the timed iterations; includes the optimizer state the first step creates
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        mem = {"peak_delta": peak - alloc_before, "peak_abs": peak}
    else:
        peak = max_rss_bytes()
        mem = {"peak_delta": peak - rss_before, "peak_abs": peak}
    # the data path alone: one augmented batch of 64, as each step draws it
    idx = torch.randperm(len(data.train_idx), generator=state.generator)[:BATCH]
    batch_times = []
    for i in range(3 + max(20, iters)):
        sync()
        t0 = time.perf_counter()
        data.images.batch(idx, state.generator)
        sync()
        if i >= 3:
            batch_times.append(time.perf_counter() - t0)
    extra = selection_costs(state, data, iters, sync) if kind == "nb201" else {}
    return {"median": statistics.median(times), "min": min(times), "iters": iters, **mem,
            "batch": statistics.median(batch_times), "threads": torch.get_num_threads(),
            "load": os.getloadavg()[0], "gpu": torch.cuda.get_device_name(device) if cuda else "", **extra}


def selection_costs(state, data, iters: int, sync) -> dict:
    """What DARTS-PT and OStr add to a supernet: the OStr statistics on every alpha step (side by
    side with a plain alpha step), and one DARTS-PT op decision (5 ACC\\o passes over D_val images)."""
    settings, stats = StepSettings(grad_clip=5.0), StepStats()
    medians = {}
    for label, hooks in (("alpha_plain", []), ("alpha_ostr", [OStrStatistics()])):
        times = []
        for i in range(WARMUP + iters):
            log(f"alpha step {label}: {i + 1}/{WARMUP + iters}")
            sync()
            t0 = time.perf_counter()
            alpha_step(state, data, settings, stats, hooks)
            sync()
            times.append(time.perf_counter() - t0)
        medians[label] = statistics.median(times[WARMUP:])
    val = [data.images.batch(data.val_idx[s:s + BATCH]) for s in range(0, PT_VAL_IMAGES, BATCH)]
    log(f"one DARTS-PT op decision over {PT_VAL_IMAGES} validation images")
    sync()
    t0 = time.perf_counter()
    op_removal_table(state, val, "cell", 0, list(range(len(state.space.ops))))
    sync()
    pt_decision = time.perf_counter() - t0
    # SE-NAS / SPOS / the ranking diagnostic: P(a) of sampled children on one batch of 512 D_val images
    from pipeline_steps.scores.child_eval import evaluate_nb201, scoring_batches
    from pipeline_steps.spaces.nb201 import all_arch_strings

    cells = list(all_arch_strings())
    pick = torch.randperm(len(cells), generator=torch.Generator().manual_seed(0))[:CHILDREN].tolist()
    batches = scoring_batches(data, torch.Generator().manual_seed(1), images=512, batch_size=512)
    log(f"P(a) of {CHILDREN} children")
    sync()
    t0 = time.perf_counter()
    evaluate_nb201(state.model, [cells[i] for i in pick], batches, list(state.space.ops))
    sync()
    return {**medians, "pt_decision": pt_decision, "child_eval": (time.perf_counter() - t0) / CHILDREN}


def selection_rows(device: str, m: dict) -> list[tuple]:
    return [
        ("alpha step, NB201 supernet, plain", device, f"{m['alpha_plain']:.4g}", "s/step", "median; side by side with the next row"),
        ("alpha step, NB201 supernet, with the OStr statistics", device, f"{m['alpha_ostr']:.4g}", "s/step",
         f"ratio {m['alpha_ostr'] / m['alpha_plain']:.3f}: |dL/dalpha|, |dL/dtheta| from the same backward"),
        ("P(a) of one child, NB201 supernet", device, f"{m['child_eval']:.4g}", "s/child",
         f"{CHILDREN} sampled cells, one batch of 512 D_val images, batch-stat BN; x15,625 = "
         f"{m['child_eval'] * 15625 / 3600:.3g} h for the whole space (children with equal outputs are computed once)"),
        ("DARTS-PT op decision, NB201 supernet", device, f"{m['pt_decision']:.4g}", "s",
         f"5 ACC\\o passes over {PT_VAL_IMAGES} D_val images (batch {BATCH}, train-mode BN); "
         f"x{25_000 // PT_VAL_IMAGES} for the whole 25,000-image D_val half"),
    ]


def supernet_rows(kind: str, device: str, m: dict) -> list[tuple]:
    what = f"DARTS iteration, {SUPERNETS[kind]}"
    runs = f"{m['iters']} iters after {WARMUP} warm-up"
    where = f"{m['threads']} torch threads, load avg {m['load']:.1f}" if device.startswith("cpu") else m["gpu"]
    mem = "peak RSS (ru_maxrss)" if device.startswith("cpu") else "torch.cuda.max_memory_allocated"
    return [
        (f"{what}: median", device, f"{m['median']:.4g}", "s/iter",
         f"alpha step (D_val) + weight step (D_tr), batch {BATCH}; {runs}; {where}"),
        (f"{what}: min", device, f"{m['min']:.4g}", "s/iter", runs),
        (f"{what}: peak memory increase", device, f"{m['peak_delta'] / 2**20:.0f}", "MiB",
         f"{mem} minus its value before the first iteration: activations, grads, optimizer state"),
        (f"{what}: peak memory", device, f"{m['peak_abs'] / 2**20:.0f}", "MiB",
         f"{mem}, absolute; includes {NUM_IMAGES} uint8 images ({NUM_IMAGES * 3072 / 2**20:.0f} MiB) as data"),
        (f"{what}: data share", device, f"{100 * 2 * m['batch'] / m['median']:.2g}", "%",
         "2 augmented batches (D_val + D_tr) per iteration / median iteration time"),
    ]
