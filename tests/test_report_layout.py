"""The report reads like the papers: their method names, their numbers as (reported) rows beside
ours, search cost in seconds of the device it ran on, ranks spelled out, the ranking diagnostic
once per supernet, NB201 retrainings, a self-contained HTML page, and figures that name what they
show (shared y axes, every line in the legend, named edges, an honest colour scale)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline_steps.evaluation.benchmark import METRICS, load_benchmark
from pipeline_steps.methods import METHODS
from pipeline_steps.report import figures as report_figures
from pipeline_steps.report.build import report
from pipeline_steps.report.heatmaps import _draw, edge_names
from pipeline_steps.report.reproduction import load_paper_results
from pipeline_steps.report.tables import _pm, reported_cost_text

ROOT = Path(__file__).resolve().parents[1]
PAPER = load_paper_results(ROOT / "params")
NAMES = PAPER["names"]
ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
SHARED = ("darts", "darts_pt", "ostr")  # one supernet, read three ways
RUNTIME = {"benchmark": {"source": "table", "path": None}, "tracking": {"enabled": False}, "config_hash": "x",
           "git_commit": "x"}


def _write(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def fake_run(root: Path, bench, method: str, seed: int, key: str, device: str, tau: float) -> tuple[str, str]:
    run = root / "nb201" / "cifar10" / f"seed{seed}"
    row = bench.lookup(ARCH)
    criteria = ("magnitude", "ostr", "ostr_star", "naive") if method == "ostr" else (method,)
    point = lambda e, acc: {**row, "epoch": e, "stage": "supernet", "cifar10_test_acc": acc}  # noqa: E731
    trajectories = {c: [point(1, 60.0 + i), point(2, 70.0 + seed)] for i, c in enumerate(criteria)}
    if method == "ostr":
        trajectories["ostr_star"] = trajectories["ostr"]  # OStr* selects OStr's cells here
    stages = {"supernet": 600.0, "derive": 5.0, "lookup": 2.0}
    if method == "hpe_darts":
        stages["prune1"] = 300.0
    name = "NVIDIA H100 80GB HBM3" if device.startswith("cuda") else "cpu"
    for stage in stages:
        if stage not in ("derive", "lookup"):
            d = run / "supernet" / key if stage == "supernet" else run / method / stage
            _write(d / "metrics.json", {"key": key, "stage": stage, "device": device, "device_name": name,
                                        "wall_time_s": stages[stage]})
    alpha = np.random.default_rng(seed).normal(0, 0.01, size=(6, 5)).tolist()
    _write(run / method / "derive" / "arch.json", {"arch": ARCH, "method": method, "space": "nb201", "ops": OPS,
                                                   "alpha": {"cell": alpha}, "mask": {"cell": [[True] * 5] * 6},
                                                   "epoch": 2})
    own = [{"stage": "select", "epoch": 3, "kendall_tau": None, "spearman_rho": None, "n": 1}] \
        if method == "darts_pt" else []
    own += [{"stage": "prune1", "epoch": 4, "kendall_tau": tau + 0.2, "spearman_rho": 0.6, "n": 20}] \
        if method == "hpe_darts" else []
    ranking = _write(run / method / "ranking" / "result.json", {
        "method": method, "dataset": "cifar10", "seed": seed, "metric": "cifar10_test_acc",
        "per_stage": [{"stage": "supernet", "epoch": 2, "kendall_tau": tau, "spearman_rho": 0.5, "n": 20}, *own]})
    result = _write(run / method / "lookup" / "result.json", {
        **row, "method": method, "space": "nb201", "dataset": "cifar10", "seed": seed, "device": device,
        "supernet_key": key, "selected_epoch": 2, "trajectories": trajectories, "wall_time_s": stages})
    return result, ranking


def build(root: Path, device: str = "cpu", methods=(*SHARED, "hpe_darts"), retrain: bool = True) -> str:
    bench = load_benchmark("table", None)
    results, rankings, retrains = [], [], []
    for seed in (0, 1):
        for m in methods:
            r, k = fake_run(root, bench, m, seed, "shared0000" if m in SHARED else f"{m}_key", device, 0.3 + seed / 10)
            results.append(r)
            rankings.append(k)
        if retrain:
            retrains.append(_write(root / "nb201" / "cifar10" / f"seed{seed}" / "darts_pt" / "retrain" / "result.json", {
                "arch": ARCH, "method": "darts_pt", "space": "nb201", "dataset": "cifar10", "seed": seed,
                "device": device, "epochs": 3, "test_acc": 55.5 + seed, "test_error": 44.5 - seed, "params_m": 0.031,
                "flops_m": 0.24, "wall_time_s": {"supernet": 600.0, "derive": 5.0, "retrain": 42.0}}))
    expected = [{"method": Path(f).parents[1].name, "space": "nb201", "dataset": "cifar10",
                 "seed": int(Path(f).parents[2].name[4:]), "file": f} for f in results]
    spec = {"stage": "report", "profile": "quick", "spaces": ["nb201"], "expected": expected, "results": results,
            "ranking": rankings, "retrain_nb201": retrains}
    report(spec, RUNTIME, root, paper=PAPER, ledger_dir=root / "no_ledger")
    return (root / "REPORT.md").read_text()


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu")
    return root, build(root)


def _rows(text: str, first_cell: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]


def test_every_method_has_a_paper_name():
    assert set(METHODS) <= set(NAMES)
    assert NAMES["darts_pt_fix_alpha"] == "DARTS-PT (fix alpha)" and NAMES["ostr_star"] == "OStr-DARTS*"


def test_main_table_uses_paper_names_and_puts_reported_rows_beside_ours(cpu_report):
    _, text = cpu_report
    main = text.split("### Runs")[0]
    for method in (*SHARED, "hpe_darts"):
        assert not _rows(text, method), f"method id {method} printed instead of {NAMES[method]}"
        ours = _rows(main, NAMES[method])
        assert len(ours) == 1 and "| cifar10 | 2 |" in ours[0]
        for target in (t for t in PAPER["nb201"] if t["method"] == method):
            reported = next(r for r in _rows(main, f"{NAMES[method]} (reported)") if f"| {target['searched_on']} |" in r)
            cells = [c.strip() for c in reported.strip("|").split("|")]
            assert cells[4:] == [_pm(*target[m]) if m in target else "-" for m in METRICS]
            # the reported row comes right before ours
            lines = main.splitlines()
            assert lines.index(reported) < lines.index(ours[0])
    assert "| OStr-DARTS (reported) | cifar10 | 5 | 4,320 GPU-s (1.2 h) | 91.58±0.00 | 94.36±0.00 |" in main


def test_search_cost_says_which_device_it_was_measured_on(cpu_report, tmp_path):
    _, text = cpu_report
    ours = _rows(text.split("### Runs")[0], NAMES["darts"])[0]
    assert "605 CPU-s" in ours and "GPU-s" not in ours  # supernet 600 s + derive 5 s, the lookup not counted
    gpu = build(tmp_path, device="cuda:0", methods=("darts",), retrain=False)
    row = _rows(gpu.split("### Runs")[0], NAMES["darts"])[0]
    assert "605 GPU-s" in row and "CPU-s" not in row
    assert "NVIDIA H100 80GB HBM3" in _rows(gpu.split("### Runs")[1], NAMES["darts"])[0]
    se_nas = next(t for t in PAPER["nb201"] if t["method"] == "se_nas")
    assert reported_cost_text(se_nas) == "10,561 GPU-s (GTX 1080 Ti)"


def test_rank_is_spelled_out(cpu_report):
    _, text = cpu_report
    rank = load_benchmark("table", None).lookup(ARCH)["rank"]
    assert "rank r of 15,625 by CIFAR-10 test" in text
    assert f"| {rank:,} of 15,625 |" in _rows(text.split("### Runs")[1], NAMES["ostr"])[0]


def test_ranking_diagnostic_once_per_supernet(cpu_report):
    _, text = cpu_report
    section = text.split("### Supernet ranking")[1].split("###")[0]
    shared = ", ".join(NAMES[m] for m in SHARED) + " (shared supernet)"
    assert len(_rows(section, shared)) == 2  # one row per seed, not one per method
    assert not any(_rows(section, NAMES[m]) for m in SHARED)
    hpe = _rows(section, NAMES["hpe_darts"])
    assert [r.split("|")[4].strip() for r in hpe] == ["supernet", "prune1", "supernet", "prune1"]


def test_nb201_retraining_reaches_the_report(cpu_report, tmp_path):
    _, text = cpu_report
    section = text.split("### NAS-Bench-201 cells trained from scratch")[1].split("###")[0]
    row = _rows(section, NAMES["darts_pt"])[0]
    assert "| 56.00±0.71 |" in row and "| 3 |" in row and "42.0 CPU-s" in row
    assert "trained from scratch" not in build(tmp_path, methods=("darts_pt",), retrain=False)


def test_html_is_self_contained(cpu_report):
    root, text = cpu_report
    html = (root / "REPORT.html").read_text()
    sources = re.findall(r'<img[^>]*\bsrc="([^"]*)"', html)
    figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert figures and len(sources) == len(figures)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert 'src="figures/' not in html and 'src="nb201/' not in html


def test_heatmap_names_edges_and_keeps_probabilities_on_a_fixed_scale():
    plt = report_figures._plt()
    assert edge_names("nb201", 6) == ["0->1", "0->2", "1->2", "0->3", "1->3", "2->3"]
    assert edge_names("darts", 14)[:5] == ["k-2->0", "k-1->0", "k-2->1", "k-1->1", "0->1"]  # as the cell pictures
    fig, ax = plt.subplots()
    values = np.full((6, 5), 0.2) + np.linspace(-0.002, 0.004, 30).reshape(6, 5)
    arch = {"arch": ARCH, "ops": OPS, "space": "nb201", "mask": {"cell": [[True] * 5] * 6}}
    _draw(fig, ax, arch, "softmax(alpha)", "cell", values, True, edge_names("nb201", 6))
    assert [t.get_text() for t in ax.get_yticklabels()] == edge_names("nb201", 6)
    assert ax.images[0].get_clim() == (0.0, 1.0) and "colour 0-1" in ax.get_title()
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 8
    _draw(fig, ax, arch, "softmax(alpha)", "cell", np.full((6, 5), 0.2), True, edge_names("nb201", 6))
    assert "uniform 0.200" in ax.get_title()  # SPOS: no magnified noise, and the title says it is uniform
    plt.close(fig)


def test_trajectory_panels_share_y_and_name_every_line(tmp_path, monkeypatch):
    figs = []
    monkeypatch.setattr(report_figures, "_save", lambda fig, path: figs.append(fig) or path)
    results = [json.loads(Path(f).read_text()) for f in
               (fake_run(tmp_path, load_benchmark("table", None), m, s, "k", "cpu", 0.3)[0]
                for m in ("darts", "ostr", "hpe_darts") for s in (0, 1))]
    report_figures.trajectory_plot(results, tmp_path / "t.png", PAPER, 94.37)
    axes = [ax for ax in figs[0].axes if ax.get_visible()]
    assert len(axes) == 3 and all(axes[0].get_shared_y_axes().joined(axes[0], ax) for ax in axes)
    for ax in axes:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(labels) == len(ax.get_lines()) and min(t.get_fontsize() for t in ax.get_legend().get_texts()) >= 8
    ostr = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert "OStr* (same cells as OStr)" in ostr and "DARTS magnitude (argmax alpha)" in ostr


def test_darts_space_table_has_reported_rows_and_device_seconds(tmp_path):
    import pandas as pd

    from pipeline_steps.report.tables import darts_markdown

    runs = pd.DataFrame([{"method": "ostr", "dataset": "cifar10", "seed": s, "test_error": 3.0 + s, "test_acc": 97.0 - s,
                          "params_m": 3.4, "flops_m": 540.0, "search_cost_s": 36000.0, "search_device": "GPU",
                          "arch": "Genotype(...)", "result_file": str(tmp_path / f"s{s}" / "ostr" / "retrain" / "r.json")}
                         for s in (0, 1)])
    text = "\n".join(darts_markdown(runs, tmp_path, None, PAPER))
    assert "| OStr-DARTS (reported) | cifar10 | 5 | 34,560 GPU-s (0.4 GPU-days) | 2.42±0.06 | 3.50 | 545 |" in text
    assert "| OStr-DARTS | cifar10 | 2 | 36,000 GPU-s | 3.50±0.71 | 3.40 | 540 |" in text
    assert "- OStr-DARTS cifar10 seed 0: test error 3.00%" in text
