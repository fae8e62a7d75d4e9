#!/usr/bin/env python
"""Where the time of one NB201 first-order DARTS step goes (C=16, N=5, 32 px), and what a few
numerically equivalent variants of the network's kernels do to it, side by side in one process.

    python bench/step_profile.py [--device cuda|cpu] [--batch 64] [--steps 60] [--threads T]

Prints (1) the torch profiler's top operators of the plain step by device time, (2) the captured
step's time per step for each variant:
  baseline       as the pipeline runs it
  cudnn_bench    torch.backends.cudnn.benchmark = True (cuDNN picks its fastest algorithms)
  pool_as_sum    3x3 average pooling with count_include_pad=False computed as a padded pool times a
                 precomputed 9/count map (same numbers up to float rounding)
  channels_last  network and inputs in NHWC
  all            every variant at once
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from step_speed import nb201_state, random_search_data, sync  # noqa: E402

from pipeline_steps.common.device import device_name  # noqa: E402
from pipeline_steps.scores.ostr import OStrStatistics  # noqa: E402
from pipeline_steps.supernet.captured_step import CapturedStep  # noqa: E402
from pipeline_steps.supernet.train import MODES, StepSettings, StepStats  # noqa: E402


@contextlib.contextmanager
def cudnn_bench():
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def pool_as_sum():
    """AvgPool2d(3, 1, 1, count_include_pad=False) == avg_pool2d(count_include_pad=True) * 9 / count."""
    original = nn.AvgPool2d.forward
    scales: dict = {}

    def forward(self, x):
        if self.count_include_pad or self.kernel_size != 3 or self.stride not in (1, (1, 1)) or self.padding != 1:
            return original(self, x)
        key = (x.shape[-2], x.shape[-1], x.device, x.dtype)
        if key not in scales:
            ones = torch.ones(1, 1, *x.shape[-2:], device=x.device, dtype=x.dtype)
            scales[key] = 1.0 / F.avg_pool2d(ones, 3, 1, 1, count_include_pad=True)  # 9 / count
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=True) * scales[key]

    nn.AvgPool2d.forward = forward
    try:
        yield
    finally:
        nn.AvgPool2d.forward = original


def channels_last(state) -> None:
    state.model.to(memory_format=torch.channels_last)
    forward = state.model.forward
    state.model.forward = lambda x, *a, **k: forward(x.contiguous(memory_format=torch.channels_last), *a, **k)


VARIANTS = {
    "baseline": ([], False),
    "cudnn_bench": ([cudnn_bench], False),
    "pool_as_sum": ([pool_as_sum], False),
    "channels_last": ([], True),
    "all": ([cudnn_bench, pool_as_sum], True),
}


def time_variant(device, batch: int, steps: int, name: str) -> float:
    contexts, nhwc = VARIANTS[name]
    with contextlib.ExitStack() as stack:
        for c in contexts:
            stack.enter_context(c())
        data = random_search_data(device, batch, steps)
        state = nb201_state(device)
        if nhwc:
            channels_last(state)
        state.model.train()
        step = CapturedStep(state, "bilevel", "softmax", 5.0, OStrStatistics(), use_graph=True)
        for _ in range(8):
            step(data.val_batch(state.generator), data.train_batch(state))
        sync(device)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(steps // 3):
                step(data.val_batch(state.generator), data.train_batch(state))
            sync(device)
            times.append((time.perf_counter() - t0) / (steps // 3))
        return statistics.median(times)


def profile_plain(device, batch: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    data = random_search_data(device, batch, 4)
    state = nb201_state(device)
    state.model.train()
    step, settings = MODES["bilevel"], StepSettings(grad_clip=5.0)
    tr, va = StepStats(), StepStats()
    for _ in range(2):
        step(state, data, settings, tr, va, [])
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step(state, data, settings, tr, va, [])
        sync(device)
    averages = prof.key_averages()
    keys = ("self_device_time_total", "self_cuda_time_total") if device.type == "cuda" else ()
    for key in (*keys, "self_cpu_time_total"):
        try:
            return averages.table(sort_by=key, row_limit=22)
        except (AttributeError, KeyError, ValueError):
            continue
    return str(averages)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{device_name(device)}, torch {torch.__version__}, batch {args.batch}\n")
    print("Plain step, two steps under the profiler, by self device time:\n")
    print(profile_plain(device, args.batch))
    print("\n| variant | captured step | vs baseline |\n|---|---|---|")
    base = None
    for name in args.variants:
        t = time_variant(device, args.batch, args.steps, name)
        base = base or t
        print(f"| {name} | {t * 1e3:.2f} ms | {t / base:.3f} |", flush=True)


if __name__ == "__main__":
    main()
