"""Multi-GPU workstation: with `--resources gpu=K` Snakemake runs up to K GPU jobs at once and
never sets CUDA_VISIBLE_DEVICES, so each job claims a card itself (pipeline_steps/common/device.py).
Fake cards: torch.cuda is made to report K devices in the job processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest

from pipeline_steps.common import device
from pipeline_steps.common.errors import NasflowError

from project import copy_project, sh

# A GPU job: claims a card the way a stage does, holds it a while, records what it held and when.
GPU_JOB = """
import json, os, sys, time
import torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: int(os.environ["FAKE_GPUS"])
from pipeline_steps.common.device import resolve_device
card = resolve_device("auto")
start = time.time()
time.sleep(float(os.environ["HOLD_S"]))
json.dump({"card": card.index, "start": start, "end": time.time()}, open(sys.argv[1], "w"))
"""

SNAKEFILE = """
rule all:
    input: expand("claims/{i}.json", i=range(int(config["jobs"])))

rule gpu_job:
    output: "claims/{i}.json"
    resources: gpu=1
    shell: "python gpu_job.py {output}"
"""

# Claims one of the given cards, says which, then holds it until killed (or exits at once).
CLAIMER = """
import sys, time
from pipeline_steps.common.device import claim_free_gpu
cards = sys.argv[1].split(",")
slots = int(sys.argv[4]) if len(sys.argv) > 4 else 1
print(claim_free_gpu(cards, wait_s=float(sys.argv[2]), poll_s=0.1, slots=slots), time.time(), flush=True)
if sys.argv[3] == "hold":
    time.sleep(3600)
"""


@pytest.fixture
def lock_env(tmp_path, monkeypatch) -> dict:
    locks = tmp_path / "locks"
    monkeypatch.setenv("NASFLOW_GPU_LOCK_DIR", str(locks))
    return {**os.environ, "NASFLOW_GPU_LOCK_DIR": str(locks)}


@pytest.mark.e2e
def test_concurrent_gpu_jobs_hold_distinct_cards(tmp_path, lock_env, monkeypatch):
    cards, jobs = 2, 3
    p = copy_project(tmp_path / "ws")
    (p / "gpu_job.py").write_text(GPU_JOB)
    (p / "gpu.smk").write_text(SNAKEFILE)
    monkeypatch.setenv("FAKE_GPUS", str(cards))
    monkeypatch.setenv("HOLD_S", "5")  # longer than the spread of the jobs' start-up
    sh(sys.executable, "-m", "snakemake", "-s", "gpu.smk", "--cores", str(jobs), "--resources", f"gpu={cards}",
       "--config", f"jobs={jobs}", cwd=p)
    claims = [json.loads((p / "claims" / f"{i}.json").read_text()) for i in range(jobs)]
    assert {c["card"] for c in claims} == set(range(cards))
    overlapping = [(a, b) for a, b in combinations(claims, 2) if a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlapping, "the GPU jobs never ran side by side"
    for a, b in overlapping:
        assert a["card"] != b["card"], f"two running jobs shared card {a['card']}"
    # Snakemake kept to K GPU jobs although it had cores for all of them
    for t in (c["start"] + 0.01 for c in claims):
        assert sum(c["start"] <= t < c["end"] for c in claims) <= cards
    # three jobs on two cards: cards were released when their jobs exited and claimed again
    assert max(sum(c["card"] == k for c in claims) for k in range(cards)) >= 2


def start_claimer(cards: str, hold: bool, wait_s: float, env: dict, slots: int = 1) -> subprocess.Popen:
    package_root = str(Path(device.__file__).parents[1])
    return subprocess.Popen([sys.executable, "-c", CLAIMER, cards, str(wait_s), "hold" if hold else "go", str(slots)],
                            stdout=subprocess.PIPE, text=True, env={**env, "PYTHONPATH": package_root})


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def claimed(proc: subprocess.Popen) -> tuple[int, float]:
    card, at = proc.stdout.readline().split()
    return int(card), float(at)


def test_a_crashed_job_releases_its_card_and_a_busy_card_is_never_shared(lock_env):
    holders = [start_claimer("a,b", True, 60, lock_env) for _ in range(2)]
    waiter = None
    try:
        cards = [claimed(h)[0] for h in holders]
        assert sorted(cards) == [0, 1]
        # every card is busy: a third job waits instead of doubling up
        with pytest.raises(NasflowError, match="locks in"):
            device.claim_free_gpu(["a", "b"], wait_s=0.3, poll_s=0.1)
        waiter = start_claimer("a,b", False, 60, lock_env)
        time.sleep(4)  # long enough for its imports and several polls
        assert waiter.poll() is None, "claimed a card that another job holds"
        crashed = holders[1]
        killed_at = time.time()
        crashed.kill()  # SIGKILL: no cleanup code runs, the kernel drops the flock
        card, at = claimed(waiter)
        assert card == cards[1] and at >= killed_at
        assert waiter.wait(timeout=30) == 0
    finally:
        stop_all(holders + ([waiter] if waiter else []))


def test_card_names_survive_cuda_visible_devices_renumbering(monkeypatch):
    # a user who narrows the cards with CUDA_VISIBLE_DEVICES still gets one lock per physical card
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert device.card_ids(2) == ["3", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert device.card_ids(2) == ["0", "1"]


def test_k_slots_per_card_the_next_job_waits_and_a_crash_frees_a_slot(lock_env):
    """gpu_slots: 3 lets three jobs share the one fake card; a fourth waits until one of them dies."""
    holders = [start_claimer("a", True, 60, lock_env, slots=3) for _ in range(3)]
    waiter = None
    try:
        assert [claimed(h)[0] for h in holders] == [0, 0, 0]
        with pytest.raises(NasflowError, match="3 slots"):
            device.claim_free_gpu(["a"], wait_s=0.3, poll_s=0.1, slots=3)
        waiter = start_claimer("a", False, 60, lock_env, slots=3)
        time.sleep(4)
        assert waiter.poll() is None, "a fourth job took a slot of a card with three"
        killed_at = time.time()
        holders[1].kill()
        card, at = claimed(waiter)
        assert card == 0 and at >= killed_at
        assert waiter.wait(timeout=30) == 0
    finally:
        stop_all(holders + ([waiter] if waiter else []))


def test_slots_fill_every_card_before_doubling_up(lock_env):
    holders = [start_claimer("a,b", True, 60, lock_env, slots=2) for _ in range(3)]
    try:
        cards = sorted(claimed(h)[0] for h in holders)
        assert cards in ([0, 0, 1], [0, 1, 1]) and set(cards) == {0, 1}
    finally:
        stop_all(holders)
