#!/usr/bin/env python
"""Time of one NB201 first-order DARTS search epoch (paper settings: C=16, N=5, 25k/25k, 32 px),
plain step against the captured step (on CUDA also with the network compiled) and against xautodl's
DARTS-V1 search model, side by side in one process on one device; and the total throughput of K
concurrent searches on one card.

    python bench/step_speed.py [--device cuda|cpu] [--iters N] [--batch 64] [--concurrent 1,2,4,8]
                               [--threads T] [--no-xautodl] [--no-compiled] [--json]

Prints a Markdown table (stdout); each row names the device and torch it ran on. xautodl is
optional (`pip install --no-deps xautodl`); its row is left out when it is not installed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_steps.common.device import device_name, use_memory_format  # noqa: E402
from pipeline_steps.data.catalog import dataset_info  # noqa: E402
from pipeline_steps.data.search_data import DeviceImages, SearchData, TrainPass  # noqa: E402
from pipeline_steps.scores.ostr import OStrStatistics  # noqa: E402
from pipeline_steps.spaces import get_space  # noqa: E402
from pipeline_steps.supernet.state import Optimisation, init_state  # noqa: E402
from pipeline_steps.supernet.train import StepSettings, train_epoch  # noqa: E402

OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
TRAIN_IMAGES = 25_000  # D_tr of the NB201 search split


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def random_search_data(device: torch.device, batch: int, steps: int, n: int = 2 * TRAIN_IMAGES) -> SearchData:
    """SearchData (one pass over D_tr per epoch, random D_val batches) over random CIFAR-sized
    images held on the device; an epoch is cut to `steps` steps."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).numpy()
    labels = torch.randint(0, 10, (n,), generator=g).numpy()
    info = dataset_info("cifar10")
    data = SearchData.__new__(SearchData)
    data.images = DeviceImages(images, labels, info.mean, info.std, device, crop_padding=4)
    data.num_classes, data.batch_size = 10, batch
    data.train_idx, data.val_idx = torch.arange(n // 2), torch.arange(n // 2, n)
    data.steps_per_epoch, data.fingerprint = steps, "random"
    return data


def nb201_state(device: torch.device, seed: int = 0):
    space = get_space("nb201", {"op_order": OPS, "bn_affine": False, "pool_bn": False, "channels": 16,
                                "cells_per_stage": 5})
    state = init_state(space, 10, Optimisation(epochs=50), seed=seed, device=device)
    use_memory_format(state.model, torch.device(device), "auto")  # the layout the stages run in
    return state


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epochs(device: torch.device, captured: str, batch: int, steps: int, epochs: int = 2) -> list[float]:
    """Seconds per (cut) epoch through train_epoch, OStr statistics on as in every search."""
    data = random_search_data(device, batch, steps)
    state = nb201_state(device)
    out = []
    for _ in range(epochs):
        sync(device)
        t0 = time.perf_counter()
        train_epoch(state, data, "bilevel", StepSettings(grad_clip=5.0), hooks=[OStrStatistics()], progress=False,
                    captured=captured)
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def agreement(device: torch.device, batch: int, steps: int = 20) -> tuple[float, float, float]:
    """Plain and captured steps from the same state and batches: the largest differences in alpha,
    weights and the epoch's training loss (float32; rounding, not a different computation)."""
    data = random_search_data(device, batch, steps)
    states = [nb201_state(device), nb201_state(device)]
    losses = [train_epoch(s, data, "bilevel", StepSettings(grad_clip=5.0), hooks=[OStrStatistics()], progress=False,
                          captured=c)["train_loss"] for s, c in zip(states, ("off", "graph"))]
    da = (states[0].alpha["cell"] - states[1].alpha["cell"]).abs().max().item()
    dw = max((p - q).abs().max().item() for p, q in zip(states[0].model.parameters(), states[1].model.parameters()))
    return da, dw, abs(losses[0] - losses[1])


def time_xautodl(device: torch.device, batch: int, steps: int) -> float | None:
    """xautodl's DARTS-V1 (first order) search iteration: weight step, then alpha step, as its
    train_search loop does; seconds for `steps` iterations after 3 warm-up ones."""
    try:
        from xautodl.models.cell_searchs.search_model_darts import TinyNetworkDarts
    except ImportError:
        return None
    torch.manual_seed(0)
    net = TinyNetworkDarts(16, 5, 4, 10, OPS, affine=False, track_running_stats=True).to(device)
    w_opt = torch.optim.SGD(net.get_weights(), 0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.get_alphas(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    data = random_search_data(device, batch, steps)
    gen = torch.Generator().manual_seed(0)
    holder = SimpleNamespace(generator=gen, train_pass=TrainPass())  # train_batch reads these off a state

    def step():
        xb, yb = data.train_batch(holder)
        xa, ya = data.val_batch(gen)
        w_opt.zero_grad()
        _, logits = net(xb)
        F.cross_entropy(logits, yb).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5)
        w_opt.step()
        a_opt.zero_grad()
        _, logits = net(xa)
        F.cross_entropy(logits, ya).backward()
        a_opt.step()

    net.train()
    for _ in range(3):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - t0


def worker(args) -> None:
    """One of K concurrent searches: build and capture its step, then count the steps it makes in
    each phase's window where it takes part (phase k: workers 0 .. k-1)."""
    device = torch.device(args.device)
    data = random_search_data(device, args.batch, 10**9)
    state = nb201_state(device, seed=args.worker_id)
    from pipeline_steps.supernet.captured_step import CapturedStep

    state.model.train()
    step = CapturedStep(state, "bilevel", "softmax", 5.0, OStrStatistics(), use_graph=True)
    for _ in range(6):  # warm-up and capture before the first window opens
        step(data.val_batch(state.generator), data.train_batch(state))
    sync(device)
    rates = {}
    for k, start in zip(args.phases, args.starts):
        if args.worker_id >= k:
            continue
        while time.time() < start:
            time.sleep(0.002)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.window:
            for _ in range(5):
                step(data.val_batch(state.generator), data.train_batch(state))
            sync(device)
            n += 5
        rates[k] = n / (time.perf_counter() - t0)
    print(json.dumps(rates))


def concurrent(args, phases: list[int]) -> dict[int, float]:
    """Total steps per second of k concurrent processes on one card, for each k in `phases`: the
    processes start once and take part in the windows in turn."""
    first = time.time() + args.startup
    starts = [first + i * (args.window + 1.5) for i in range(len(phases))]
    common = ["--phases", *map(str, phases), "--starts", *map(str, starts), "--window", str(args.window),
              "--device", args.device, "--batch", str(args.batch), "--threads", "1"]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker-id", str(i), *common], stdout=subprocess.PIPE,
                              text=True) for i in range(max(phases))]
    totals = {k: 0.0 for k in phases}
    for p in procs:
        out, _ = p.communicate()
        for k, rate in json.loads(out.strip().splitlines()[-1]).items():
            totals[int(k)] += rate
    return totals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=None, help="steps per timed epoch (default: a full epoch on CUDA, 4 on CPU)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--concurrent", default="", help="comma-separated K, e.g. 1,2,4,8 (CUDA)")
    p.add_argument("--window", type=float, default=5.0, help="seconds each concurrent measurement counts")
    p.add_argument("--startup", type=float, default=25.0, help="seconds the concurrent processes get to start")
    p.add_argument("--no-xautodl", action="store_true")
    p.add_argument("--no-compiled", action="store_true", help="leave out the compiled network (CUDA)")
    p.add_argument("--json", action="store_true", help="the rows as one JSON list (for bench/bench.py)")
    p.add_argument("--worker-id", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--phases", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    p.add_argument("--starts", type=float, nargs="*", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker_id is not None:
        worker(args)
        return
    device = torch.device(args.device)
    full = math.ceil(TRAIN_IMAGES / args.batch)
    steps = args.iters or (full if device.type == "cuda" else 4)
    # the captured step runs whole epochs on CUDA (the figure a search sees), capture included
    fast_steps = full if device.type == "cuda" else steps
    where = f"{device_name(device)}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    rows = []
    log(f"plain step, {steps} steps x 2 epochs on {where}")
    plain = time_epochs(device, "off", args.batch, steps)
    log(f"captured step ({'graph' if device.type == 'cuda' else 'eager'}), {fast_steps} steps x 2 epochs")
    fast = time_epochs(device, "graph", args.batch, fast_steps)
    compiled = None
    if device.type == "cuda" and not args.no_compiled:
        log(f"captured step with the network compiled (torch.compile), {fast_steps} steps x 2 epochs")
        compiled = time_epochs(device, "compiled", args.batch, fast_steps)
    xa = None if args.no_xautodl else time_xautodl(device, args.batch, steps)
    agree = {n: agreement(device, args.batch, n) for n in (1, 20)}
    per_epoch = lambda t: t / steps * full  # noqa: E731
    rows.append(("NB201 DARTS epoch, plain step", f"{per_epoch(plain[-1]):.2f} s", f"{plain[-1] / steps * 1e3:.2f} ms/step"))
    fast_step = fast[-1] / fast_steps
    rows.append(("NB201 DARTS epoch, captured step", f"{fast_step * full:.2f} s",
                 f"{fast_step * 1e3:.2f} ms/step; first epoch (with capture) {fast[0] / fast_steps * full:.2f} s"))
    if compiled is not None:
        rows.append(("NB201 DARTS epoch, captured step, network compiled", f"{compiled[-1] / fast_steps * full:.2f} s",
                     f"{compiled[-1] / fast_steps * 1e3:.2f} ms/step; first epoch (compiling, capture) "
                     f"{compiled[0] / fast_steps * full:.2f} s"))
    if xa is not None:
        rows.append(("NB201 DARTS epoch, xautodl DARTS-V1", f"{per_epoch(xa):.2f} s", f"{xa / steps * 1e3:.2f} ms/step"))
        best = fast_step if compiled is None else min(fast_step, compiled[-1] / fast_steps)
        rows.append(("speed-up over xautodl: plain / captured / fastest",
                     f"{xa / plain[-1]:.2f}x / {xa / steps / fast_step:.2f}x / {xa / steps / best:.2f}x",
                     "per step, same device, same run"))
    for n, (da, dw, dl) in agree.items():  # float32 rounding; Adam's g/sqrt(v) lets it grow over steps
        rows.append((f"captured vs plain after {n} step{'s' if n > 1 else ''} (float32)", f"max |d alpha| {da:.1e}",
                     f"max |d w| {dw:.1e}; |d train loss| {dl:.1e}"))
    rows.append(("captured / plain time per step", f"{fast_step / (plain[-1] / steps):.3f}", ""))
    phases = [int(v) for v in args.concurrent.split(",") if v]
    if phases:
        log(f"concurrent searches: {phases}")
        for k, rate in concurrent(args, phases).items():
            rows.append((f"{k} concurrent NB201 searches, captured", f"{rate:.1f} steps/s total",
                         f"{full / rate * k:.2f} s per epoch each; {rate * 3600 / (full * 50):.1f} 50-epoch searches/h"))
    if args.json:
        print(json.dumps({"where": where, "batch": args.batch, "rows": rows}))
        return
    print(f"\n{where}; batch {args.batch}; an epoch is {full} steps (25,000 D_tr images)\n")
    print("| measurement | value | detail |\n|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
