#!/usr/bin/env python
"""Speed and memory of the search: an NB201 DARTS epoch beside xautodl's, one iteration of every
supernet, DARTS-PT / OStr / P(a) costs, P(a) over the NB201 space, an SE-NAS shrink stage, HEP-NAS's
SMD step, job start-up, and the quick pipeline end to end.

    python bench/bench.py [--device cpu|cuda|auto] [--skip-pipeline] [--skip-epoch] [--no-xautodl]
                          [--iters N] [--data DIR]

Prints one Markdown table to stdout (each row names the device and torch it ran on) and progress to
stderr. Each measurement runs in a fresh child process, so that its peak memory (ru_maxrss is a
per-process high-water mark) is its own. The modules beside this file hold the measurements.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/: the measurement modules

from children import children_rows, measure_children  # noqa: E402
from hep_smd import measure_smd, smd_rows  # noqa: E402
from iteration import BATCH, SUPERNETS, measure, selection_rows, supernet_rows  # noqa: E402
from pipeline_timing import pipeline_rows  # noqa: E402
from startup import startup_rows  # noqa: E402

TIMEOUT_S = 6 * 3600  # a CPU-only DARTS measurement or a pipeline with a large dataset takes a while


def run_child(kind: str, device: str, iters: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", kind, device, str(iters)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=TIMEOUT_S)
    if r.returncode != 0:
        raise SystemExit(f"bench: measuring {kind} on {device} failed (exit {r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- main

def device_label(device: str) -> str:
    """Which device and torch a row ran on ("cpu, torch ..." / "cuda (card), torch ...")."""
    name = f"cuda ({torch.cuda.get_device_name(0)})" if device == "cuda" else "cpu"
    return f"{name}, torch {torch.__version__}"


def epoch_rows(device: str, xautodl: bool, iters: int | None) -> list[tuple]:
    """bench/step_speed.py: an NB201 DARTS epoch, plain / captured / xautodl side by side, and on CUDA
    K concurrent searches per card."""
    cmd = [sys.executable, str(HERE / "step_speed.py"), "--device", device, "--json"]
    cmd += ["--concurrent", "1,2,4,8"] if device == "cuda" else ["--threads", "2"]
    cmd += ["--iters", str(iters or (4 if device == "cpu" else 391))]  # plain and xautodl steps timed per epoch
    if not xautodl:
        cmd.append("--no-xautodl")
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=TIMEOUT_S)
    if r.returncode != 0:
        raise SystemExit(f"bench: bench/step_speed.py on {device} failed (exit {r.returncode})")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return [(what, device_label(device), value, "", f"{detail}; {out['where']}; batch {out['batch']}".lstrip("; "))
            for what, value, detail in out["rows"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                   help="auto (default): CPU, and CUDA too when available")
    p.add_argument("--skip-pipeline", action="store_true", help="leave out the quick pipeline end to end")
    p.add_argument("--skip-epoch", action="store_true", help="leave out bench/step_speed.py's epoch rows")
    p.add_argument("--no-xautodl", action="store_true", help="leave out xautodl's search model")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default: 5 on CPU, 50 on GPU)")
    p.add_argument("--data", default=None, help="image folder (train/<class>/*) for the pipeline run")
    p.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        kind, device, iters = args._child
        if kind == "children":
            result = measure_children(device)
        elif kind.startswith("smd-"):
            result = measure_smd(kind[4:], device)
        else:
            result = measure(kind, device, int(iters))
        print(json.dumps(result))
        return

    has_cuda = torch.cuda.is_available()
    if args.device == "cuda" and not has_cuda:
        raise SystemExit("bench: --device cuda asked for but CUDA is not available")
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "auto": ["cpu"] + (["cuda"] if has_cuda else [])}[args.device]
    print("| measurement | device | value | unit | notes |")
    print("| --- | --- | --- | --- | --- |", flush=True)
    for device in devices:
        label = device_label(device)
        iters = args.iters or (50 if device == "cuda" else 5)
        if not args.skip_epoch:
            emit(label, "NB201 DARTS epoch beside xautodl", lambda: epoch_rows(device, not args.no_xautodl, args.iters))
        emit(label, "DARTS iterations of every supernet", lambda: iteration_rows(device, label, iters))
        emit(label, "P(a) and SE-NAS", lambda: children_rows(label, run_child("children", device, iters)))
        for space_name in ("nb201", "darts"):
            emit(label, f"HEP-NAS SMD ({space_name})",
                 lambda: smd_rows(space_name, label, run_child(f"smd-{space_name}", device, iters)))
    if not has_cuda:
        emit("cuda", "", lambda: [("every row above on CUDA", "cuda", "-", "-", "skipped: CUDA not available (pending a GPU)")])
    emit(device_label("cpu"), "job start-up", lambda: startup_rows(device_label("cpu")))
    if args.skip_pipeline:
        emit("-", "", lambda: [("pipeline end to end / no-op / dry run", "-", "-", "-", "skipped (--skip-pipeline)")])
    else:
        device = "cuda" if args.device != "cpu" and has_cuda else "cpu"
        emit(device_label(device), "the pipeline", lambda: pipeline_rows(args.device, args.data, device_label(device)))


def iteration_rows(device: str, label: str, iters: int) -> list[tuple]:
    results = {kind: run_child(kind, device, iters) for kind in SUPERNETS}
    rows = [("data batch: DeviceImages.batch, augmented", label, f"{results['nb201']['batch'] * 1e3:.3g}",
             "ms/batch", f"random crop + flip + normalise of {BATCH} images of 32 px, on the device (median)")]
    for kind, m in results.items():
        rows += supernet_rows(kind, label, m)
    return rows + selection_rows(label, results["nb201"])


def emit(label: str, what: str, measure) -> None:
    """Print a group's rows as soon as they are measured; a group that fails is one row saying so
    and the others still run (a GPU window is too short to lose the table to one failure)."""
    try:
        rows = measure()
    except (Exception, SystemExit) as e:  # run_child and epoch_rows exit with a message
        rows = [(what, label, "-", "-", f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")]
    for row in rows:
        print("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |", flush=True)


if __name__ == "__main__":
    main()
