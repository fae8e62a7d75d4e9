"""MLflow tracking for stages: one MLflow run per stage, tied together by tags.

Parallel jobs share one SQLite file, which answers "database is locked" (or races on creating
the schema) under contention: every call is retried with jittered backoff.
"""
from __future__ import annotations

import fcntl
import json
import os
import random
import tempfile
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .errors import NasflowError

_TRANSIENT = ("database is locked", "already exists", "unique constraint", "could not obtain lock",
              "disk i/o error", "connection refused", "temporarily unavailable")


# A server that stops answering must not hold training up: MLflow's own HTTP retries are cut to a
# few short ones, and ours give up after RETRY_BUDGET_S in all.
RETRY_BUDGET_S = 60.0
SERVER_CHECK_TIMEOUT_S = 5.0
MLFLOW_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def _retry(fn: Callable[[], Any], attempts: int = 12, budget_s: float = RETRY_BUDGET_S) -> Any:
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
def _sqlite_init_lock(uri: str) -> Iterator[None]:
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


class Tracker:
    """No-op when tracking is disabled, so stages never branch on it. Runs not yet finished are
    listed in `Tracker.open`, so that a failing or stopped job can end them (`end_open_runs`)."""

    open: list["Tracker"] = []

    def __init__(self, tracking: dict, run_name: str, tags: dict[str, Any], run_id: str | None = None):
        self.enabled = bool(tracking.get("enabled"))
        self.run_id = run_id
        if not self.enabled:
            return
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for key, value in MLFLOW_HTTP_SETTINGS.items():
            os.environ.setdefault(key, value)
        if tracking["uri"].startswith(("http://", "https://")):
            check_server(tracking["uri"])
        from mlflow.tracking import MlflowClient

        with _sqlite_init_lock(tracking["uri"]):
            self.client = MlflowClient(tracking_uri=tracking["uri"])
            exp_id = _retry(lambda: self._experiment(tracking["experiment"], tracking.get("artifacts")))
        if run_id is None:
            run = _retry(lambda: self.client.create_run(exp_id, run_name=run_name,
                                                        tags={k: str(v) for k, v in tags.items()}))
            self.run_id = run.info.run_id
        else:  # resumed stage: keep logging into the same run
            _retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        Tracker.open.append(self)

    def _experiment(self, name: str, artifacts: str | None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(name, artifact_location=artifacts and f"{artifacts}/{name}")

    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled:
            from mlflow.entities import Param

            flat = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
            for i in range(0, len(flat), 100):
                _retry(lambda: self.client.log_batch(self.run_id, params=flat[i:i + 100]))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
            _retry(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_artifact(self, path: str | Path) -> None:
        if self.enabled:
            _retry(lambda: self.client.log_artifact(self.run_id, str(path)))

    def log_dict(self, obj: Any, name: str) -> None:
        if self.enabled:
            with tempfile.TemporaryDirectory() as d:
                p = Path(d) / name
                p.write_text(json.dumps(obj, indent=2, default=str))
                self.log_artifact(p)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled:
            for k, v in tags.items():
                _retry(lambda: self.client.set_tag(self.run_id, k, str(v)))

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            _retry(lambda: self.client.set_terminated(self.run_id, status=status))
            if self in Tracker.open:
                Tracker.open.remove(self)


def end_open_runs(status: str) -> None:
    """End every run this process left open (FAILED after an error, KILLED when stopped); a
    resumed stage reopens its run as RUNNING."""
    for tracker in list(Tracker.open):
        try:
            tracker.finish(status)
        except Exception:  # the tracking backend may be what failed
            Tracker.open.remove(tracker)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
