"""SE-NAS and the SPOS baseline as pipeline methods: a tiny NB201 search in-process (shrink,
expand, per-stage Kendall tau, the derived child), a shrink stage killed mid-way that resumes on
its expanded supernet, and Snakemake end to end with both methods on one SPOS supernet job."""
from __future__ import annotations

import json
import time

import pytest
import torch

from pipeline_steps.common.atomic import read_json
from pipeline_steps.methods import get_method
from pipeline_steps.pipeline import diagnostics, stage_run, stages
from pipeline_steps.pipeline.config import load_params
from pipeline_steps.pipeline.plan import Plan
from pipeline_steps.scores.child_eval import nb201_key
from pipeline_steps.spaces import get_space
from pipeline_steps.transforms.shrink import RoutedOp

from project import Crash, copy_project, crash_in_epoch, snakemake, tiny_params

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SE = {"supernet_epochs": {"nb201": 2, "darts": 1}, "shrink_stages": {"nb201": 1, "darts": 1},
           "final_train_epochs": 1, "k_drop": 2, "snapshots_K": 3, "si_archs": 40, "final_archs": 30,
           "scoring_images": 64}


def tiny_plan(folder, **se) -> Plan:
    cfg = load_params("params", {
        "methods": ["se_nas", "spos"], "seeds": [0],
        "data": {"root": str(folder), "source": "folder", "download": False, "image_size": 8, "max_images": None},
        "search": {"batch_size": 16}, "space": {"nb201": {"channels": 4, "cells_per_stage": 1}},
        "tracking": {"enabled": False}, "device": "cpu", "method": {"se_nas": {**TINY_SE, **se}}})
    return Plan(cfg)


def train_supernet(plan: Plan, root):
    spec = plan.supernet_spec("se_nas", "nb201", "cifar10", 0)
    out = root / "supernet" / "supernet.pt"
    stages.supernet(spec, plan.runtime(), out, out.with_name("metrics.json"), out.with_name("history.json"))
    return out


def run_method_stage(plan: Plan, method: str, stage: str, start, out_dir):
    out = out_dir / "supernet.pt"
    stages.method_stage(plan.method_stage_spec(method, "nb201", "cifar10", 0, stage), plan.runtime(), start, out,
                        out.with_name("metrics.json"), out.with_name("history.json"))
    return out


def alive(mask: list[list[bool]] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(mask, dtype=torch.bool)


def test_shrink_expand_and_search_on_tiny_nb201(tiny_folder, tmp_path):
    plan = tiny_plan(tiny_folder)
    start = train_supernet(plan, tmp_path)
    sn = torch.load(start, weights_only=False)
    assert sn["extra"]["snapshots"]["count"] == 3          # Wbar of the last SPOS epoch travels with the state
    assert get_method("se_nas").stages(plan.cfg, "nb201") == ["shrink1", "search"]

    shrunk = run_method_stage(plan, "se_nas", "shrink1", start, tmp_path / "shrink1")
    decision = read_json(tmp_path / "shrink1" / "shrink.json")
    ckpt = torch.load(shrunk, weights_only=False)
    mask = ckpt["mask"]["cell"]
    assert int(mask.sum()) == 30 - 2 and bool((mask.sum(1) >= 1).all())   # exactly k gone, no edge empty
    op_names = plan.cfg["space"]["nb201"]["op_order"]
    for kind, e, op in decision["dropped"]:
        assert not mask[e, op_names.index(op)]
    ranked = [tuple(r) for r in decision["operator_scores"]["ranked"]]
    assert [tuple(d) for d in decision["dropped"]] == ranked[:2]      # the two lowest S (every edge has 5 ops)
    # edge counts 5,5,5,5,4,4 (or similar) and T = 50: consecutive pairs merge and get private copies
    assert decision["merged_groups"] and ckpt["extra"]["se_nas_expansion"] == decision["merged_groups"]
    assert any(k.endswith(".weight") and ".copies." in k for k in ckpt["model"])
    assert ckpt["epoch"] == 2 + 1 and ckpt["extra"]["snapshots"]["count"] == 3

    history = read_json(tmp_path / "shrink1" / "history.json")
    record = next(r for r in history if r.get("stage") == "shrink1" and "dropped" in r)
    assert -1 <= record["kendall_tau"] <= 1 and record["ranking"]["n"] == decision["children_evaluated"] == 40
    assert record["kendall_tau"] == decision["ranking"]["kendall_tau"]
    assert len(read_json(tmp_path / "shrink1" / "p_table.json")) == 40

    final = run_method_stage(plan, "se_nas", "search", shrunk, tmp_path / "search")
    searched = read_json(tmp_path / "search" / "search.json")
    table = read_json(tmp_path / "search" / "p_table.json")
    assert len(table) == searched["children_evaluated"] == 30 and -1 <= searched["ranking"]["kendall_tau"] <= 1
    assert searched["weights"] == "averaged"             # SE-NAS measures with Wbar (Eq. 4)
    for arch in table:                                  # every measured child lies in the shrunk space
        assert all(mask[e, o] for e, o in enumerate(nb201_key(arch, op_names)[0]))
    history = torch.load(final, weights_only=False)["history"]
    method = get_method("se_nas")
    space = get_space("nb201", plan.cfg["space"]["nb201"])
    settings = plan.derive_spec("se_nas", "nb201", "cifar10", 0)["settings"]
    arch = method.derive(space, history[method.select_record(space, history, settings)], settings)
    assert table[arch] == max(table.values()) and arch == searched["best_arch"]
    assert [r.get("stage", "supernet") for r in history if "kendall_tau" in r] == ["shrink1", "search"]

    # the ranking diagnostic loads every stage's state through the method, expanded ones included
    key = read_json(start.with_name("metrics.json"))["key"]
    rankings = []
    for owner, stage, state in (("supernet", key, start), ("se_nas", "shrink1", shrunk), ("se_nas", "search", final)):
        spec = plan.checkpoint_ranking_spec(owner, "cifar10", 0, stage)
        spec["settings"].update(archs=20, images=32)
        rankings.append(tmp_path / f"ranking-{stage}.json")
        diagnostics.rank_checkpoint(spec, plan.runtime(), state, rankings[-1])
    diagnostics.ranking(plan.ranking_spec("se_nas", "cifar10", 0), rankings, tmp_path / "ranking.json")
    assert [s["stage"] for s in read_json(tmp_path / "ranking.json")["per_stage"]] == ["supernet", "shrink1", "search"]


def test_spos_baseline_searches_the_full_space_on_the_same_supernet(tiny_folder, tmp_path):
    plan = tiny_plan(tiny_folder)
    assert plan.supernet_dir("spos", "nb201", "cifar10", 0) == plan.supernet_dir("se_nas", "nb201", "cifar10", 0)
    assert get_method("spos").stages(plan.cfg, "nb201") == ["search"]
    start = train_supernet(plan, tmp_path)
    final = run_method_stage(plan, "spos", "search", start, tmp_path / "search")
    ckpt = torch.load(final, weights_only=False)
    assert bool(ckpt["mask"]["cell"].all()) and "se_nas_expansion" not in ckpt["extra"]
    searched = read_json(tmp_path / "search" / "search.json")
    assert searched["space_size"] == 5 ** 6 and searched["children_evaluated"] == 30
    # the shared supernet carries the live weights and Wbar; plain SPOS measures the live ones
    assert ckpt["extra"]["snapshots"]["count"] == 3 and searched["weights"] == "live"
    assert ckpt["history"][-1]["arch"] == searched["best_arch"]


def test_darts_space_shrinks_one_op_per_edge_and_derives_the_selected_childs_genotype(tiny_folder, tmp_path):
    cfg = load_params("params", {
        "methods": ["se_nas"], "spaces": ["darts"], "seeds": [0],
        "data": {"root": str(tiny_folder), "source": "folder", "download": False, "image_size": 8, "max_images": 80},
        "search": {"batch_size": 16}, "space": {"darts": {"op_set": "s3", "channels": 4, "layers": 3}},
        "tracking": {"enabled": False}, "device": "cpu",
        "method": {"se_nas": {**TINY_SE, "final_train_epochs": 0, "k_drop": 10, "models_per_op": 1}}})
    plan = Plan(cfg)
    spec = plan.supernet_spec("se_nas", "darts", "cifar10", 0)
    start = tmp_path / "supernet" / "supernet.pt"
    stages.supernet(spec, plan.runtime(), start, start.with_name("metrics.json"), start.with_name("history.json"))
    outs = {}
    for stage in get_method("se_nas").stages(cfg, "darts"):
        out = outs[stage] = tmp_path / stage / "supernet.pt"
        stages.method_stage(plan.method_stage_spec("se_nas", "darts", "cifar10", 0, stage), plan.runtime(),
                            start, out, out.with_name("metrics.json"), out.with_name("history.json"))
        start = out
    decision = read_json(tmp_path / "shrink1" / "shrink.json")
    assert len(decision["dropped"]) == 10 and len({(k, e) for k, e, _ in decision["dropped"]}) == 10
    assert decision["ranking"] is None and decision["children_evaluated"] <= 2 * 14 * 3
    before = torch.load(tmp_path / "supernet" / "supernet.pt", weights_only=False)["mask"]
    mask = torch.load(outs["search"], weights_only=False)["mask"]
    assert sum(int(before[k].sum() - mask[k].sum()) for k in mask) == 10

    space = get_space("darts", plan.supernet_spec("se_nas", "darts", "cifar10", 0)["space_settings"])
    history = torch.load(outs["search"], weights_only=False)["history"]
    settings = plan.derive_spec("se_nas", "darts", "cifar10", 0)["settings"]
    genotype = get_method("se_nas").derive(space, history[-1], settings)
    selected = history[-1]["selected_ops"]
    for kind, pairs in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        assert len(pairs) == 8
        for i, (op, j) in enumerate(pairs):
            node = 2 + i // 2
            edge = sum(range(2, node)) + j              # edges of nodes 2 .. node-1 come first
            assert mask[kind][edge, space.ops.index(op)]
            chosen = space.ops[selected[kind][edge]]
            assert op == chosen or chosen == "none"     # the selected child's op wherever it is not `none`


def test_a_shrink_stage_killed_in_training_resumes_on_its_expanded_supernet(tiny_folder, tmp_path, monkeypatch):
    plan = tiny_plan(tiny_folder, final_train_epochs=2)
    start = train_supernet(plan, tmp_path)
    straight = run_method_stage(plan, "se_nas", "shrink1", start, tmp_path / "straight")
    epochs = crash_in_epoch(monkeypatch, 2)
    with pytest.raises(Crash):
        run_method_stage(plan, "se_nas", "shrink1", start, tmp_path / "killed")
    killed = run_method_stage(plan, "se_nas", "shrink1", start, tmp_path / "killed")
    assert epochs.calls == 3                              # the shrink and the first epoch were not redone
    a, b = (torch.load(p, weights_only=False) for p in (straight, killed))
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert read_json(tmp_path / "straight" / "shrink.json") == read_json(tmp_path / "killed" / "shrink.json")
    # a fresh supernet loads the expanded checkpoint through the method (as the ranking diagnostic does)
    run = stage_run.StageRun(plan.method_stage_spec("se_nas", "nb201", "cifar10", 0, "search"), plan.runtime(),
                             tmp_path / "reload", "reload", "se_nas", start=killed, load=get_method("se_nas").load_state)
    assert any(isinstance(m, RoutedOp) for m in run.state.model.modules())


# --------------------------------------------------------------------------- Snakemake end to end


@pytest.fixture(scope="module")
def se_project(tmp_path_factory, tiny_folder):
    p = copy_project(tmp_path_factory.mktemp("se_project"))
    tiny_params(p, tiny_folder)
    return p


# the ranking diagnostic of expanded states runs in-process above; here it would only add jobs
SE_CONFIG = ("methods=[se_nas,spos]", "seeds=[0]", "tracking={enabled: false}", "diagnostics={ranking: {enabled: false}}",
             "method={se_nas: {si_archs: 24, final_archs: 16, scoring_images: 64}}")


@pytest.mark.e2e
def test_se_nas_and_spos_end_to_end_on_nb201(se_project):
    t0 = time.perf_counter()
    snakemake("--config", *SE_CONFIG, cwd=se_project)
    print(f"SE-NAS + SPOS tiny end to end (NB201): {time.perf_counter() - t0:.1f} s")

    run_dir = se_project / "results" / "nb201" / "cifar10" / "seed0"
    assert len(list((run_dir / "supernet").iterdir())) == 1      # one SPOS supernet job for both methods
    for method, own in (("se_nas", {"shrink1", "search"}), ("spos", {"search"})):
        lookup = json.loads((run_dir / method / "lookup" / "result.json").read_text())
        derived = json.loads((run_dir / method / "derive" / "arch.json").read_text())
        table = json.loads((run_dir / method / "search" / "p_table.json").read_text())
        assert lookup["method"] == method and 0 <= lookup["cifar10_test_acc"] <= 100
        assert derived["arch"] == lookup["arch_str"] and table[derived["arch"]] == max(table.values())
        assert {"supernet", "derive", *own} <= set(lookup["wall_time_s"])
    shrink = json.loads((run_dir / "se_nas" / "shrink1" / "shrink.json").read_text())
    assert len(shrink["dropped"]) == 2 and -1 <= shrink["ranking"]["kendall_tau"] <= 1
    report = (se_project / "results" / "REPORT.md").read_text()
    for method in ("SE-NAS", "SPOS"):  # the papers' names
        assert any(line.startswith(f"| {method} | cifar10 | 1 |") for line in report.splitlines()), method
