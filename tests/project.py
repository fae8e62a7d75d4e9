"""Helpers shared by the tests: a copy of the project with tiny parameters, Snakemake/DVC invoked
the way a user would, and a stage killed in its N-th epoch."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ["Snakefile", "dvc.yaml", ".dvcignore", "workflow", "params", "pipeline_steps", "ledger"]


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def tiny_params(project: Path, data_root: Path) -> None:
    local = {"device": "cpu", "data": {"root": str(data_root), "source": "folder", "download": False}}
    (project / "params" / "local.yaml").write_text(yaml.safe_dump(local, sort_keys=False))
    quick = project / "params" / "profiles" / "quick.yaml"
    q = yaml.safe_load(quick.read_text())
    q["search"].update(epochs=2, batch_size=16)
    q["data"].update(image_size=8, max_images=None)
    q["space"]["nb201"].update(channels=4, cells_per_stage=1)
    quick.write_text(yaml.safe_dump(q, sort_keys=False))


def sh(*cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd)}
    for name in ("NASFLOW_RUNTIME", "NASFLOW_PARENT_RUN"):  # an invocation's, not the user's
        env.pop(name, None)
    r = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def snakemake(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/default", *args, cwd=cwd, check=check)


def jobs_to_run(dry_run: subprocess.CompletedProcess) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table from a dry run."""
    out = dry_run.stdout + dry_run.stderr
    if "Nothing to be done" in out:
        return {}
    counts, in_table = {}, False
    for line in out.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] != "total":
                    counts[parts[0]] = int(parts[1])
            elif parts and not set(line.strip()) <= {"-", " "}:
                break
    return counts


class Crash(Exception):
    """A job killed mid-stage: the epochs before it are checkpointed, the one it hits is lost."""


class EpochCounter:
    """Stands in for the stage runner's `train_epoch`: counts the calls, and the `crash_at`-th raises Crash."""

    def __init__(self, real, crash_at: int):
        self.real, self.crash_at, self.calls = real, crash_at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash
        return self.real(*args, **kwargs)


def crash_in_epoch(monkeypatch, n: int) -> EpochCounter:
    """Kill this test's stages in their n-th trained epoch (counted over every stage run from here on)."""
    from pipeline_steps.pipeline import stage_run

    counter = EpochCounter(stage_run.train_epoch, n)
    monkeypatch.setattr(stage_run, "train_epoch", counter)
    return counter
