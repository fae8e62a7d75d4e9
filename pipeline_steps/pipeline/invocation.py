"""One parent MLflow run per Snakemake invocation; every stage run the invocation starts is its child
(tag `mlflow.parentRunId`), so four invocations show as four runs, each with its stages below it.

The main Snakemake creates the parent in its `onstart` hook, which Snakemake calls only when there
are jobs to run: a no-op or dry run never imports MLflow. Its id reaches the jobs in
NASFLOW_PARENT_RUN, which `Plan.runtime()` copies into their runtime (`tracking.parent_run_id`);
cluster jobs inherit it from the environment sbatch exports, and their own Snakemake (which sees the
variable set) creates none. No job creates a parent, so jobs that start at once cannot race, on
SQLite or on a server. `onsuccess` / `onerror` end the parent FINISHED or FAILED (KILLED when its
stages were stopped and none failed; its stage runs on this host still RUNNING then were killed
hard, and are ended KILLED). A parent left RUNNING by a Snakemake killed with SIGKILL is
ended KILLED, with its stage runs on this host that are still RUNNING, by the next invocation in the
same project on this host once no other Snakemake works there.
"""
from __future__ import annotations

import os
import socket
import sys
import time

from ..common.errors import NasflowError
from .tracking import PARENT_TAG, Tracker, retry

ENV = "NASFLOW_PARENT_RUN"
PROJECT_TAG = "nasflow.project"

_parent: list[Tracker] = []  # the parent this process created (ended by end_invocation)


def start_invocation(plan, main: bool) -> str | None:
    """Create this invocation's parent run and hand its id to the jobs; None when tracking is off or
    a Snakemake above this one (the cluster job's case) already made one."""
    from .plan import runtime_json

    runtime = plan.runtime()
    tracking = runtime["tracking"]
    if not tracking.get("enabled") or os.environ.get(ENV):
        return None
    project = str(plan.project_dir)
    tags = {"stage": "pipeline", "profile": runtime["profile"], "params_hash": runtime["config_hash"],
            "git_commit": runtime["git_commit"], PROJECT_TAG: project}
    name = f"pipeline {runtime['profile']} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    try:
        parent = Tracker({**tracking, "parent_run_id": None}, name, tags, source="snakemake")
        if main:
            _end_stale_invocations(parent, project)
        parent.log_params(plan.cfg)
    except NasflowError as err:
        raise SystemExit(f"nasflow: error: {err}") from None
    _parent.append(parent)
    os.environ[ENV] = parent.run_id
    os.environ["NASFLOW_RUNTIME"] = runtime_json(plan)  # now with tracking.parent_run_id
    print(f"nasflow: MLflow run {parent.run_name!r} ({parent.run_id}) holds this invocation's stages",
          file=sys.stderr)
    return parent.run_id


def end_invocation(succeeded: bool) -> None:
    """End the parent this process created: FINISHED, or FAILED / KILLED after what its stages did."""
    if not _parent:
        return
    parent = _parent.pop()
    status = "FINISHED"
    if not succeeded:
        client, host = parent.client, socket.gethostname()
        children = retry(lambda: client.search_runs(
            [parent.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.run_id}'", max_results=5000))
        ended = set()
        for child in children:
            # Snakemake has waited for its local jobs: one still RUNNING here was killed hard (SIGKILL)
            if child.info.status == "RUNNING" and child.data.tags.get("nasflow.host") == host:
                retry(lambda: client.set_terminated(child.info.run_id, status="KILLED"))
                ended.add("KILLED")
            else:
                ended.add(child.info.status)
        status = "KILLED" if "KILLED" in ended and "FAILED" not in ended else "FAILED"
    parent.finish(status)


def _end_stale_invocations(parent: Tracker, project: str) -> None:
    """Parents of this project and host still RUNNING belong to a Snakemake that was killed (the
    main invocation runs this only when no other Snakemake works in the project)."""
    from .snakemake_locks import other_snakemake_running
    from pathlib import Path

    if "'" in project or other_snakemake_running(Path(project)):
        return
    host = socket.gethostname()
    client, exp = parent.client, parent.experiment_id
    stale = retry(lambda: client.search_runs(
        [exp], f"tags.`{PROJECT_TAG}` = '{project}' AND tags.`nasflow.host` = '{host}' "
               "AND attributes.status = 'RUNNING'", max_results=1000))
    for run in stale:
        if run.info.run_id == parent.run_id:
            continue
        children = retry(lambda: client.search_runs(
            [exp], f"tags.`{PARENT_TAG}` = '{run.info.run_id}' AND attributes.status = 'RUNNING'", max_results=5000))
        for child in children:
            if child.data.tags.get("nasflow.host") == host:  # a cluster node's job may still run
                retry(lambda: client.set_terminated(child.info.run_id, status="KILLED"))
        retry(lambda: client.set_terminated(run.info.run_id, status="KILLED"))
