"""A training stage killed after k epochs resumes and ends exactly where an uninterrupted run ends;
DARTS-PT's selection does not redo the decisions it had finished."""
from __future__ import annotations

import pytest
import torch

from pipeline_steps.common.atomic import read_json
from pipeline_steps.methods.darts_pt import DartsPT
from pipeline_steps.pipeline import stage_run, stages
from pipeline_steps.pipeline.config import load_params
from pipeline_steps.pipeline.leftovers import finished_resume_files, remove_finished_resume_files
from pipeline_steps.pipeline.plan import Plan

from project import Crash, crash_in_epoch


def tiny_plan(folder, epochs=3) -> Plan:
    cfg = load_params("params", {
        "seeds": [0], "data": {"root": str(folder), "source": "folder", "download": False, "image_size": 8,
                               "max_images": None},
        "search": {"epochs": epochs, "batch_size": 16}, "space": {"nb201": {"channels": 4, "cells_per_stage": 1}},
        "tracking": {"enabled": False}, "device": "cpu", "method": {"darts_pt": {"proj_intv": 2}}})
    return Plan(cfg)


def run_stage(plan: Plan, out_dir):
    spec = plan.supernet_spec("darts", "nb201", "cifar10", 0)
    stages.supernet(spec, plan.runtime(), out_dir / "supernet.pt", out_dir / "metrics.json", out_dir / "history.json")


def test_resume_after_kill_equals_uninterrupted(tiny_folder, tmp_path, monkeypatch):
    plan = tiny_plan(tiny_folder)
    run_stage(plan, tmp_path / "straight")

    real_epoch = stage_run.train_epoch
    crash_in_epoch(monkeypatch, 3)  # killed mid-run: epochs 1-2 are checkpointed, epoch 3 is lost
    with pytest.raises(Crash):
        run_stage(plan, tmp_path / "killed")
    killed = tmp_path / "killed"
    assert (killed / "resume.pt").exists() and not (killed / "supernet.pt").exists()
    assert not (killed / "metrics.json").exists()  # no half-written outputs

    monkeypatch.setattr(stage_run, "train_epoch", real_epoch)
    run_stage(plan, killed)
    assert killed / "resume.pt" in finished_resume_files(tmp_path)  # kept until Snakemake has recorded the job

    a = torch.load(tmp_path / "straight" / "supernet.pt", weights_only=False)
    b = torch.load(killed / "supernet.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(a["alpha"]["cell"], b["alpha"]["cell"], rtol=0, atol=0)
    strip = lambda h: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in h]  # noqa: E731
    assert strip(read_json(tmp_path / "straight" / "history.json")) == strip(read_json(killed / "history.json"))


def test_outputs_deleted_after_finishing_come_back_without_training(tiny_folder, tmp_path, monkeypatch):
    """Snakemake killed after the stage wrote its outputs, before it recorded the job: the rerun
    deletes them as incomplete, and the stage finishes again from resume.pt without training."""
    plan = tiny_plan(tiny_folder, epochs=2)
    run_stage(plan, tmp_path)
    first = torch.load(tmp_path / "supernet.pt", weights_only=False)
    for name in ("supernet.pt", "metrics.json", "history.json"):
        (tmp_path / name).unlink()
    monkeypatch.setattr(stage_run, "train_epoch", lambda *a, **kw: pytest.fail("trained again"))
    run_stage(plan, tmp_path)
    again = torch.load(tmp_path / "supernet.pt", weights_only=False)
    for k in first["model"]:
        torch.testing.assert_close(first["model"][k], again["model"][k], rtol=0, atol=0, msg=k)
    assert read_json(tmp_path / "metrics.json")["epochs"] == 2
    assert remove_finished_resume_files(tmp_path) == 1 and not (tmp_path / "resume.pt").exists()


def test_resume_ignores_checkpoint_of_other_settings(tiny_folder, tmp_path):
    run_stage(tiny_plan(tiny_folder, epochs=1), tmp_path)
    (tmp_path / "supernet.pt").rename(tmp_path / "resume.pt")  # a finished 1-epoch run left behind
    run_stage(tiny_plan(tiny_folder, epochs=2), tmp_path)
    assert read_json(tmp_path / "metrics.json")["epochs"] == 2
    assert [r["epoch"] for r in read_json(tmp_path / "history.json")] == [1, 2]


def run_selection(plan: Plan, start, out_dir):
    spec = plan.method_stage_spec("darts_pt", "nb201", "cifar10", 0, "select")
    stages.method_stage(spec, plan.runtime(), start, out_dir / "supernet.pt", out_dir / "metrics.json",
                        out_dir / "history.json")


def test_pt_selection_resumes_without_redoing_decisions(tiny_folder, tmp_path, monkeypatch, one_thread):
    plan = tiny_plan(tiny_folder, epochs=1)
    run_stage(plan, tmp_path / "supernet")
    start = tmp_path / "supernet" / "supernet.pt"
    real_decide, decided = DartsPT.decide, []

    def counting_decide(self, state, val, t, s):
        decided.append(t)
        return real_decide(self, state, val, t, s)

    monkeypatch.setattr(DartsPT, "decide", counting_decide)
    run_selection(plan, start, tmp_path / "straight")
    # proj_intv 2, 6 edges: 10 tuning epochs, decisions at the start of epochs 0, 2, 4, 6, 8 and 9
    assert decided == [0, 2, 4, 6, 8, 9]

    real_epoch = stage_run.train_epoch
    decided.clear()
    crash_in_epoch(monkeypatch, 4)
    with pytest.raises(Crash):
        run_selection(plan, start, tmp_path / "killed")
    assert decided == [0, 2] and not (tmp_path / "killed" / "supernet.pt").exists()
    decided.clear()
    monkeypatch.setattr(stage_run, "train_epoch", real_epoch)
    run_selection(plan, start, tmp_path / "killed")
    assert decided == [4, 6, 8, 9]  # the decisions before the kill are not redone
    straight = read_json(tmp_path / "straight" / "decisions.json")
    assert read_json(tmp_path / "killed" / "decisions.json") == straight
    assert len(straight) == 6 and all(len(d["table"]) == 5 for d in straight)
    a = torch.load(tmp_path / "straight" / "supernet.pt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "supernet.pt", weights_only=False)
    assert torch.equal(a["mask"]["cell"], b["mask"]["cell"]) and int(a["mask"]["cell"].sum()) == 6
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
