"""End to end on a tiny offline dataset: Snakemake runs the DARTS slice, caches it, re-runs only
what a changed parameter touches; DVC reproduces, pushes and pulls; MLflow holds every stage."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline_steps.spaces.nb201 import str_to_ops

from project import copy_project, jobs_to_run, sh, snakemake, tiny_params

pytestmark = pytest.mark.e2e  # Snakemake end-to-end: `python -m pytest -m e2e`


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_folder) -> Path:
    p = copy_project(tmp_path_factory.mktemp("project"))
    tiny_params(p, tiny_folder)
    base = p / "params" / "nasflow.yaml"  # the stage mechanics, on the baseline alone
    cfg = yaml.safe_load(base.read_text())
    cfg["methods"], cfg["diagnostics"]["ranking"]["enabled"] = ["darts"], False
    base.write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(cwd=p)
    return p


def test_run_produces_arch_lookup_report(project):
    results = sorted((project / "results" / "nb201" / "cifar10").glob("seed*/darts/lookup/result.json"))
    assert [r.parts[-4] for r in results] == ["seed0", "seed1"]
    for r in results:
        res = json.loads(r.read_text())
        assert len(str_to_ops(res["arch_str"])) == 6
        assert 10 < res["cifar10_test_acc"] < 95 and 1 <= res["rank"] <= 15625
        assert [t["epoch"] for t in res["trajectories"]["darts"]] == [1, 2]
        assert res["wall_time_s"]["supernet"] > 0
    supernets = list((project / "results" / "nb201" / "cifar10").glob("seed*/supernet/*/supernet.pt"))
    assert len(supernets) == 2
    history = json.loads(next(supernets[0].parent.glob("history.json")).read_text())
    assert history[-1]["train_acc"] > 10.0  # above chance on 10 classes
    report = (project / "results" / "REPORT.md").read_text()
    assert "| DARTS (1st order) | cifar10 | 2 |" in report and "Optimal" in report
    assert (project / "results" / "nb201" / "figures" / "search_trajectory.png").stat().st_size > 1000
    metrics = json.loads((project / "metrics.json").read_text())
    assert metrics["profile"] == "quick" and metrics["nb201"]["cifar10"]["darts"]["seeds"] == 2
    assert 10 < metrics["nb201"]["cifar10"]["darts"]["c10_test"] < 95
    trajectory = (project / "results" / "plots" / "trajectory" / "nb201-cifar10-darts.csv").read_text().splitlines()
    assert trajectory[0] == "epoch,test_acc,seeds" and len(trajectory) == 3


def test_mlflow_has_every_stage_with_tags(project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nasflow")
    everything = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in everything if "mlflow.parentRunId" not in r.data.tags]  # the invocation's run
    runs = [r for r in everything if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == len(everything) - 1 and parent.info.status == "FINISHED"
    stages = sorted(r.data.tags["stage"] for r in runs)
    assert stages == ["derive", "derive", "lookup", "lookup", "report", "supernet", "supernet"]
    sn = next(r for r in runs if r.data.tags["stage"] == "supernet")
    for tag in ("method", "space", "dataset", "seed", "git_commit", "params_hash", "stage_key"):
        assert tag in sn.data.tags
    assert len({r.data.tags["params_hash"] for r in runs}) == 1  # ties the pipeline run together
    assert [m.step for m in client.get_metric_history(sn.info.run_id, "train_loss")] == [1, 2]
    assert len(client.get_metric_history(sn.info.run_id, "bench_cifar10_test_acc")) == 2
    assert sn.data.params["search.epochs"] == "2"
    derive = next(r for r in runs if r.data.tags["stage"] == "derive")
    names = {a.path for a in client.list_artifacts(derive.info.run_id)}
    assert {"alpha.json", "arch.json"} <= names
    assert str_to_ops(derive.data.tags["arch"])


def test_second_run_is_a_noop_and_params_rerun_only_readers(project):
    assert jobs_to_run(snakemake("-n", cwd=project)) == {}
    jobs = jobs_to_run(snakemake("-n", "--config", "method={darts: {allow_none_in_derive: false}}", cwd=project))
    assert jobs == {"derive": 2, "benchmark_lookup": 2, "report": 1, "all": 1}
    jobs = jobs_to_run(snakemake("-n", "--config", "search={lr: 0.05}", cwd=project))
    assert jobs.get("supernet") == 2
    # where data lives and where runs are tracked change no result: nothing re-runs
    assert jobs_to_run(snakemake("-n", "--config", "tracking={enabled: false}", cwd=project)) == {}


def test_dvc_repro_push_pull(project, tmp_path):
    sh("dvc", "init", "--no-scm", "-q", cwd=project)
    sh("dvc", "repro", cwd=project)
    second = sh("dvc", "repro", cwd=project)
    assert "up to date" in second.stdout + second.stderr
    metrics = sh("dvc", "metrics", "show", "--json", cwd=project).stdout
    assert '"profile": "quick"' in metrics and '"c10_test"' in metrics
    plots = json.loads(sh("dvc", "plots", "show", "--json", cwd=project).stdout)
    assert not plots.get("errors"), plots.get("errors")
    drawn = {name for name, views in plots["data"].items() if views}
    assert {"results/plots/trajectory/nb201-cifar10-darts.csv"} <= drawn
    assert any(name.startswith("results/plots/training/nb201-cifar10-seed0-supernet-") for name in drawn)
    remote = tmp_path / "remote"
    sh("dvc", "remote", "add", "-d", "local", str(remote), cwd=project)
    sh("dvc", "push", cwd=project)

    # another machine: what git holds (not params/local.yaml), and the same data under another path
    clone = copy_project(tmp_path / "clone")
    for name in ("params", ".dvc", "dvc.lock", "metrics.json"):
        src = project / name
        if src.is_dir():
            shutil.rmtree(clone / name, ignore_errors=True)
            shutil.copytree(src, clone / name, ignore=shutil.ignore_patterns("cache", "tmp", "local.yaml"))
        else:
            shutil.copy2(src, clone / name)
    data = shutil.copytree(yaml.safe_load((project / "params" / "local.yaml").read_text())["data"]["root"],
                           tmp_path / "elsewhere" / "cifar10", ignore=shutil.ignore_patterns(".nasflow-cache"))
    (clone / "params" / "local.yaml").write_text(yaml.safe_dump(
        {"device": "cpu", "data": {"root": str(data), "source": "folder", "download": False}}))
    sh("dvc", "pull", cwd=clone)
    assert len(list((clone / "results" / "nb201").glob("cifar10/seed*/supernet/*/supernet.pt"))) == 2
    # pulled files have fresh mtimes; Snakemake must still see nothing to do
    assert jobs_to_run(snakemake("-n", cwd=clone)) == {}
    for where in (project, clone):  # machine settings are no DVC parameter: both copies are clean
        assert "up to date" in sh("dvc", "status", cwd=where).stdout


@pytest.fixture(scope="module")
def darts_project(tmp_path_factory, tiny_folder) -> Path:
    p = copy_project(tmp_path_factory.mktemp("darts_project"))
    tiny_params(p, tiny_folder)
    quick = p / "params" / "profiles" / "quick.yaml"
    q = yaml.safe_load(quick.read_text())
    q["search"]["epochs"] = 1
    q["space"]["darts"].update(channels=4, layers=3)
    q["retrain"].update(epochs=1, layers=3, channels=4, cutout=2, batch_size=16)
    quick.write_text(yaml.safe_dump(q, sort_keys=False))
    # DARTS, DARTS-PT and OStr-DARTS on one DARTS-space supernet; RobustDARTS S3 (2 candidates per
    # edge) and 80 images keep DARTS-PT's 14 + 3 decisions cheap
    snakemake("--config", "spaces=[darts]", "seeds=[0]", "tracking={enabled: false}", "methods=[darts,darts_pt,ostr]",
              "diagnostics={ranking: {enabled: false}}",
              "space={darts: {op_set: s3}}", "data={max_images: 80}", cwd=p)
    return p


def test_darts_space_searches_then_retrains(darts_project):
    from pipeline_steps.spaces.genotype import genotype_from_json

    seed_dir = darts_project / "results" / "darts" / "cifar10" / "seed0"
    assert len(list(seed_dir.glob("supernet/*/supernet.pt"))) == 1  # one supernet, three selections
    keys = set()
    for method in ("darts", "darts_pt", "ostr"):
        run = seed_dir / method
        derived = json.loads((run / "derive" / "arch.json").read_text())
        genotype = genotype_from_json(derived["genotype"])
        assert len(genotype.normal) == len(genotype.reduce) == 8  # two inputs for each of 4 nodes
        assert (run / "derive" / "cells.png").stat().st_size > 1000 and (run / "derive" / "cells.svg").exists()
        result = json.loads((run / "retrain" / "result.json").read_text())
        assert 0 <= result["test_acc"] <= 100 and result["params_m"] > 0 and result["flops_m"] > 0
        assert {"supernet", "derive", "retrain"} <= set(result["wall_time_s"])
        assert (run / "retrain" / "model.pt").exists() and not (run / "retrain" / "resume.pt").exists()
        keys.add(result["supernet_key"])
    assert len(keys) == 1
    decisions = json.loads((seed_dir / "darts_pt" / "select" / "decisions.json").read_text())
    assert [d["type"] for d in decisions].count("op") == 28 and [d["type"] for d in decisions].count("topology") == 6
    pt_result = json.loads((seed_dir / "darts_pt" / "retrain" / "result.json").read_text())
    assert pt_result["wall_time_s"]["select"] > 0
    report = (darts_project / "results" / "REPORT.md").read_text()
    assert "## DARTS space" in report
    for method in ("DARTS (1st order)", "DARTS-PT", "OStr-DARTS"):  # the papers' names
        assert f"| {method} | cifar10 | 1 |" in report


def test_nb201_cells_can_be_retrained_with_the_nb201_protocol(project):
    snakemake("--config", "retrain_nb201={enabled: true, epochs: 1, channels: 4, layers: 1, batch_size: 16}",
              cwd=project)
    for seed in (0, 1):
        run = project / "results" / "nb201" / "cifar10" / f"seed{seed}" / "darts"
        result = json.loads((run / "retrain" / "result.json").read_text())
        assert result["arch"] == json.loads((run / "lookup" / "result.json").read_text())["arch_str"]
        assert 0 <= result["test_acc"] <= 100 and result["params_m"] > 0
