"""Failures a careful user runs into: an unreachable tracking server stops a stage within seconds
with one line; tracking URIs that cannot work are refused before anything runs; a damaged resume
checkpoint is set aside and the stage starts from its last good state."""
from __future__ import annotations

import socket
import time

import pytest
import torch

from pipeline_steps.config import load_params
from pipeline_steps.errors import NasflowError
from pipeline_steps.tracking import SERVER_CHECK_TIMEOUT_S, Tracker


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
    assert (out / "resume.pt.damaged").exists() and not (out / "resume.pt").exists()
    a = torch.load(tmp_path / "straight" / "supernet.pt", weights_only=False)
    b = torch.load(out / "supernet.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k])


def test_a_damaged_final_checkpoint_is_set_aside_for_rebuilding(tiny_folder, tmp_path):
    from test_resume import tiny_plan

    from pipeline_steps.plan import Plan
    from pipeline_steps.checkpoints import load_checkpoint

    plan = tiny_plan(tiny_folder)
    plan = Plan({**plan.cfg, "methods": ["darts"]}, tmp_path)
    d = tmp_path / plan.supernet_dir("darts", "nb201", "cifar10", 0)
    d.mkdir(parents=True)
    (d / "supernet.pt").write_bytes(b"")  # empty: the copy was cut off
    assert plan.set_aside_damaged_checkpoints() == [str((d / "supernet.pt.damaged").relative_to(tmp_path))]
    assert not (d / "supernet.pt").exists()
    (d / "supernet.pt").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: readable, but no checkpoint
    with pytest.raises(NasflowError, match="is damaged") as err:
        load_checkpoint(d / "supernet.pt")
    assert "\n" not in str(err.value) and "run the same command again" in str(err.value)
