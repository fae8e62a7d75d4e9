"""Failures a careful user runs into: an unreachable tracking server stops a stage within seconds
with one line; tracking URIs that cannot work are refused before anything runs; a damaged resume
checkpoint is set aside and the stage starts from its last good state."""
from __future__ import annotations

import socket
import time

import pytest
import torch

from pipeline_steps.common.errors import NasflowError
from pipeline_steps.pipeline.config import load_params
from pipeline_steps.pipeline.tracking import SERVER_CHECK_TIMEOUT_S, Tracker


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


def test_unreachable_tracking_server_fails_fast_with_one_line():
    uri = f"http://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(NasflowError) as err:
        Tracker({"enabled": True, "uri": uri, "experiment": "x"}, "run", {})
    assert time.monotonic() - t0 < SERVER_CHECK_TIMEOUT_S + 5
    assert uri in str(err.value) and "\n" not in str(err.value) and "tracking.enabled: false" in str(err.value)


@pytest.mark.parametrize("uri", ["foo://bar", "sqlite:///relative.db", "file:relative/dir", "mlruns", 5])
def test_tracking_uris_that_cannot_work_are_refused_before_anything_runs(uri):
    with pytest.raises(NasflowError, match="tracking.uri") as err:
        load_params("params", {"tracking": {"uri": uri}})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("uri", ["sqlite:////tmp/x.db", "http://host:5000", "https://h/mlflow", "file:///tmp/mlruns"])
def test_tracking_uris_that_work_are_accepted(uri):
    assert load_params("params", {"tracking": {"uri": uri}})["tracking"]["uri"] == uri


def test_a_damaged_resume_checkpoint_is_set_aside_and_the_stage_restarts(tiny_folder, tmp_path, capsys):
    from test_resume import run_stage, tiny_plan

    plan = tiny_plan(tiny_folder, epochs=2)
    run_stage(plan, tmp_path / "straight")
    out = tmp_path / "damaged"
    out.mkdir()
    (out / "resume.pt").write_bytes(b"PK\x03\x04 truncated")  # a kill while it was written
    run_stage(plan, out)
    assert "resume.pt is damaged" in capsys.readouterr().err
    assert (out / "resume.pt.damaged").read_bytes() == b"PK\x03\x04 truncated"
    assert torch.load(out / "resume.pt", weights_only=False)["epoch"] == 2  # the good one the stage wrote after
    a = torch.load(tmp_path / "straight" / "supernet.pt", weights_only=False)
    b = torch.load(out / "supernet.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k])


def test_damaged_final_outputs_are_set_aside_for_rebuilding(tiny_folder, tmp_path):
    from test_resume import tiny_plan

    from pipeline_steps.pipeline.plan import Plan
    from pipeline_steps.common.checkpoints import load_checkpoint

    plan = tiny_plan(tiny_folder)
    plan = Plan({**plan.cfg, "methods": ["darts"]}, tmp_path)
    d = tmp_path / plan.supernet_dir("darts", "nb201", "cifar10", 0)
    d.mkdir(parents=True)
    (d / "supernet.pt").write_bytes(b"")  # empty: the copy was cut off
    (d / "history.json").write_text('[{"epoch": 1, "train_lo')  # cut off too
    (d / "metrics.json").write_text('{"epochs": 1}')  # whole: stays
    assert plan.set_aside_damaged_outputs() == [str((d / f"{n}.damaged").relative_to(tmp_path))
                                                for n in ("supernet.pt", "history.json")]
    assert not (d / "supernet.pt").exists() and (d / "metrics.json").exists()
    (d / "supernet.pt").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: readable, but no checkpoint
    with pytest.raises(NasflowError, match="is damaged") as err:
        load_checkpoint(d / "supernet.pt")
    assert "\n" not in str(err.value) and "run the same command again" in str(err.value)


# A stand-in for Snakemake (its command line names it) that starts a job and reports the job's pid.
FAKE_SNAKEMAKE = """
import subprocess, sys, time  # snakemake
job = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stderr=open(sys.argv[2], "w"))
print(job.pid, flush=True)
time.sleep(3600)
"""
JOB = """
import time
from pipeline_steps.pipeline.job_guard import stop_on_sigterm, watch_snakemake, StageStopped
stop_on_sigterm()
assert watch_snakemake(poll_s=0.2) is not None
try:
    time.sleep(60)
except StageStopped:
    raise SystemExit(143)
"""


def test_a_job_whose_snakemake_died_stops_itself(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    log = tmp_path / "job.err"
    parent = subprocess.Popen([sys.executable, "-c", FAKE_SNAKEMAKE, JOB, str(log)], stdout=subprocess.PIPE,
                              text=True, env=env)
    job = int(parent.stdout.readline())
    time.sleep(2)  # the job's imports and its first poll
    assert Path(f"/proc/{job}").exists(), log.read_text()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{job}").exists() and time.monotonic() < deadline:
        try:  # reap it if it is ours; it was re-parented when the stand-in died
            os.waitpid(job, os.WNOHANG)
        except ChildProcessError:
            pass
        if (Path(f"/proc/{job}/stat").exists() and Path(f"/proc/{job}/stat").read_text().split(")")[1].split()[0] == "Z"):
            break
        time.sleep(0.2)
    alive = Path(f"/proc/{job}").exists() and Path(f"/proc/{job}/stat").read_text().split(")")[1].split()[0] != "Z"
    assert not alive, "the job ran on after its Snakemake died"
    assert "is gone; stopping" in log.read_text()


def test_a_stopped_or_failed_stage_ends_its_tracking_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline_steps.pipeline.tracking import Tracker, end_open_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed = Tracker({"enabled": True, "uri": uri, "experiment": "x"}, "stopped", {})
    end_open_runs("KILLED")
    failed = Tracker({"enabled": True, "uri": uri, "experiment": "x"}, "failed", {})
    end_open_runs("FAILED")
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(killed.run_id).info.status == "KILLED"
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert Tracker.open == []


def test_the_budget_stops_snakemake_even_where_paper_run_was_started_with_ctrl_c_ignored(tmp_path, monkeypatch):
    """A script's background job inherits SIGINT ignored; the Snakemake it starts must still stop."""
    import signal
    import sys

    from pipeline_steps.pipeline import paper_run

    snakemake = [sys.executable, "-c", "import time; time.sleep(120)"]  # stands in for a long search
    monkeypatch.setattr(paper_run, "snakemake_command", lambda *a, **kw: snakemake)
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        t0 = time.monotonic()
        status = paper_run.paper_run(["darts"], [0], budget_s=1.0, project=tmp_path)
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert status == paper_run.BUDGET_EXCEEDED
    assert time.monotonic() - t0 < 20      # stopped by the interrupt, not by the kill after the grace time

