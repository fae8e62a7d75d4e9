"""HEP-NAS as a pipeline method: each hierarchy is a cached stage whose mask keeps one group per
split edge and whose survivor is the best-validation child; a kill inside a hierarchy's SMD
training resumes without redoing the hierarchies before it and ends where an uninterrupted run
ends; Snakemake runs the method end to end on both spaces."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from project import copy_project, snakemake, tiny_params

from pipeline_steps.common.atomic import read_json
from pipeline_steps.methods import get_method, hep_nas
from pipeline_steps.pipeline import stages
from pipeline_steps.pipeline.config import load_params
from pipeline_steps.pipeline.plan import Plan

pytestmark = pytest.mark.usefixtures("one_thread")
HEP = get_method("hep_nas")


def tiny_plan(folder) -> Plan:
    cfg = load_params("params", {
        "seeds": [0], "methods": ["hep_nas"], "tracking": {"enabled": False}, "device": "cpu",
        "data": {"root": str(folder), "source": "folder", "download": False, "image_size": 8, "max_images": 64},
        "search": {"batch_size": 16}, "space": {"nb201": {"channels": 4, "cells_per_stage": 1}},
        "method": {"hep_nas": {"split_epochs": {"nb201": [2, 3, 4]}, "alpha_warmup": {"nb201": 1},
                               "smd_epochs": 2, "gm_repeats": 2, "hierarchies": 2,
                               "guidance": "previous"}}})  # siblings' forward passes: the slow part on a CPU
    return Plan(cfg)


def run_method(plan: Plan, root) -> None:
    """The supernet and every hierarchy in order; a stage whose output exists is skipped, as Snakemake does."""
    runtime, sn = plan.runtime(), root / "supernet"
    if not (sn / "supernet.pt").exists():
        sn.mkdir(parents=True, exist_ok=True)
        stages.supernet(plan.supernet_spec("hep_nas", "nb201", "cifar10", 0), runtime, sn / "supernet.pt",
                        sn / "metrics.json", sn / "history.json")
    start = sn / "supernet.pt"
    for stage in HEP.stages(plan.cfg, "nb201"):
        out = root / stage
        if not (out / "supernet.pt").exists():
            out.mkdir(parents=True, exist_ok=True)
            stages.method_stage(plan.method_stage_spec("hep_nas", "nb201", "cifar10", 0, stage), runtime, start,
                                out / "supernet.pt", out / "metrics.json", out / "history.json")
        start = out / "supernet.pt"


@pytest.fixture(scope="module")
def straight(tiny_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("hep_straight")
    run_method(tiny_plan(tiny_folder), root)
    return root


def test_each_split_edge_keeps_one_group_and_the_best_child_survives(straight):
    final = torch.load(straight / "h2" / "supernet.pt", weights_only=False)
    mask = final["mask"]["cell"]
    split_edges = []
    for k, stage in enumerate(("h1", "h2")):
        log = read_json(straight / stage / "hierarchy.json")
        parts = [p for p in log["partition"] if p["split"]]
        assert [p["edge"] for p in parts] == [[0], [1, 2]][k]  # h_k: the incoming edges of node k
        for p in parts:
            kept = torch.nonzero(mask[p["edge"]]).flatten().tolist()
            assert kept in [sorted(g) for g in p["groups"]]           # exactly one of its two groups
            assert sorted(p["groups"][0] + p["groups"][1]) == list(range(5))
            assert len(p["distance"]) == 5
        assert len(log["children"]) == 2 ** len(parts)
        last = [c["val_acc"][-1] for c in log["children"]]
        assert all(len(c["val_acc"]) == 2 for c in log["children"])   # logged after every SMD epoch
        assert log["chosen"] == last.index(max(last))                  # the first best-validation child
        split_edges += [p["edge"] for p in parts]
        stage_state = torch.load(straight / stage / "supernet.pt", weights_only=False)
        chosen_mask = torch.tensor(log["children"][log["chosen"]]["mask"]["cell"], dtype=torch.bool)
        assert torch.equal(stage_state["mask"]["cell"], chosen_mask)
    assert split_edges == [0, 1, 2] and mask[3:].all()                # edges of later levels stay whole
    assert not (straight / "h3").exists()
    history = read_json(straight / "h2" / "history.json")
    # supernet 2, then per level 2 SMD epochs of the survivor, and 1 continue epoch except after the last
    assert [r["epoch"] for r in history] == list(range(1, 2 + 2 * 2 + 1 + 1))
    assert [r.get("phase", "supernet") for r in history] == ["supernet"] * 2 + ["smd"] * 2 + ["continue"] + ["smd"] * 2
    assert history[-1]["mask"]["cell"] == mask.tolist() and history[-1]["arch"].count("~") == 6


def test_kill_during_second_hierarchy_resumes_without_redoing_the_first(tiny_folder, tmp_path, monkeypatch, straight):
    plan = tiny_plan(tiny_folder)
    real_gm, real_smd = hep_nas.gradient_matching_distances, hep_nas.smd_epoch
    calls = {"gm": 0, "smd": 0}

    def counted_gm(*a, **kw):
        calls["gm"] += 1
        return real_gm(*a, **kw)

    def dies_in_second_smd_epoch_of_h2(*a, **kw):
        calls["smd"] += 1
        if calls["smd"] == 4:          # h1: calls 1-2; h2: call 3 finishes and is checkpointed, call 4 dies
            raise KeyboardInterrupt
        return real_smd(*a, **kw)

    monkeypatch.setattr(hep_nas, "gradient_matching_distances", counted_gm)
    monkeypatch.setattr(hep_nas, "smd_epoch", dies_in_second_smd_epoch_of_h2)
    with pytest.raises(KeyboardInterrupt):
        run_method(plan, tmp_path)
    assert (tmp_path / "h1" / "supernet.pt").exists() and not (tmp_path / "h2" / "supernet.pt").exists()
    assert (tmp_path / "h2" / "children.pt").exists() and (tmp_path / "h2" / "resume.pt").exists()
    h1_written = (tmp_path / "h1" / "supernet.pt").stat().st_mtime_ns
    assert calls["gm"] == 2

    monkeypatch.setattr(hep_nas, "smd_epoch", real_smd)
    run_method(plan, tmp_path)
    assert (tmp_path / "h1" / "supernet.pt").stat().st_mtime_ns == h1_written
    assert calls["gm"] == 2            # h2's partition was checkpointed: no gradient matching again
    assert not (tmp_path / "h2" / "children.pt").exists()

    a = torch.load(straight / "h2" / "supernet.pt", weights_only=False)
    b = torch.load(tmp_path / "h2" / "supernet.pt", weights_only=False)
    assert a["epoch"] == b["epoch"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(a["alpha"], b["alpha"], rtol=0, atol=0)
    assert torch.equal(a["mask"]["cell"], b["mask"]["cell"])
    for stage in ("h1", "h2"):
        assert read_json(straight / stage / "hierarchy.json") == read_json(tmp_path / stage / "hierarchy.json")


# --------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_snakemake_runs_hep_nas_on_both_spaces(tmp_path_factory, tiny_folder):
    """One Snakemake run (two jobs at a time): two hierarchies per space, teacher-only SMD."""
    from pipeline_steps.spaces.genotype import genotype_from_json

    p = copy_project(tmp_path_factory.mktemp("hep_e2e"))
    tiny_params(p, tiny_folder)
    quick = p / "params" / "profiles" / "quick.yaml"
    q = yaml.safe_load(quick.read_text())
    q["space"]["darts"].update(channels=4, layers=3)
    q["retrain"].update(epochs=1, layers=3, channels=4, cutout=2, batch_size=16)
    q["method"]["hep_nas"].update(split_epochs={"nb201": [1, 2, 3], "darts": [1, 2]}, alpha_warmup=0,
                                  hierarchies={"nb201": 2, "darts": 1}, guidance="previous")
    quick.write_text(yaml.safe_dump(q, sort_keys=False))
    snakemake("--config", "methods=[hep_nas]", "seeds=[0]", "tracking={enabled: false}", "spaces=[nb201,darts]",
              "diagnostics={ranking: {enabled: false}}",
              "space={darts: {op_set: s3}}", "data={max_images: 80}", cwd=p)

    run = p / "results" / "nb201" / "cifar10" / "seed0" / "hep_nas"
    assert [len(json.loads((run / s / "hierarchy.json").read_text())["children"]) for s in ("h1", "h2")] == [2, 4]
    assert not (run / "h3").exists()
    result = json.loads((run / "lookup" / "result.json").read_text())
    assert 0 <= result["cifar10_test_acc"] <= 100
    assert {"supernet", "h1", "h2", "derive"} <= set(result["wall_time_s"])
    # supernet 1, h1: the survivor's SMD epoch and one continue epoch to t_2, h2 (the last): its SMD epoch
    assert len(result["trajectories"]["hep_nas"]) == 1 + 2 + 1

    run = p / "results" / "darts" / "cifar10" / "seed0" / "hep_nas"
    logs = [json.loads((run / "h1" / "hierarchy.json").read_text())]
    assert len(logs[0]["children"]) == 4 and not (run / "h2").exists()   # normal-cell edges {0, 1}
    for part in (p for log in logs for p in log["partition"]):    # `none` is split like any op, never alone
        assert part["cell_type"] == "normal" and "none" in part["ops"]
        assert sum("none" in g for g in part["group_ops"]) == 1 and ["none"] not in part["group_ops"]
    genotype = genotype_from_json(json.loads((run / "derive" / "arch.json").read_text())["genotype"])
    assert len(genotype.normal) == len(genotype.reduce) == 8
    result = json.loads((run / "retrain" / "result.json").read_text())
    assert 0 <= result["test_acc"] <= 100 and {"supernet", "h1", "retrain"} <= set(result["wall_time_s"])

    report = (p / "results" / "REPORT.md").read_text()
    assert "## DARTS space" in report and report.count("hep_nas") >= 2
    # the paper's Fig. 3: sub-supernet accuracies after each split
    assert (p / "results" / "nb201" / "figures" / "hep_sub_supernets.png").stat().st_size > 1000
    assert "hep_sub_supernets.png" in report
