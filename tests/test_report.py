"""The comparison report on hand-made results: mean +- std and seed counts, ranks, tolerance
verdicts, a failed seed shown as missing, the papers' numbers checked, the HTML version."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline_steps.common.errors import NasflowError
from pipeline_steps.evaluation.benchmark import METRICS, load_benchmark
from pipeline_steps.report.build import report, runs_table, summary_table
from pipeline_steps.report.reproduction import load_paper_results, reproduction_table, tolerance

ROOT = Path(__file__).resolve().parents[1]
RULE = {"std_multiple": 2.0, "floor": 0.5, "zero_std": 0.3}
ARCHS = ["|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
         "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
         "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"]


def write_result(root: Path, method: str, seed: int, arch: str, bench) -> str:
    row = bench.lookup(arch)
    path = root / "nb201" / "cifar10" / f"seed{seed}" / method / "lookup" / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**row, "method": method, "space": "nb201", "dataset": "cifar10", "seed": seed,
                                "device": "cpu", "supernet_key": "k", "selected_epoch": 2,
                                "trajectories": {method: [{"epoch": 1, "stage": "supernet", **row}]},
                                "wall_time_s": {"supernet": 3600.0, "select": 1800.0, "derive": 36.0,
                                                "lookup": 9.0}}))
    return str(path)


@pytest.fixture()
def results(tmp_path):
    bench = load_benchmark("table", None)
    files = [write_result(tmp_path, "darts_pt", s, a, bench) for s, a in enumerate(ARCHS[:2])]
    files.append(write_result(tmp_path, "ostr", 0, ARCHS[2], bench))
    return tmp_path, files, bench


def test_means_stds_ranks_and_search_cost(results):
    _, files, bench = results
    runs = runs_table(files, "quick")
    summary = summary_table(runs, list(METRICS)).set_index("method")
    a, b = (bench.lookup(x) for x in ARCHS[:2])
    for m in METRICS:
        assert summary.loc["darts_pt", f"{m}_mean"] == pytest.approx((a[m] + b[m]) / 2)
        assert summary.loc["darts_pt", f"{m}_std"] == pytest.approx(pd.Series([a[m], b[m]]).std())  # sample std
    assert summary.loc["darts_pt", "n_seeds"] == 2 and pd.isna(summary.loc["ostr", "cifar10_test_acc_std"])
    # search cost counts every training stage and derive, never the lookup
    assert runs["search_cost_s"].iloc[0] == pytest.approx(3600 + 1800 + 36)
    assert list(runs["rank"]) == [bench.lookup(x)["rank"] for x in ARCHS]
    assert bench.lookup(ARCHS[2])["rank"] > bench.lookup(ARCHS[0])["rank"]


def test_tolerance_rule_of_methods_md_7():
    assert tolerance(0.39, RULE) == pytest.approx(0.78)
    assert tolerance(0.1, RULE) == 0.5          # floor
    assert tolerance(0.0, RULE) == 0.3          # reported std of exactly 0
    assert tolerance(None, RULE) == 0.5         # no std given


def test_verdicts_on_a_hand_made_table():
    runs = pd.DataFrame({"method": ["ostr", "ostr", "hpe_darts"], "dataset": ["cifar10"] * 3,
                         "cifar10_test_acc": [94.30, 94.20, 93.00]})
    paper = {"tolerance": RULE, "nb201": [
        {"method": "ostr", "searched_on": "cifar10", "seeds": 5, "cifar10_test_acc": [94.36, 0.0]},
        {"method": "hpe_darts", "searched_on": "cifar10", "cifar10_test_acc": [94.31, 0.07]},
        {"method": "se_nas", "searched_on": "cifar10", "cifar10_test_acc": [93.47, 0.14]}]}
    t = reproduction_table(runs, paper, "nb201", "paper").set_index("method")
    assert t.loc["ostr", "ours_mean"] == pytest.approx(94.25) and t.loc["ostr", "n_seeds"] == 2
    assert t.loc["ostr", "difference"] == pytest.approx(-0.11)
    assert t.loc["ostr", "verdict"] == "match"                  # |-0.11| <= 0.3
    assert t.loc["hpe_darts", "verdict"] == "off"               # |-1.31| > max(0.14, 0.5)
    assert t.loc["se_nas", "verdict"] == "no runs"
    quick = reproduction_table(runs, paper, "nb201", "quick").set_index("method")
    assert quick.loc["ostr", "verdict"] == "not a reproduction (profile quick)"


def test_failed_seed_is_shown_not_silently_averaged(results, tmp_path):
    root, files, _ = results
    expected = [{"method": "darts_pt", "space": "nb201", "dataset": "cifar10", "seed": s, "file": f}
                for s, f in enumerate(files[:2])]
    expected.append({"method": "darts_pt", "space": "nb201", "dataset": "cifar10", "seed": 2,
                     "file": str(root / "nb201" / "cifar10" / "seed2" / "darts_pt" / "lookup" / "result.json")})
    runtime = {"benchmark": {"source": "table", "path": None}, "tracking": {"enabled": False}, "config_hash": "x",
               "git_commit": "x"}
    spec = {"stage": "report", "profile": "quick", "spaces": ["nb201"], "expected": expected,
            "results": [e["file"] for e in expected], "ranking": []}
    report(spec, runtime, root, paper=load_paper_results(ROOT / "params"))
    text = (root / "REPORT.md").read_text()
    assert "| DARTS-PT | cifar10 | 2 of 3 |" in text
    assert "Missing runs" in text and "DARTS-PT nb201/cifar10 seed 2" in text
    html = (root / "REPORT.html").read_text()
    assert "<table>" in html and 'alt="search_trajectory"' in html
    summary = pd.read_parquet(root / "nb201" / "summary.parquet")
    assert len(summary) == 2 and {"arch", "rank", "device", "wall_supernet_s", "search_cost_s"} <= set(summary.columns)


def test_paper_results_file_is_checked(tmp_path):
    data = load_paper_results(ROOT / "params")
    assert any(r["method"] == "hep_nas" and r["searched_on"] == "cifar100" for r in data["nb201"])
    (tmp_path / "paper_results.yaml").write_text(
        "tolerance: {std_multiple: 2, floor: 0.5, zero_std: 0.3}\nnb201:\n"
        "  - {method: ostr, searched_on: cifar10, cifar10_test_acc: 94.36}\n")
    with pytest.raises(NasflowError, match=r"cifar10_test_acc must be \[mean, std\]"):
        load_paper_results(tmp_path)
