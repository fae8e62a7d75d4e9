"""What every Snakemake job pays before it computes: a fresh interpreter, torch, the stage modules,
and the MLflow run it logs to (each measured in fresh processes, median of a few).

Python reads compiled bytecode where the install wrote it (pip does; `uv pip install` only with
`--compile-bytecode`, and PYTHONDONTWRITEBYTECODE stops Python writing it later): without it every
job compiles torch's and MLflow's sources again, seconds per job, so the rows say which it was.
"""
from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iteration import ROOT, log

RUNS = 3
STEPS = {
    "interpreter": "pass",
    "+ torch": "import torch",
    "+ the stage modules": "import torch, pipeline_steps.pipeline.stages, pipeline_steps.methods",
    "+ an MLflow run (SQLite)": (
        "import torch, pipeline_steps.pipeline.stages, pipeline_steps.methods\n"
        "from pipeline_steps.pipeline.tracking import Tracker\n"
        "t = Tracker({'enabled': True, 'uri': URI, 'experiment': 'bench'}, 'bench', {'stage': 'bench'})\n"
        "t.finish()"),
}


def bytecode_present() -> bool:
    import torch

    return Path(importlib.util.cache_from_source(torch.__file__)).exists()


def seconds(code: str, env: dict) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def startup_rows(device: str) -> list[tuple]:
    rows = []
    has_mlflow = importlib.util.find_spec("mlflow") is not None  # a bare GPU machine's wheels leave it out
    with tempfile.TemporaryDirectory(prefix="nasflow-bench-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        env.pop("NASFLOW_PARENT_RUN", None)
        steps = {label: code.replace("URI", repr(uri)) for label, code in STEPS.items()}
        mlflow_step = "+ an MLflow run (SQLite)"
        if has_mlflow:  # the database exists before the timed runs, as in a pipeline after its first job
            subprocess.run([sys.executable, "-c", steps[mlflow_step]], cwd=ROOT, env=env, check=True,
                           capture_output=True)
        else:
            del steps[mlflow_step]
        note = "bytecode compiled" if bytecode_present() else "no compiled bytecode: sources compiled in every job"
        for label, code in steps.items():
            log(f"job start-up: {label}")
            rows.append((f"job start-up: {label}", device, f"{seconds(code, env):.3g}", "s",
                         f"fresh process, median of {RUNS}; {note}"))
    if not has_mlflow:
        rows.append((f"job start-up: {mlflow_step}", device, "-", "s", "skipped: MLflow not installed"))
    return rows
