"""Paper-profile NAS-Bench-201 searches through the normal Snakemake workflow, within a time budget.

    python -m pipeline_steps paper-run --methods ostr darts --seeds 0 1 2 --data /path/cifar10 --budget 3000

Runs Snakemake on the lookup results of the given methods and seeds (CIFAR-10, the paper profile,
`--jobs` searches at once on the GPU) and stops it when the budget is spent: Snakemake is
interrupted, which ends its jobs; finished stages are kept, and every training stage resumes from
its last finished epoch the next time the same command runs (the Snakefile clears the lock a
killed run left behind).
Exit status: 0 when every requested result exists, 3 when the budget ran out first (run again to
continue), anything else when Snakemake failed.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..common.errors import NasflowError
from .plan import LOOKUP_FILE

BUDGET_EXCEEDED = 3


def targets(methods: list[str], seeds: list[int], dataset: str = "cifar10") -> list[str]:
    return [LOOKUP_FILE.format(space="nb201", dataset=dataset, seed=s, method=m) for m in methods for s in seeds]


def snakemake_command(methods: list[str], seeds: list[int], data: str | None, profile: str, cores: int, jobs: int,
                      extra_config: list[str], tracking: bool) -> list[str]:
    config = [f"profile={profile}", f"methods=[{', '.join(methods)}]", f"seeds=[{', '.join(map(str, seeds))}]",
              "spaces=[nb201]", "datasets=[cifar10]"]
    if data:
        config.append(f"data={{root: {Path(data).resolve()}, source: auto, download: false}}")
    if not tracking:
        config.append("tracking={enabled: false}")
    return [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/default", "--cores", str(cores),
            "--resources", f"gpu={jobs}", "--config", *config, *extra_config, "--", *targets(methods, seeds)]


def _takes_interrupts() -> None:
    """In Snakemake's process, before it starts: Ctrl-C back to its default. A command started as
    a script's background job inherits SIGINT ignored, and the budget's stop would go unheard."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(proc: subprocess.Popen, grace_s: float = 60.0) -> None:
    """Interrupt Snakemake as Ctrl-C would (it ends its jobs and marks their outputs incomplete);
    kill the whole process group if it has not exited after `grace_s`."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=grace_s)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def paper_run(methods: list[str], seeds: list[int], budget_s: float | None, data: str | None = None,
              profile: str = "paper", cores: int | None = None, jobs: int = 1, extra_config: list[str] = (),
              project: Path = Path(".")) -> int:
    if not methods or not seeds:
        raise NasflowError("paper-run needs --methods and --seeds (e.g. --methods ostr darts --seeds 0 1 2)")
    if budget_s is not None and budget_s <= 0:
        raise NasflowError(f"--budget {budget_s}: give the seconds the run may take, e.g. --budget 3000")
    if data is not None and not (Path(data) / "train").is_dir() and not (Path(data) / "cifar-10-batches-py").is_dir():
        raise NasflowError(f"--data {data}: expected an image folder (train/<class>/*.jpg) or torchvision's "
                           "cifar-10-batches-py there")
    # a bare GPU machine may lack MLflow (2.5 s to import, so only looked up): results carry their provenance
    tracking = importlib.util.find_spec("mlflow") is not None
    if not tracking:
        print("paper-run: mlflow is not installed; tracking is off for this run", file=sys.stderr, flush=True)
    project = project.resolve()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = snakemake_command(methods, seeds, data, profile, cores or os.cpu_count() or 1, jobs, list(extra_config),
                            tracking)
    print("paper-run: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=project, env=env, start_new_session=True, preexec_fn=_takes_interrupts)
    try:
        proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        print(f"paper-run: budget of {budget_s:.0f} s spent; stopping (finished stages are kept, "
              "training stages resume from their last epoch)", file=sys.stderr, flush=True)
        stop(proc)
    except KeyboardInterrupt:
        stop(proc)
        raise
    done = [t for t in targets(methods, seeds) if (project / t).exists()]
    missing = [t for t in targets(methods, seeds) if t not in done]
    print(f"paper-run: {len(done)} of {len(done) + len(missing)} results in {time.monotonic() - t0:.0f} s",
          file=sys.stderr, flush=True)
    for t in missing:
        print(f"paper-run: pending {t}", file=sys.stderr)
    if not missing:
        return 0
    stopped = (None, -signal.SIGINT, 130, 1, -signal.SIGKILL)  # the last: it outlasted the grace time
    return BUDGET_EXCEEDED if proc.returncode in stopped and budget_s is not None \
        and time.monotonic() - t0 >= budget_s else (proc.returncode or 1)
