"""The ranking diagnostic runs once per trained state: methods that share a supernet share the
job that ranks it; a method's own later stages are ranked in jobs of their own."""
from __future__ import annotations

import yaml

from pipeline_steps.pipeline.config import load_params
from pipeline_steps.pipeline.plan import Plan
from tests.project import copy_project, jobs_to_run, snakemake, tiny_params


def test_methods_sharing_a_supernet_share_its_ranking():
    plan = Plan(load_params("params", {"methods": ["darts", "darts_pt", "ostr"]}), identify_data=False)
    files = {m: plan.stage_ranking_files(m, "cifar10", 0) for m in ("darts", "darts_pt", "ostr")}
    assert files["darts"] == files["ostr"] == files["darts_pt"][:1]
    assert files["darts"][0].endswith("/ranking.json") and "/supernet/" in files["darts"][0]
    assert files["darts_pt"][1].endswith("/darts_pt/select/ranking.json")
    key = files["darts"][0].split("/")[-2]
    spec = plan.checkpoint_ranking_spec("supernet", "cifar10", 0, key)
    assert "method" not in spec and spec["supernet_key"] == key


def test_dry_run_ranks_each_trained_state_once(tmp_path, tiny_folder):
    project = copy_project(tmp_path / "project")
    tiny_params(project, tiny_folder)
    base = project / "params" / "nasflow.yaml"
    cfg = yaml.safe_load(base.read_text())
    cfg["methods"], cfg["seeds"] = ["darts", "darts_pt", "ostr"], [0, 1]
    base.write_text(yaml.safe_dump(cfg, sort_keys=False))
    jobs = jobs_to_run(snakemake("-n", "--config", "tracking={enabled: false}", cwd=project))
    assert jobs["supernet"] == 2 and jobs["method_stage"] == 2  # one shared supernet, DARTS-PT's select
    assert jobs["rank_checkpoint"] == 4 and jobs["ranking"] == 6
