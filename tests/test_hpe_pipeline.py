"""HPE-DARTS as a pipeline method: its pruning stages in-process (decisions, resume), a bad prune
schedule rejected before anything runs, and Snakemake end to end on both spaces."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch
import yaml

from pipeline_steps.common.atomic import read_json
from pipeline_steps.common.errors import NasflowError
from pipeline_steps.methods import get_method
from pipeline_steps.pipeline import stages
from pipeline_steps.pipeline.config import load_params
from pipeline_steps.pipeline.plan import Plan
from pipeline_steps.spaces import get_space

from project import Crash, copy_project, crash_in_epoch, snakemake, tiny_params

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_HPE = {"warmup_epochs": 1, "prune_epochs": 2, "npp_batch": 16}


def tiny_plan(folder, **hpe) -> Plan:
    cfg = load_params("params", {
        "methods": ["hpe_darts"], "seeds": [0],
        "data": {"root": str(folder), "source": "folder", "download": False, "image_size": 8, "max_images": None},
        "search": {"batch_size": 16}, "space": {"nb201": {"channels": 4, "cells_per_stage": 1}},
        "tracking": {"enabled": False}, "device": "cpu", "method": {"hpe_darts": {**TINY_HPE, **hpe}}})
    return Plan(cfg)


def run_search(plan: Plan, root) -> list:
    """The warm-up supernet, then every pruning stage on the state the one before it left."""
    spec = plan.supernet_spec("hpe_darts", "nb201", "cifar10", 0)
    start = root / "supernet" / "supernet.pt"
    stages.supernet(spec, plan.runtime(), start, start.with_name("metrics.json"), start.with_name("history.json"))
    names = get_method("hpe_darts").stages(plan.cfg, "nb201")
    for name in names:
        out = root / name / "supernet.pt"
        stages.method_stage(plan.method_stage_spec("hpe_darts", "nb201", "cifar10", 0, name), plan.runtime(), start,
                            out, out.with_name("metrics.json"), out.with_name("history.json"))
        start = out
    return names


def test_pruning_stages_leave_one_op_per_edge_and_log_consistent_decisions(tiny_folder, tmp_path):
    plan = tiny_plan(tiny_folder)
    names = run_search(plan, tmp_path)
    assert names == ["prune1", "prune2"]
    final = torch.load(tmp_path / "prune2" / "supernet.pt", weights_only=False)
    assert final["mask"]["cell"].sum(dim=1).tolist() == [1] * 6
    assert final["epoch"] == 1 + 2 * 2

    mask = torch.ones(6, 5, dtype=torch.bool)      # NB201: every op alive after the warm-up
    for st, name in enumerate(names, start=1):
        decisions = read_json(tmp_path / name / "decisions.json")
        soft = [d for d in decisions if d["type"] == "soft_decay"]
        hard = [d for d in decisions if d["type"] == "hard_prune"]
        assert [d["epoch_in_stage"] for d in soft] == [0, 1] and len(hard) == 1
        assert {d["criterion"] for d in soft} == {"acc" if st == 1 else "npp"} and hard[0]["criterion"] == "npp"
        for d in soft:  # the decayed ops are the least important, scaled by 1 - i / E_prune
            factor = 1 - d["epoch_in_stage"] / 2
            for e, ops in enumerate(d["decayed"]["cell"]):
                assert len(ops) == 2
                assert_least_important(d["importance"]["cell"][e], mask[e], ops)
                for o in ops:
                    assert math.isclose(d["alpha_after"]["cell"][e][o], d["alpha_before"]["cell"][e][o] * factor,
                                        rel_tol=1e-6, abs_tol=1e-12)
        removed = hard[0]["removed"]["cell"]
        for e, ops in enumerate(removed):   # each hard-pruned op was among the least important then
            assert len(ops) == 2
            assert_least_important(hard[0]["importance"]["cell"][e], mask[e], ops)
            mask[e, ops] = False
        assert torch.equal(torch.tensor(hard[0]["mask_after"]["cell"], dtype=torch.bool), mask)
        history = read_json(tmp_path / name / "history.json")
        assert history[-1]["hard_pruned"]["cell"] == removed
        assert all(r["importance"]["cell"] for r in history if r.get("stage") == name)

    history = read_json(tmp_path / "prune2" / "history.json")
    derive_settings = plan.derive_spec("hpe_darts", "nb201", "cifar10", 0)["settings"]
    arch = get_method("hpe_darts").derive(get_space("nb201", plan.cfg["space"]["nb201"]), history[-1], derive_settings)
    survivors = [plan.cfg["space"]["nb201"]["op_order"][int(row.nonzero())] for row in mask]
    assert arch.replace("|", " ").replace("+", " ").split() == [f"{op}~{j}" for op, j in
                                                              zip(survivors, [0, 0, 1, 0, 1, 2])]


def assert_least_important(importance: list, alive: torch.Tensor, chosen: list[int]) -> None:
    kept = [o for o in range(len(alive)) if alive[o] and o not in chosen]
    assert all(importance[o] is not None for o in chosen)
    assert max(importance[o] for o in chosen) <= min(importance[o] for o in kept)


def test_a_pruning_stage_killed_mid_way_resumes_without_redoing_epochs(tiny_folder, tmp_path, monkeypatch):
    plan = tiny_plan(tiny_folder)
    spec = plan.supernet_spec("hpe_darts", "nb201", "cifar10", 0)
    start = tmp_path / "supernet" / "supernet.pt"
    stages.supernet(spec, plan.runtime(), start, start.with_name("metrics.json"), start.with_name("history.json"))
    stage_spec = plan.method_stage_spec("hpe_darts", "nb201", "cifar10", 0, "prune1")

    def prune1(out_dir):
        out = out_dir / "supernet.pt"
        stages.method_stage(stage_spec, plan.runtime(), start, out, out.with_name("metrics.json"),
                            out.with_name("history.json"))

    prune1(tmp_path / "straight")
    epochs = crash_in_epoch(monkeypatch, 2)
    with pytest.raises(Crash):
        prune1(tmp_path / "killed")
    prune1(tmp_path / "killed")
    assert epochs.calls == 3   # the rerun trained one epoch: the first was not trained again
    straight, killed = (read_json(tmp_path / d / "decisions.json") for d in ("straight", "killed"))
    assert [d["epoch"] for d in killed] == [d["epoch"] for d in straight] == [1, 2, 3]
    assert killed[-1]["removed"] == straight[-1]["removed"]


def test_a_bad_schedule_is_rejected_in_one_line_before_anything_runs(tiny_folder):
    for schedule, words in (([5, 3, 3, 1], "strictly decreasing"), ([4, 2, 1], "start the schedule at 5"),
                            ([5, 2], "must end at 1")):
        with pytest.raises(NasflowError) as err:
            tiny_plan(tiny_folder, schedule={"nb201": schedule, "darts": [8, 5, 3, 1]})
        message = str(err.value)
        assert "\n" not in message and message.startswith("method.hpe_darts.schedule.nb201") and words in message


# --------------------------------------------------------------------------- Snakemake end to end


@pytest.fixture(scope="module")
def hpe_project(tmp_path_factory, tiny_folder):
    p = copy_project(tmp_path_factory.mktemp("hpe_project"))
    tiny_params(p, tiny_folder)
    quick = p / "params" / "profiles" / "quick.yaml"
    q = yaml.safe_load(quick.read_text())
    q["method"]["hpe_darts"].update(warmup_epochs=1, prune_epochs=1, npp_batch=16)
    q["space"]["darts"].update(channels=4, layers=3)
    q["retrain"].update(epochs=1, layers=3, channels=4, cutout=2, batch_size=16)
    quick.write_text(yaml.safe_dump(q, sort_keys=False))
    return p


HPE_CONFIG = ("methods=[hpe_darts]", "seeds=[0]", "tracking={enabled: false}", "diagnostics={ranking: {enabled: false}}")


def test_bad_schedule_stops_snakemake_before_any_job(hpe_project):
    r = snakemake("-n", "--config", *HPE_CONFIG, "method={hpe_darts: {schedule: {nb201: [5, 2, 2, 1]}}}",
                  cwd=hpe_project, check=False)
    assert r.returncode != 0
    errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("nasflow: error:")]
    assert len(errors) == 1 and "method.hpe_darts.schedule.nb201" in errors[0]
    assert not (hpe_project / "results").exists()


@pytest.mark.e2e
def test_hpe_darts_end_to_end_on_both_spaces(hpe_project):
    t0 = time.perf_counter()
    snakemake("--config", *HPE_CONFIG, cwd=hpe_project)
    nb201_report = (hpe_project / "results" / "REPORT.md").read_text()
    # RobustDARTS S3 (none, skip, sep_conv_3x3 on every edge) and 80 images keep the DARTS space quick
    snakemake("--config", *HPE_CONFIG, "spaces=[darts]", "space={darts: {op_set: s3}}", "data={max_images: 80}",
              "method={hpe_darts: {schedule: {darts: [3, 1]}}}", cwd=hpe_project)
    print(f"HPE-DARTS tiny end to end (both spaces): {time.perf_counter() - t0:.1f} s")

    nb201 = hpe_project / "results" / "nb201" / "cifar10" / "seed0" / "hpe_darts"
    lookup = json.loads((nb201 / "lookup" / "result.json").read_text())
    assert lookup["method"] == "hpe_darts" and 0 <= lookup["cifar10_test_acc"] <= 100
    assert {"supernet", "prune1", "prune2", "derive"} <= set(lookup["wall_time_s"])
    assert all(lookup["wall_time_s"][s] > 0 for s in ("supernet", "prune1", "prune2"))
    derived = json.loads((nb201 / "derive" / "arch.json").read_text())
    assert [sum(row) for row in derived["mask"]["cell"]] == [1] * 6

    darts = hpe_project / "results" / "darts" / "cifar10" / "seed0" / "hpe_darts"
    assert (darts / "prune1" / "decisions.json").exists() and not (darts / "prune2").exists()
    derived = json.loads((darts / "derive" / "arch.json").read_text())
    for kind in ("normal", "reduce"):
        assert [sum(row) for row in derived["mask"][kind]] == [1] * 14
        assert len(derived["genotype"][kind]) == 8        # two inputs for each of 4 nodes
    retrained = json.loads((darts / "retrain" / "result.json").read_text())
    assert 0 <= retrained["test_acc"] <= 100 and {"supernet", "prune1", "retrain"} <= set(retrained["wall_time_s"])

    darts_report = (hpe_project / "results" / "REPORT.md").read_text()
    assert "## DARTS space" in darts_report
    rows = [line for report in (nb201_report, darts_report) for line in report.splitlines()
            if line.startswith("| HPE-DARTS | cifar10 | 1 |")]
    assert len(rows) == 2      # one per space, with its search cost in seconds of the device (`12.3 CPU-s`)
    assert all(float(row.split("|")[4].split()[0].replace(",", "")) >= 0 for row in rows)
