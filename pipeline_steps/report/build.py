"""The comparison report: per-run rows (summary.parquet), the papers' tables as mean +- std over
seeds with the seed count shown, the reproduction table against params/paper_results.yaml, and
the figures; REPORT.md and REPORT.html."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..common.atomic import atomic_path, read_json, write_text
from ..evaluation.benchmark import load_benchmark
from .dvc_outputs import write_metrics, write_plot_data
from .figures import hierarchy_plot, ranking_plot, trajectory_plot
from .heatmaps import heatmaps
from .html_page import to_html
from .ranking import ranking_entries, ranking_markdown, ranking_series
from .reproduction import method_name, reproduction_markdown, reproduction_table
from .tables import (LABELS, darts_markdown, nb201_markdown, retrain_nb201_markdown, runs_table, search_cost_s,
                     summary_table)

__all__ = ["report", "runs_table", "search_cost_s", "summary_table"]


def _relative(path: Path, results_dir: Path) -> str:
    return str(Path(path).resolve().relative_to(results_dir.resolve()))


def expected_seeds(expected: list[dict], space: str) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for e in expected:
        if e["space"] == space:
            counts[(e["method"], e["dataset"])] = counts.get((e["method"], e["dataset"]), 0) + 1
    return counts


def missing_lines(expected: list[dict], paper: dict | None = None) -> list[str]:
    missing = [e for e in expected if not Path(e["file"]).exists()]
    if not missing:
        return []
    return ["**Missing runs** (failed or not finished; not averaged in): "
            + ", ".join(f"{method_name(paper or {}, e['method'])} {e['space']}/{e['dataset']} seed {e['seed']}" for e in missing), ""]


def retrain_nb201_files(spec: dict, space_runs: pd.DataFrame) -> list[str]:
    """The NB201 retrainings the spec names (`retrain_nb201`), else those finished beside the runs."""
    if spec.get("retrain_nb201") is not None:
        return list(spec["retrain_nb201"])
    return [str(Path(f).parents[1] / "retrain" / "result.json") for f in space_runs["result_file"]]


def figures(space: str, space_runs: pd.DataFrame, results_dir: Path, paper: dict, entries: list[dict],
            optimal: dict | None = None) -> list[Path]:
    """Every figure the space's runs support; a method without the data simply has none."""
    out_dir = results_dir / space / "figures"
    files = list(space_runs["result_file"])
    written = []
    if space == "nb201":
        written += trajectory_plot([read_json(f) for f in files], out_dir / "search_trajectory.png", paper,
                                   (optimal or {}).get("cifar10_test_acc"))
    arch_files = [Path(f).parents[1] / "derive" / "arch.json" for f in files]
    written += heatmaps([a for a in arch_files if a.exists()], out_dir, paper)
    hep = {}
    for f in files:  # HEP-NAS: sub-supernet accuracies after each split
        log = Path(f).parents[1]
        levels = {p.parent.name: read_json(p) for p in sorted(log.glob("h*/hierarchy.json"))}
        if levels:
            # each child's validation accuracy after its last SMD epoch
            label = f"{method_name(paper, log.name)}, {log.parents[1].name} {log.parents[0].name.replace('seed', 'seed ')}"
            hep[label] = {name: [c["val_acc"][-1] for c in lv.get("children", [])] for name, lv in levels.items()}
    written += hierarchy_plot(hep, out_dir / "hep_sub_supernets.png")
    written += ranking_plot(ranking_series(entries, paper), out_dir / "ranking_kendall_tau.png")
    return written


def report(spec: dict, runtime: dict, results_dir: Path, paper: dict | None = None,
           ledger_dir: str | Path | None = None) -> list[Path]:
    """REPORT.md/.html over the finished runs in results/, and the NAS-Bench-201 reproductions
    recorded in the ledger (`ledger_dir`, else spec's `ledger`, else ledger/ where it runs).
    REPORT.html carries its figures inside it, so it renders from any artifact store. Returns the
    report's files (REPORT.md, REPORT.html, the figures): what the report's tracking run keeps."""
    from .ledger import load_ledger
    from .ledger_tables import ledger_markdown
    from .reproduction import load_paper_results

    results_dir = Path(results_dir)
    ledger_dir = Path(ledger_dir if ledger_dir is not None else spec.get("ledger", "ledger"))
    records = load_ledger(ledger_dir)
    expected = spec.get("expected") or [{"file": f} for f in spec["results"]]
    existing = [e["file"] for e in expected if Path(e["file"]).exists()]
    runs = runs_table(existing, spec["profile"])
    paper = paper if paper is not None else spec.get("paper") or load_paper_results()
    names = paper.get("names") or {}
    sections = [f"# nasflow report (profile `{spec['profile']}`)", ""]
    if spec["profile"] != "paper":
        sections += [f"Profile `{spec['profile']}`: the runs in results/ are at reduced scale, not a reproduction of "
                     "the papers' numbers (the ledger's paper-profile records are).", ""]
    sections += missing_lines([e for e in expected if "method" in e], paper)
    written = []
    for space in spec["spaces"]:
        space_runs = runs[runs["space"] == space] if len(runs) else runs
        counts = expected_seeds([e for e in expected if "method" in e], space)
        with atomic_path(results_dir / space / "summary.parquet") as tmp:
            space_runs.drop(columns="result_file", errors="ignore").to_parquet(tmp, index=False)
        ledger_text = ledger_markdown(records, paper, str(ledger_dir)) if space == "nb201" else []
        if space_runs.empty:
            sections += [f"## {space}: no finished runs", "", *ledger_text]
            continue
        entries, optimal = [], None
        if space == "nb201":
            bench = load_benchmark(runtime["benchmark"]["source"], runtime["benchmark"]["path"])
            optimal = bench.optimal()
            entries = ranking_entries(spec.get("ranking", []), space_runs)
            text = (nb201_markdown(space_runs, optimal, counts, paper, len(bench))
                    + retrain_nb201_markdown(space_runs, retrain_nb201_files(spec, space_runs), paper)
                    + ranking_markdown(entries, paper))
        else:
            text = darts_markdown(space_runs, results_dir, counts, paper)
        repro = reproduction_table(space_runs, paper, space, spec["profile"])
        with atomic_path(results_dir / space / "reproduction.parquet") as tmp:
            repro.to_parquet(tmp, index=False)
        if not repro.empty:
            text += [f"### Reproduction ({space}): the papers' numbers beside the runs in results/", "",
                     *reproduction_markdown(repro[repro["n_seeds"] > 0], LABELS, names=names), ""]
        text += ledger_text
        space_figures = figures(space, space_runs, results_dir, paper, entries, optimal)
        text += ["### Figures", ""] + [f"![{p.stem}]({_relative(p, results_dir)})" for p in space_figures] + [""]
        written += space_figures
        write_text(results_dir / space / "summary.md", "\n".join(text))
        sections += text
    if "nb201" not in spec["spaces"] and not records.empty:
        sections += ["## NAS-Bench-201", "", *ledger_markdown(records, paper, str(ledger_dir))]
    markdown_text = "\n".join(sections)
    write_text(results_dir / "REPORT.md", markdown_text)
    write_text(results_dir / "REPORT.html", to_html(markdown_text, "nasflow report", results_dir))
    runs_expected = [e for e in expected if "method" in e]
    write_plot_data(results_dir, runs_expected)
    write_metrics(Path(spec.get("metrics", results_dir / "metrics.json")), spec["profile"], runs_expected)
    return [results_dir / "REPORT.md", results_dir / "REPORT.html", *written]
