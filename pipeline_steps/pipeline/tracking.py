"""MLflow tracking for stages: one run per stage, nested under one parent run per Snakemake
invocation (invocation.py), with a readable name unique among its siblings
("darts_pt select nb201/cifar10 seed0"), MLflow's source/git tags (commit and dirty flag), and the
data it trained on as a dataset input whose digest is the data fingerprint.

A stage that fails ends its run FAILED, one that is stopped (SIGTERM, Ctrl-C) KILLED; a run still
open when the process exits otherwise is ended FAILED. A stage that resumes from its checkpoint
starts a new run in the current invocation, tagged `nasflow.resumed_from` with the run it continues
(which is ended KILLED if a hard kill left it RUNNING); the resumed training stage re-logs the
metrics of its finished epochs, so its run holds the whole curve. Stage commands run outside
Snakemake log top-level runs (no parent), unless NASFLOW_PARENT_RUN names one.
"""
from __future__ import annotations

import atexit
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from .tracking_backend import (PARENT_TAG, SERVER_CHECK_TIMEOUT_S, check_server, connect, retry, source_tags,
                               unique_name)  # noqa: F401

RESUMED_FROM_TAG = "nasflow.resumed_from"


class Tracker:
    """No-op when tracking is disabled, so stages never branch on it. Runs not yet finished are
    listed in `Tracker.open`, so that a failing or stopped job can end them (`end_open_runs`).
    `previous_run`: the run of this stage that a resumed checkpoint names; `source`: the entry point
    shown as the run's source (default `pipeline_steps <stage>`)."""

    open: list["Tracker"] = []

    def __init__(self, tracking: dict, run_name: str, tags: dict[str, Any], previous_run: str | None = None,
                 source: str | None = None):
        self.enabled = bool(tracking.get("enabled"))
        self.run_id: str | None = None
        self.run_name = run_name
        if not self.enabled:
            return
        self.client, self.experiment_id = connect(tracking)
        exp_id, parent = self.experiment_id, tracking.get("parent_run_id")
        all_tags = {**source_tags(source or f"pipeline_steps {tags.get('stage', run_name)}"),
                    **{k: str(v) for k, v in tags.items()}}
        if parent:
            all_tags[PARENT_TAG] = parent
        if previous_run:
            all_tags[RESUMED_FROM_TAG] = previous_run
            self._end_if_running(previous_run, "KILLED")  # a hard kill (SIGKILL, OOM) could not end it
        self.run_name = unique_name(self.client, exp_id, run_name, parent)
        run = retry(lambda: self.client.create_run(exp_id, run_name=self.run_name, tags=all_tags))
        self.run_id = run.info.run_id
        Tracker.open.append(self)

    def _end_if_running(self, run_id: str, status: str) -> None:
        try:
            run = retry(lambda: self.client.get_run(run_id))
        except Exception:  # another store, or deleted: nothing to end
            return
        if run.info.status == "RUNNING":
            retry(lambda: self.client.set_terminated(run_id, status=status))

    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled:
            from mlflow.entities import Param

            flat = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
            for i in range(0, len(flat), 100):
                retry(lambda: self.client.log_batch(self.run_id, params=flat[i:i + 100]))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
            retry(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_dataset(self, name: str, digest: str, source: str, context: str, profile: dict | None = None) -> None:
        """The data a stage read, as an MLflow dataset input: `digest` is the data fingerprint (a hash
        of the pixels and labels), `source` where it was read from, `context` e.g. training."""
        if self.enabled:
            from mlflow.entities import Dataset, DatasetInput, InputTag

            ds = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}),
                         profile=json.dumps(profile) if profile else None)
            inp = DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)])
            retry(lambda: self.client.log_inputs(self.run_id, datasets=[inp]))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_dict(self, obj: Any, name: str) -> None:
        if self.enabled:
            with tempfile.TemporaryDirectory() as d:
                p = Path(d) / name
                p.write_text(json.dumps(obj, indent=2, default=str))
                self.log_artifact(p)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled:
            for k, v in tags.items():
                retry(lambda: self.client.set_tag(self.run_id, k, str(v)))

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            retry(lambda: self.client.set_terminated(self.run_id, status=status))
            if self in Tracker.open:
                Tracker.open.remove(self)


def end_open_runs(status: str) -> None:
    """End every run this process left open (FAILED after an error, KILLED when stopped)."""
    for tracker in list(Tracker.open):
        try:
            tracker.finish(status)
        except Exception:  # the tracking backend may be what failed
            if tracker in Tracker.open:
                Tracker.open.remove(tracker)


# Whatever way a stage ends without finishing its run (an error the command line did not catch,
# sys.exit), the run must not stay RUNNING. Stops are ended KILLED before this runs.
atexit.register(end_open_runs, "FAILED")


def log_report(runtime: dict, spec: dict, results_dir: Path, files: list[Path]) -> None:
    """The report stage's run: REPORT.md, REPORT.html and the figures, each under its path relative
    to the results directory, so that the report's links to its figures hold in the artifact store."""
    tracker = Tracker(runtime["tracking"], f"report {spec['profile']} {' '.join(spec['spaces'])}",
                      {"stage": "report", "params_hash": runtime["config_hash"], "git_commit": runtime["git_commit"],
                       "profile": spec["profile"]})
    root = Path(results_dir).resolve()
    for path in files:
        folder = Path(path).resolve().parent
        tracker.log_artifact(path, str(folder.relative_to(root)) if folder != root and folder.is_relative_to(root)
                             else None)
    tracker.finish()


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
