"""Everything about a run that can be checked before a job starts: the parameter files, the
values, the data (found and identified), the benchmark file, the tracking backend and the results
folder. The Snakefile and `nasflow check-params` call `preflight`; a problem is one line naming
the bad value and its fix, and nothing has been written when it is reported."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..common.errors import NasflowError
from .config import load_params
from .plan import Plan


def preflight(project_dir: str | os.PathLike, overrides: dict | None = None) -> Plan:
    project = Path(project_dir).resolve()
    cfg = load_params(project / "params", overrides)
    plan = Plan(cfg, project)
    results = project / "results"
    if results.exists() and not results.is_dir():
        raise NasflowError(f"{results} is a file, but nasflow writes its results into that folder: "
                           "move the file away")
    for dataset in cfg["datasets"]:
        plan.data_id(dataset)  # a missing, incomplete or unreadable dataset stops the run here
    _check_benchmark(cfg)
    _check_tracking(plan)
    return plan


def preflight_or_exit(project_dir: str | os.PathLike, overrides: dict | None = None) -> Plan:
    """`preflight` for front ends: a problem ends the process with status 2 and one line."""
    try:
        return preflight(project_dir, overrides)
    except NasflowError as err:
        print(f"nasflow: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _check_benchmark(cfg: dict) -> None:
    if "nb201" not in cfg["spaces"] and not cfg["diagnostics"]["ranking"]["enabled"]:
        return
    source, path = cfg["benchmark"]["source"], cfg["benchmark"]["path"]
    if path is None:
        if source != "table":
            raise NasflowError(f"benchmark.source {source!r} needs benchmark.path (the NAS-Bench-201 .pth or NATS "
                               "folder) in params/local.yaml, or benchmark.source: table for the shipped table")
        return
    where = Path(path).expanduser()
    if not where.exists():
        raise NasflowError(f"benchmark.path {path!r} does not exist: fix it in params/local.yaml, or set it to "
                           "null for the shipped table")


def _check_tracking(plan: Plan) -> None:
    tracking = plan.runtime()["tracking"]
    if not tracking["enabled"]:
        return
    uri = tracking["uri"]
    if uri.startswith(("http://", "https://")):
        from .tracking_backend import check_server

        check_server(uri)
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if db.is_dir():
            raise NasflowError(f"tracking.uri {uri!r} names a folder, not a database file: "
                               "use sqlite:////abs/path/mlflow.db")
        if not db.parent.is_dir() or not os.access(db.parent, os.W_OK):
            raise NasflowError(f"tracking.uri {uri!r}: folder {db.parent} does not exist or is not writable; "
                               "create it or fix tracking.uri in params/local.yaml")
