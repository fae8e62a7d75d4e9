"""A supernet stage killed after k epochs resumes and ends exactly where an uninterrupted run ends."""
from __future__ import annotations

import pytest
import torch

from pipeline_steps import stages
from pipeline_steps.atomic import read_json
from pipeline_steps.config import load_params
from pipeline_steps.plan import Plan


def tiny_plan(folder, epochs=3) -> Plan:
    cfg = load_params("params", {
        "seeds": [0], "data": {"root": str(folder), "source": "folder", "download": False, "image_size": 8,
                               "max_images": None},
        "search": {"epochs": epochs, "batch_size": 16}, "space": {"nb201": {"channels": 4, "cells_per_stage": 1}},
        "tracking": {"enabled": False}, "device": "cpu"})
    return Plan(cfg)


def run_stage(plan: Plan, out_dir):
    spec = plan.supernet_spec("darts", "nb201", "cifar10", 0)
    stages.supernet(spec, plan.runtime(), out_dir / "supernet.pt", out_dir / "metrics.json", out_dir / "history.json")


class Crash(Exception):
    pass


def test_resume_after_kill_equals_uninterrupted(tiny_folder, tmp_path, monkeypatch):
    plan = tiny_plan(tiny_folder)
    run_stage(plan, tmp_path / "straight")

    real_epoch = stages.train_epoch
    calls = {"n": 0}

    def dies_in_third_epoch(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash  # killed mid-run: epochs 1-2 are checkpointed, epoch 3 is lost
        return real_epoch(*a, **kw)

    monkeypatch.setattr(stages, "train_epoch", dies_in_third_epoch)
    with pytest.raises(Crash):
        run_stage(plan, tmp_path / "killed")
    killed = tmp_path / "killed"
    assert (killed / "resume.pt").exists() and not (killed / "supernet.pt").exists()
    assert not (killed / "metrics.json").exists()  # no half-written outputs

    monkeypatch.setattr(stages, "train_epoch", real_epoch)
    run_stage(plan, killed)
    assert not (killed / "resume.pt").exists()

    a = torch.load(tmp_path / "straight" / "supernet.pt", weights_only=False)
    b = torch.load(killed / "supernet.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(a["alpha"]["cell"], b["alpha"]["cell"], rtol=0, atol=0)
    strip = lambda h: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in h]  # noqa: E731
    assert strip(read_json(tmp_path / "straight" / "history.json")) == strip(read_json(killed / "history.json"))


def test_resume_ignores_checkpoint_of_other_settings(tiny_folder, tmp_path):
    run_stage(tiny_plan(tiny_folder, epochs=1), tmp_path)
    (tmp_path / "supernet.pt").rename(tmp_path / "resume.pt")  # a finished 1-epoch run left behind
    run_stage(tiny_plan(tiny_folder, epochs=2), tmp_path)
    assert read_json(tmp_path / "metrics.json")["epochs"] == 2
    assert [r["epoch"] for r in read_json(tmp_path / "history.json")] == [1, 2]
