"""DARTS, DARTS-PT and OStr-DARTS in the pipeline: one supernet job, several selections, each
looked up with its per-epoch trajectories."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from project import copy_project, jobs_to_run, snakemake, tiny_params

pytestmark = pytest.mark.e2e  # Snakemake end-to-end: `python -m pytest -m e2e`

THREE = "methods=[darts,darts_pt,ostr]"


@pytest.fixture(scope="module")
def bare_project(tmp_path_factory, tiny_folder) -> Path:
    p = copy_project(tmp_path_factory.mktemp("selection"))
    tiny_params(p, tiny_folder)
    return p


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_three_methods_schedule_one_supernet_job(bare_project, space):
    jobs = jobs_to_run(snakemake("-n", "--config", THREE, "seeds=[0]", f"spaces=[{space}]", cwd=bare_project))
    assert jobs["supernet"] == 1 and jobs["method_stage"] == 1 and jobs["derive"] == 3
    # a method whose supernet differs trains its own: fix-alpha, or a preset with other settings
    jobs = jobs_to_run(snakemake("-n", "--config", "methods=[darts,darts_pt,darts_pt_fix_alpha,ostr]", "seeds=[0]",
                                 f"spaces=[{space}]", cwd=bare_project))
    assert jobs["supernet"] == 2 and jobs["method_stage"] == 2
    jobs = jobs_to_run(snakemake("-n", "--config", THREE, "seeds=[0]", f"spaces=[{space}]",
                                 "method={darts_pt: {preset: code}}", cwd=bare_project))
    assert jobs["supernet"] == 2


def test_unknown_preset_is_one_line_naming_it(bare_project):
    r = snakemake("-n", "--config", "method={ostr: {preset: fancy}}", cwd=bare_project, check=False)
    assert r.returncode != 0
    assert "method.ostr.preset = 'fancy'" in r.stdout + r.stderr and "shared, code, beta_darts" in r.stdout + r.stderr


@pytest.fixture(scope="module")
def nb201_run(bare_project) -> Path:
    snakemake("--config", "methods=[darts,darts_pt,darts_pt_fix_alpha,ostr,ostr_star]", "seeds=[0]",
              "tracking={enabled: false}", cwd=bare_project)
    return bare_project / "results" / "nb201" / "cifar10" / "seed0"


def test_selections_of_one_supernet_are_looked_up_with_trajectories(nb201_run):
    results = {m: json.loads((nb201_run / m / "lookup" / "result.json").read_text())
               for m in ("darts", "darts_pt", "darts_pt_fix_alpha", "ostr", "ostr_star")}
    shared = {results[m]["supernet_key"] for m in ("darts", "darts_pt", "ostr", "ostr_star")}
    assert len(shared) == 1 and results["darts_pt_fix_alpha"]["supernet_key"] not in shared
    # OStr: every criterion traced over the supernet's epochs; none of them ever selects `none` but magnitude
    assert set(results["ostr"]["trajectories"]) == {"magnitude", "ostr", "ostr_star", "naive"}
    assert [p["epoch"] for p in results["ostr"]["trajectories"]["ostr"]] == [1, 2]
    assert "none" not in results["ostr"]["arch_str"] and "none" not in results["ostr_star"]["arch_str"]
    # DARTS-PT: the supernet's epochs, then 6 tuning epochs (proj_intv 1), one decision per edge
    pt = results["darts_pt"]["trajectories"]["darts_pt"]
    assert [p["stage"] for p in pt] == ["supernet"] * 2 + ["select"] * 6
    decisions = json.loads((nb201_run / "darts_pt" / "select" / "decisions.json").read_text())
    assert sorted(d["edge"] for d in decisions) == list(range(6)) and [d["epoch"] for d in decisions] == list(range(6))
    for d in decisions:
        accs = [row["acc"] for row in d["table"]]
        assert d["chosen"] == d["table"][accs.index(min(accs))]["op"]
    arch = json.loads((nb201_run / "darts_pt" / "derive" / "arch.json").read_text())
    assert all(sum(row) == 1 for row in arch["mask"]["cell"])  # every edge discretised
    assert results["darts_pt"]["wall_time_s"]["select"] > 0
    report = (nb201_run.parents[2] / "REPORT.md").read_text()
    names = yaml.safe_load((Path(__file__).resolve().parents[1] / "params" / "paper_results.yaml").read_text())["names"]
    for m in results:
        assert f"| {names[m]} | cifar10 | 1 |" in report


def test_report_reruns_when_a_seed_is_added_and_not_otherwise(nb201_run, bare_project):
    config = ["methods=[darts,darts_pt,darts_pt_fix_alpha,ostr,ostr_star]", "tracking={enabled: false}"]
    assert jobs_to_run(snakemake("-n", "--config", *config, "seeds=[0]", cwd=bare_project)) == {}
    jobs = jobs_to_run(snakemake("-n", "--config", *config, "seeds=[0,1]", cwd=bare_project))
    assert jobs["report"] == 1 and jobs["supernet"] == 2 and jobs["derive"] == 5  # only seed 1's runs are new
    ranking = json.loads((nb201_run / "ostr" / "ranking" / "result.json").read_text())
    assert ranking["per_stage"][0]["stage"] == "supernet" and ranking["per_stage"][0]["n"] == 100
    assert -1 <= ranking["per_stage"][0]["kendall_tau"] <= 1
    html = (nb201_run.parents[2] / "REPORT.html").read_text()
    assert 'alt="ranking_kendall_tau"' in html and "Reproduction (nb201)" in html
