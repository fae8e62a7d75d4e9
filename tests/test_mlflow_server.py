"""MLflow structure against a real `mlflow server` on 127.0.0.1, read back through MlflowClient: stage
runs nest under their invocation's run with readable names unique among siblings, carry MLflow's
git tags (commit, dirty flag) and the data fingerprint as a dataset input; a stage that crashes
ends its run FAILED, one that is stopped KILLED, and its rerun resumes into a new run linked to it.

Starting a server on a fresh database runs every schema migration (half a minute or more on two
busy cores), so the whole file sits behind the e2e marker."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from project import ROOT, snakemake
from test_resume import tiny_plan
from test_shared_runs import mlflow_server, tiny_project  # noqa: F401  (the module-scoped server fixture)

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(mlflow_server):  # noqa: F811
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server)


@pytest.fixture
def plan(tiny_folder, mlflow_server, request, monkeypatch, tmp_path):  # noqa: F811
    """The tiny plan tracked on the server, in an experiment of its own; the environment the
    invocation hands to its jobs is restored afterwards."""
    from pipeline_steps.pipeline.plan import Plan

    for name in ("NASFLOW_PARENT_RUN", "NASFLOW_RUNTIME"):
        monkeypatch.setenv(name, "")  # recorded, so that what start_invocation sets is undone afterwards
        monkeypatch.delenv(name)
    p = tiny_plan(tiny_folder, epochs=2)
    cfg = {**p.cfg, "tracking": {**p.cfg["tracking"], "enabled": True, "uri": mlflow_server,
                                 "experiment": request.node.name}}
    shutil.copytree(ROOT / "params", tmp_path / "params")
    return Plan(cfg, tmp_path)  # its artifacts go to tmp_path/mlartifacts


def runs_of(client, name: str):
    return client.search_runs([client.get_experiment_by_name(name).experiment_id])


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def test_stage_runs_nest_under_the_invocation_with_names_git_tags_and_dataset(plan, client, tmp_path):
    from pipeline_steps.pipeline import stages
    from pipeline_steps.common.atomic import read_json
    from pipeline_steps.pipeline.invocation import end_invocation, start_invocation
    from pipeline_steps.pipeline.stage_run import run_name

    parent_id = start_invocation(plan, main=False)
    assert os.environ["NASFLOW_PARENT_RUN"] == parent_id
    runtime = json.loads(os.environ["NASFLOW_RUNTIME"])  # what the jobs read
    assert runtime["tracking"]["parent_run_id"] == parent_id
    sn_spec = plan.supernet_spec("darts_pt", "nb201", "cifar10", 0)
    sn = tmp_path / "supernet"
    stages.supernet(sn_spec, runtime, sn / "supernet.pt", sn / "metrics.json", sn / "history.json")
    derive_spec = plan.derive_spec("darts_pt", "nb201", "cifar10", 0)
    for _ in range(2):  # the second: the same stage again in the same invocation (a retry)
        stages.derive(derive_spec, runtime, sn / "supernet.pt", tmp_path / "arch.json")
    end_invocation(succeeded=True)

    runs = runs_of(client, plan.cfg["tracking"]["experiment"])
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("pipeline quick ")
    assert parent.data.params["search.epochs"] == "2"
    children = [r for r in runs if r.info.run_id != parent_id]
    assert len(children) == 3 and {r.data.tags["mlflow.parentRunId"] for r in children} == {parent_id}
    key = read_json(sn / "metrics.json")["key"]
    assert sorted(r.info.run_name for r in children) == [
        "darts_pt derive nb201/cifar10 seed0", "darts_pt derive nb201/cifar10 seed0 #2",
        f"supernet nb201/cifar10 seed0 {key}"]
    assert run_name(plan.method_stage_spec("darts_pt", "nb201", "cifar10", 0, "select")) == \
        "darts_pt select nb201/cifar10 seed0"
    assert {r.info.status for r in children} == {"FINISHED"}

    commit, dirty = git("rev-parse", "HEAD"), str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower()
    for run in [parent, *children]:
        tags = run.data.tags
        assert tags["mlflow.source.git.commit"] == commit and tags["mlflow.source.git.dirty"] == dirty
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"] and tags["mlflow.user"]

    (trained,) = [r for r in children if r.data.tags["stage"] == "supernet"]
    inputs = trained.inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == \
        [("cifar10", read_json(sn / "metrics.json")["data_fingerprint"])]
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    assert json.loads(inputs[0].dataset.source)["uri"] == plan.cfg["data"]["root"]


# A stage command whose second epoch fails (`error`) or is stopped by SIGTERM (`stop`).
CRASHING_STAGE = """
import os, signal, sys
from pipeline_steps.pipeline import cli, stage_run
real, calls = stage_run.train_epoch, []
def second_epoch_fails(*a, **kw):
    calls.append(1)
    if len(calls) == 2:
        if sys.argv[1] == "stop":
            os.kill(os.getpid(), signal.SIGTERM)
        raise RuntimeError("injected crash in epoch 2")
    return real(*a, **kw)
stage_run.train_epoch = second_epoch_fails
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("how, status", [("error", "FAILED"), ("stop", "KILLED")])
def test_a_crashed_stage_ends_its_run_and_the_rerun_links_to_it(plan, client, tmp_path, how, status):
    from pipeline_steps.pipeline import stages
    from pipeline_steps.pipeline.plan import spec_arg

    spec = plan.supernet_spec("darts", "nb201", "cifar10", 0)
    out = tmp_path / "supernet"
    runtime = plan.runtime()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NASFLOW_RUNTIME": json.dumps(runtime)}
    r = subprocess.run([sys.executable, "-c", CRASHING_STAGE, how, "--threads", "1", "supernet",
                        "--spec", spec_arg(spec), "--checkpoint", str(out / "supernet.pt"),
                        "--metrics", str(out / "metrics.json"), "--history", str(out / "history.json")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and (out / "resume.pt").exists(), r.stderr[-3000:]
    (crashed,) = runs_of(client, plan.cfg["tracking"]["experiment"])
    assert crashed.info.status == status, r.stderr[-3000:]
    assert crashed.info.run_name.startswith("supernet nb201/cifar10 seed0 ")
    assert [m.step for m in client.get_metric_history(crashed.info.run_id, "train_loss")] == [1]

    stages.supernet(spec, runtime, out / "supernet.pt", out / "metrics.json", out / "history.json")
    runs = runs_of(client, plan.cfg["tracking"]["experiment"])
    (rerun,) = [x for x in runs if x.info.run_id != crashed.info.run_id]
    assert rerun.data.tags["nasflow.resumed_from"] == crashed.info.run_id
    assert rerun.info.status == "FINISHED" and client.get_run(crashed.info.run_id).info.status == status
    assert rerun.info.run_name == crashed.info.run_name + " #2"  # both are top-level: no invocation
    # the resumed run holds the whole curve: epoch 1 from the checkpoint's history, then epoch 2
    assert [m.step for m in client.get_metric_history(rerun.info.run_id, "train_loss")] == [1, 2]


def test_snakemake_invocations_each_hold_their_stage_runs(tmp_path, tiny_folder, mlflow_server, client):  # noqa: F811
    """Two invocations through Snakemake, the second re-running only the report: two parent runs,
    every stage run under the first, the second report under the second, all names readable."""
    p = tiny_project(tmp_path / "project", tiny_folder)  # DARTS, two seeds
    config = ["--config", f"tracking={{uri: {mlflow_server}, experiment: invocations}}"]
    snakemake(*config, cwd=p)
    snakemake(*config, "--forcerun", "report", cwd=p)

    runs = runs_of(client, "invocations")
    parents = sorted((r for r in runs if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time)
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED"}
    assert all(r.info.run_name.startswith("pipeline quick ") for r in parents)
    assert len({r.info.run_name for r in parents}) == 2
    first, second = ([r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
                     for parent in parents)
    assert [r.info.run_name for r in second] == ["report quick nb201"]
    names = sorted(r.info.run_name for r in first)
    assert names[:5] == ["darts derive nb201/cifar10 seed0", "darts derive nb201/cifar10 seed1",
                         "darts lookup nb201/cifar10 seed0", "darts lookup nb201/cifar10 seed1", "report quick nb201"]
    assert names[5].startswith("supernet nb201/cifar10 seed0 ") and names[6].startswith("supernet nb201/cifar10 seed1 ")
    assert {r.info.status for r in first + second} == {"FINISHED"}
    artifacts = {f.path for f in client.list_artifacts(second[0].info.run_id)}
    assert {"REPORT.md", "REPORT.html", "nb201"} <= artifacts
    figures = {f.path for f in client.list_artifacts(second[0].info.run_id, "nb201/figures")}
    assert "nb201/figures/search_trajectory.png" in figures
