"""The quick workflow with what a team shares: an MLflow server that parallel jobs log to, a DVC
remote that a fresh clone pulls from, and a training job killed mid-epoch whose re-run ends
exactly where an uninterrupted run ends."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from project import BIN, ROOT, copy_project, jobs_to_run, sh, snakemake, tiny_params

pytestmark = pytest.mark.e2e  # Snakemake end-to-end: `python -m pytest -m e2e`

SERVER_START_S = 240  # creating a fresh tracking database runs every schema migration
STAGES = ["derive", "derive", "lookup", "lookup", "report", "supernet", "supernet"]
PIPELINE_TAGS = ("stage", "params_hash", "git_commit", "profile")  # on every run: what ties one pipeline run
RUN_TAGS = ("method", "space", "dataset", "seed", "stage_key")  # on every run of one seed's stage


def tiny_project(dest: Path, data: Path) -> Path:
    """The tiny parameters on the baseline method without the ranking diagnostic (the stage
    mechanics), with three epochs so that a kill after epoch 1 lands mid-run."""
    p = copy_project(dest)
    tiny_params(p, data)
    base = p / "params" / "nasflow.yaml"
    cfg = yaml.safe_load(base.read_text())
    cfg["methods"] = ["darts"]
    cfg["diagnostics"]["ranking"]["enabled"] = False
    base.write_text(yaml.safe_dump(cfg, sort_keys=False))
    quick = p / "params" / "profiles" / "quick.yaml"
    q = yaml.safe_load(quick.read_text())
    q["search"]["epochs"] = 3
    quick.write_text(yaml.safe_dump(q, sort_keys=False))
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job runner
    with open(d / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{d / 'server.db'}", "--artifacts-destination", str(d / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until_up(server, uri, d / "server.log")
        yield uri
    finally:
        # the server and its workers share the session it was started in
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(server.pid, sig)
            except ProcessLookupError:
                break
            try:
                server.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue


def wait_until_up(server: subprocess.Popen, uri: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            state = f"exited {server.returncode}" if server.poll() is not None else f"not up after {SERVER_START_S} s"
            pytest.fail(f"mlflow server {state}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_folder, mlflow_server) -> Path:
    """The quick workflow, two jobs at a time (default profile), tracked on the server."""
    p = tiny_project(tmp_path_factory.mktemp("served"), tiny_folder)
    snakemake("--config", f"tracking={{uri: {mlflow_server}}}", cwd=p)
    return p


def test_server_holds_every_stage_tied_together(served, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    everything = client.search_runs([client.get_experiment_by_name("nasflow").experiment_id])
    (parent,) = [r for r in everything if r.data.tags["stage"] == "pipeline"]  # the invocation's run
    runs = [r for r in everything if r is not parent]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert sorted(r.data.tags["stage"] for r in runs) == STAGES
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        wanted = PIPELINE_TAGS + (RUN_TAGS if run.data.tags["stage"] != "report" else ())
        assert set(wanted) <= set(run.data.tags), run.data.tags
    for tag in PIPELINE_TAGS[1:]:
        assert len({r.data.tags[tag] for r in runs}) == 1, tag
    assert not (served / "mlflow.db").exists()  # nothing went to the local SQLite file

    supernets = sorted((r for r in runs if r.data.tags["stage"] == "supernet"), key=lambda r: r.data.tags["seed"])
    a, b = supernets
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time, "the two jobs did not overlap"
    for run in supernets:
        assert run.data.params["search.epochs"] == "3" and run.data.params["seed"] == run.data.tags["seed"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
        assert {"alpha.json", "arch.json"} <= {f.path for f in client.list_artifacts(run.info.run_id)}

    for run in (r for r in runs if r.data.tags["stage"] == "lookup"):
        result = json.loads((served / "results" / "nb201" / "cifar10" / f"seed{run.data.tags['seed']}" / "darts"
                             / "lookup" / "result.json").read_text())
        assert run.data.metrics["cifar10_test_acc"] == pytest.approx(result["cifar10_test_acc"])
        assert run.data.tags["arch"] == result["arch_str"]
    derive = next(r for r in runs if r.data.tags["stage"] == "derive")
    local = Path(client.download_artifacts(derive.info.run_id, "arch.json", str(tmp_path)))
    arch = json.loads((served / "results" / "nb201" / "cifar10" / f"seed{derive.data.tags['seed']}" / "darts"
                       / "derive" / "arch.json").read_text())
    assert json.loads(local.read_text())["arch"] == arch["arch"]


# ----------------------------------------------------------------------------- interrupted runs
def descendants(pid: int) -> list[int]:
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def training_process(snakemake_pid: int, checkpoint: str) -> int | None:
    """The python process of the stage that writes `checkpoint` (not the shell around it)."""
    for pid in descendants(snakemake_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if Path(argv[0]).name.startswith("python") and "--checkpoint" in argv \
                and argv[argv.index("--checkpoint") + 1] == checkpoint:
            return pid
    return None


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "wall_time_s"} for record in history]


def same_supernet(a: Path, b: Path) -> None:
    x, y = torch.load(a / "supernet.pt", weights_only=False), torch.load(b / "supernet.pt", weights_only=False)
    assert x["epoch"] == y["epoch"] == 3
    for k in x["model"]:
        torch.testing.assert_close(x["model"][k], y["model"][k], rtol=0, atol=0, msg=k)
    for k in x["alpha"]:
        torch.testing.assert_close(x["alpha"][k], y["alpha"][k], rtol=0, atol=0, msg=k)
    assert without_times(json.loads((a / "history.json").read_text())) == \
        without_times(json.loads((b / "history.json").read_text()))


def test_job_killed_mid_epoch_reruns_to_the_uninterrupted_result(served, tmp_path, tiny_folder):
    p = tiny_project(tmp_path / "killed", tiny_folder)
    reference = {s.parts[-3]: s for s in (served / "results" / "nb201" / "cifar10").glob("seed*/supernet/*")}
    targets = [str((d / "supernet.pt").relative_to(served)) for d in reference.values()]
    victim = p / reference["seed0"].relative_to(served)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(p)}
    env.pop("NASFLOW_RUNTIME", None)
    # both seeds train side by side, logging to the default SQLite file
    with open(tmp_path / "killed.log", "w") as log:
        run = subprocess.Popen([sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/default", *targets],
                               cwd=p, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline, killed = time.monotonic() + 300, None
            while killed is None and run.poll() is None and time.monotonic() < deadline:
                if (victim / "resume.pt").exists():  # epoch 1 is checkpointed, epoch 2 is running
                    killed = training_process(run.pid, str(victim.relative_to(p) / "supernet.pt"))
                    if killed:
                        os.kill(killed, signal.SIGKILL)
                time.sleep(0.02)
            run.wait(timeout=300)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
    out = (tmp_path / "killed.log").read_text()
    assert killed, f"the seed0 training job was never seen in epoch 2:\n{out[-3000:]}"
    assert run.returncode != 0 and "Error in rule supernet" in out, out[-3000:]
    # Snakemake dropped the failed job's outputs (there are none: stages write atomically) and
    # left the stage's own checkpoint; the job beside it finished
    assert (victim / "resume.pt").exists()
    assert not any((victim / f).exists() for f in ("supernet.pt", "metrics.json", "history.json"))
    assert (p / reference["seed1"].relative_to(served) / "supernet.pt").exists()

    rerun = snakemake(*targets, cwd=p)
    assert jobs_to_run(rerun) == {"supernet": 1}
    resumed = re.findall(r"resuming .* after epoch (\d+)", (victim / "log.txt").read_text())
    assert resumed in (["1"], ["2"]), resumed  # mid-run, not from scratch
    for ref in reference.values():
        same_supernet(ref, p / ref.relative_to(served))
    assert not (victim / "resume.pt").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{p / 'mlflow.db'}")
    everything = client.search_runs([client.get_experiment_by_name("nasflow").experiment_id])
    assert sorted(r.info.status for r in everything if r.data.tags["stage"] == "pipeline") == ["FINISHED", "KILLED"]
    runs = [r for r in everything if r.data.tags["stage"] == "supernet"]
    # the killed job's run ended KILLED; the rerun resumed into a new run linked to it
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "0", "1"]
    (killed_run,) = [r for r in runs if r.info.status == "KILLED"]
    finished = [r for r in runs if r is not killed_run]
    assert {r.info.status for r in finished} == {"FINISHED"}
    assert [r.data.tags.get("nasflow.resumed_from") for r in finished if r.data.tags["seed"] == "0"] == \
        [killed_run.info.run_id]
    for r in finished:
        assert sorted({m.step for m in client.get_metric_history(r.info.run_id, "train_loss")}) == [1, 2, 3]


def test_snakemake_group_killed_mid_epoch_the_same_command_resumes(served, tmp_path, tiny_folder):
    """SIGKILL of Snakemake and every job it started: its lock stays behind, yet the same command
    runs again, resumes the stage mid-run and ends where an uninterrupted run ends."""
    p = tiny_project(tmp_path / "group", tiny_folder)
    reference = {s.parts[-3]: s for s in (served / "results" / "nb201" / "cifar10").glob("seed*/supernet/*")}
    victim = p / reference["seed0"].relative_to(served)
    cmd = [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/default", "--config",
           "tracking={enabled: false}"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(p)}
    env.pop("NASFLOW_RUNTIME", None)
    with open(tmp_path / "group.log", "w") as log:
        run = subprocess.Popen(cmd, cwd=p, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not (victim / "resume.pt").exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert (victim / "resume.pt").exists(), (tmp_path / "group.log").read_text()[-3000:]
    assert list((p / ".snakemake" / "locks").glob("*.lock"))  # what a SIGKILL leaves

    rerun = sh(*cmd, cwd=p)
    assert "cleared the lock a killed Snakemake left behind" in rerun.stderr
    resumed = re.findall(r"resuming .* after epoch (\d+)", (victim / "log.txt").read_text())
    assert resumed and int(resumed[0]) >= 1, resumed  # mid-run, not from scratch
    for ref in reference.values():
        same_supernet(ref, p / ref.relative_to(served))
    assert not list((p / "results").rglob("resume.pt")) and not list((p / "results").rglob(".*.tmp"))


# ----------------------------------------------------------------------------- DVC remote
def git(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return sh("git", "-c", "user.name=nasflow", "-c", "user.email=nasflow@localhost", "-c", "init.defaultBranch=main",
              *args, cwd=cwd)


def test_fresh_clone_pulls_results_and_has_nothing_to_do(served, tmp_path):
    shutil.copy2(ROOT / ".gitignore", served / ".gitignore")
    git("init", "-q", cwd=served)
    sh("dvc", "init", "-q", cwd=served)
    sh("dvc", "commit", "-f", cwd=served)  # records the run Snakemake made (test_pipeline.py covers `dvc repro`)
    sh("dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=served)
    git("add", "-A", cwd=served)
    git("commit", "-q", "-m", "quick run", cwd=served)
    sh("dvc", "push", cwd=served)

    clone = tmp_path / "clone"
    git("clone", "-q", str(served), str(clone), cwd=tmp_path)
    assert not (clone / "results" / "nb201").exists()  # git holds no results, only DVC's pointers
    assert not (clone / "params" / "local.yaml").exists()  # machine settings stay on their machine
    data = shutil.copytree(yaml.safe_load((served / "params" / "local.yaml").read_text())["data"]["root"],
                           tmp_path / "other-disk" / "cifar10", ignore=shutil.ignore_patterns(".nasflow-cache"))
    (clone / "params" / "local.yaml").write_text(yaml.safe_dump(
        {"device": "cpu", "data": {"root": str(data), "source": "folder", "download": False}}))
    sh("dvc", "pull", cwd=clone)
    for f in (served / "results" / "nb201").rglob("*"):
        if f.is_file() and f.name != "resume.pt":
            assert (clone / f.relative_to(served)).read_bytes() == f.read_bytes(), f
    assert jobs_to_run(snakemake("-n", cwd=clone)) == {}

    # the report lost in the clone: `dvc repro` makes it again, running only the report
    (clone / "results" / "REPORT.md").unlink()
    again = sh("dvc", "repro", cwd=clone)
    assert jobs_to_run(again) == {"report": 1, "all": 1}
    assert (clone / "results" / "REPORT.md").exists()
    assert (clone / "metrics.json").read_text() == (served / "metrics.json").read_text()
    assert "didn't change" in sh("dvc", "repro", cwd=clone).stdout  # and then it is current
