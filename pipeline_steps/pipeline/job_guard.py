"""A stage job that outlives its Snakemake stops itself, and a stage that fails or is stopped ends
its MLflow run FAILED or KILLED instead of leaving it RUNNING.

Snakemake runs each job as `shell -> python -m pipeline_steps ...`; when Snakemake is SIGKILLed the
job would train on unattended (and overlap the rerun). `watch_snakemake` polls the nearest
Snakemake ancestor and, once it is gone, sends this process SIGTERM, which `stop_on_sigterm` turns
into `StageStopped`: the stage unwinds, its last finished epoch stays in resume.pt."""
from __future__ import annotations

import os
import signal
import sys
import threading

from .snakemake_locks import ancestors, proc_stat, runs_snakemake

POLL_S = 5.0


class StageStopped(BaseException):
    """SIGTERM (Snakemake stopping its jobs, SLURM preemption, a lost parent)."""


def snakemake_ancestor() -> tuple[int, str] | None:
    """(pid, start time) of this process's nearest ancestor that runs Snakemake."""
    for pid in ancestors(os.getppid()):
        if runs_snakemake(pid):
            st = proc_stat(pid)
            return None if st is None else (pid, st[1])
    return None


def watch_snakemake(poll_s: float = POLL_S, on_gone=None) -> threading.Thread | None:
    """Start a daemon thread that calls `on_gone` (default: SIGTERM to this process) once the
    Snakemake that started this job has exited; None when no Snakemake ancestor is found."""
    parent = snakemake_ancestor()
    if parent is None:
        return None
    pid, started = parent

    def gone() -> None:
        print(f"nasflow: the Snakemake process that started this job ({pid}) is gone; stopping "
              "(finished epochs are kept)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    on_gone = on_gone or gone

    def loop() -> None:
        while True:
            st = proc_stat(pid)
            if st is None or st[1] != started:
                on_gone()
                return
            threading.Event().wait(poll_s)

    thread = threading.Thread(target=loop, name="snakemake-watch", daemon=True)
    thread.start()
    return thread


def stop_on_sigterm() -> None:
    def handler(signum, frame):
        raise StageStopped(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
