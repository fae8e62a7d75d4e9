"""Talking to the MLflow store: retries under SQLite contention, a server check that fails within
seconds, the standard source/git tags, and run names unique among their siblings.

Parallel jobs share one SQLite file, which answers "database is locked" (or races on creating
the schema) under contention: every call is retried with jittered backoff.
"""
from __future__ import annotations

import fcntl
import functools
import getpass
import os
import random
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..common.errors import NasflowError

_TRANSIENT = ("database is locked", "already exists", "unique constraint", "could not obtain lock",
              "disk i/o error", "connection refused", "temporarily unavailable")

# A server that stops answering must not hold training up: MLflow's own HTTP retries are cut to a
# few short ones, and ours give up after RETRY_BUDGET_S in all.
RETRY_BUDGET_S = 60.0
SERVER_CHECK_TIMEOUT_S = 5.0
MLFLOW_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}

PARENT_TAG = "mlflow.parentRunId"
HOST_TAG = "nasflow.host"


def retry(fn: Callable[[], Any], attempts: int = 12, budget_s: float = RETRY_BUDGET_S) -> Any:
    start = time.monotonic()
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # mlflow wraps sqlite errors in several exception types
            if (i == attempts - 1 or time.monotonic() - start > budget_s
                    or not any(t in str(e).lower() for t in _TRANSIENT)):
                raise
            time.sleep(min(5.0, 0.1 * 2 ** i) * (0.5 + random.random()))


def check_server(uri: str, timeout_s: float = SERVER_CHECK_TIMEOUT_S) -> None:
    """An MLflow server must answer its /health within `timeout_s`, else the stage stops at once
    with one line (rather than after MLflow's retries of many minutes)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            r.read(64)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise NasflowError(f"tracking server {uri} did not answer within {timeout_s:.0f} s ({reason}); start it, "
                           "fix tracking.uri, or set tracking.enabled: false") from None


@contextmanager
def sqlite_init_lock(uri: str) -> Iterator[None]:
    """MLflow creates and migrates a new SQLite schema on first use; two jobs doing it at once
    corrupt the version table. Serialise that first contact with a lock file beside the DB."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def connect(tracking: dict):
    """(client, experiment id) for the `tracking` settings; a server must answer first."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for key, value in MLFLOW_HTTP_SETTINGS.items():
        os.environ.setdefault(key, value)
    if tracking["uri"].startswith(("http://", "https://")):
        check_server(tracking["uri"])
    from mlflow.tracking import MlflowClient

    with sqlite_init_lock(tracking["uri"]):
        client = MlflowClient(tracking_uri=tracking["uri"])
        exp_id = retry(lambda: _experiment(client, tracking["experiment"], tracking.get("artifacts")))
    return client, exp_id


def _experiment(client, name: str, artifacts: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifacts and f"{artifacts}/{name}")


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def git_tags(repo: Path = Path(__file__).resolve().parents[2]) -> dict[str, str]:
    """MLflow's standard git tags for the code this process runs: full commit, branch, remote, and
    whether tracked files differ from that commit (untracked files do not count, as in MLflow).
    Outside a git checkout NASFLOW_GIT_COMMIT names the commit, and the dirty flag is left out."""
    commit = _git(repo, "rev-parse", "HEAD")
    if commit is None:
        named = os.environ.get("NASFLOW_GIT_COMMIT")
        return {"mlflow.source.git.commit": named} if named else {}
    tags = {"mlflow.source.git.commit": commit,
            "mlflow.source.git.dirty": str(bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))).lower()}
    branch = _git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    url = _git(repo, "remote", "get-url", "origin")
    if url:
        tags["mlflow.source.git.repoURL"] = url
    return tags


def source_tags(entry: str) -> dict[str, str]:
    """The tags MLflow's fluent API sets on a run (source, user, git), for client-created runs."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"mlflow.source.type": "LOCAL", "mlflow.source.name": entry, "mlflow.user": user,
            HOST_TAG: socket.gethostname(), **git_tags()}


def unique_name(client, exp_id: str, name: str, parent: str | None) -> str:
    """`name`, or `name #2`, `#3`, ... when a sibling run (same parent; top-level runs for none)
    already has it: a stage retried within one invocation, or a stage run twice by hand."""
    pattern = name.replace("'", "") + "%"
    runs = retry(lambda: client.search_runs([exp_id], f"attributes.run_name LIKE '{pattern}'", max_results=5000))
    taken = {r.info.run_name for r in runs if r.data.tags.get(PARENT_TAG) == parent}
    if name not in taken:
        return name
    n = 2
    while f"{name} #{n}" in taken:
        n += 1
    return f"{name} #{n}"
