"""The comparison report: per-run rows (summary.parquet), the papers' tables as mean +- std over
seeds with the seed count shown, the reproduction table against params/paper_results.yaml, and
the figures; REPORT.md and REPORT.html."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .atomic import atomic_path, read_json, write_json, write_text
from .benchmark import METRICS, load_benchmark
from .report_figures import heatmaps, hierarchy_plot, ranking_plot, trajectory_plot
from .reproduction import reproduction_markdown, reproduction_table
from .tracking import Tracker

LABELS = {"cifar10_valid_acc": "C10 valid", "cifar10_test_acc": "C10 test", "cifar100_valid_acc": "C100 valid",
          "cifar100_test_acc": "C100 test", "imagenet16_120_valid_acc": "IN16 valid",
          "imagenet16_120_test_acc": "IN16 test", "test_error": "Test error (%)"}
RETRAIN_COLUMNS = ["test_error", "test_acc", "params_m", "flops_m"]
NOT_SEARCH = ("lookup", "retrain")  # stages after the search; their time is not search cost


def search_cost_s(wall_time_s: dict[str, float]) -> float:
    """Search cost in seconds: every training stage the result rests on (up to an early stop) plus
    derive; the lookup and the retraining come after the search."""
    return float(sum(t for stage, t in wall_time_s.items() if stage not in NOT_SEARCH))


def runs_table(result_files: list[str | Path], profile: str = "") -> pd.DataFrame:
    rows = []
    for f in result_files:
        r = read_json(f)
        row = {k: r[k] for k in ("method", "space", "dataset", "seed", "device", "supernet_key")}
        row["profile"] = profile
        row["arch"] = r.get("arch_str", r.get("arch"))
        row.update({k: r[k] for k in (*METRICS, "rank", *RETRAIN_COLUMNS, "selected_epoch") if k in r})
        row.update({f"wall_{stage}_s": t for stage, t in r["wall_time_s"].items()})
        row["search_cost_h"] = search_cost_s(r["wall_time_s"]) / 3600
        row["result_file"] = str(f)
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame, columns: list[str], expected: dict | None = None) -> pd.DataFrame:
    """mean +- std over seeds per method and search dataset. n_seeds is how many finished;
    n_expected how many were asked for, so a failed seed shows instead of silently shrinking n."""
    g = runs.groupby(["method", "dataset"], sort=True)
    out = g[[c for c in (*columns, "search_cost_h") if c in runs]].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["n_seeds"] = g.size()
    out = out.reset_index()
    out["n_expected"] = [(expected or {}).get((m, d), n) for m, d, n in zip(out["method"], out["dataset"], out["n_seeds"])]
    return out


def _pm(mean: float, std: float) -> str:
    if isinstance(mean, float) and math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f}±{std:.2f}"


def _seeds(r) -> str:
    return str(r["n_seeds"]) if r["n_seeds"] == r["n_expected"] else f"{r['n_seeds']} of {r['n_expected']}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # arch strings are full of pipes, which would end the table cell


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def nb201_markdown(runs: pd.DataFrame, optimal: dict, expected: dict | None = None) -> list[str]:
    summary = summary_table(runs, list(METRICS), expected)
    rows = [[r["method"], r["dataset"], _seeds(r), f"{r['search_cost_h_mean']:.3f}",
             *(_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS)] for _, r in summary.iterrows()]
    rows.append(["Optimal", "-", "-", "-", *(f"{optimal[m]:.2f}" for m in METRICS)])
    per_run = [[r["method"], r["dataset"], str(r["seed"]), f"`{_cell(r['arch'])}`", str(r["rank"]),
                *(f"{r[m]:.2f}" for m in METRICS), f"{r['search_cost_h'] * 3600:.1f}", r["device"]]
               for _, r in runs.sort_values(["method", "dataset", "seed"]).iterrows()]
    return ["## NAS-Bench-201", "",
            *_table(["Method", "Searched on", "Seeds", "Search cost (h)", *(LABELS[m] for m in METRICS)], rows),
            "", "### Runs", "",
            *_table(["Method", "Dataset", "Seed", "Arch", "Rank", *(LABELS[m] for m in METRICS), "Search (s)",
                     "Device"], per_run), ""]


def darts_markdown(runs: pd.DataFrame, results_dir: Path, expected: dict | None = None) -> list[str]:
    summary = summary_table(runs, RETRAIN_COLUMNS, expected)
    rows = [[r["method"], r["dataset"], _seeds(r), _pm(r["test_error_mean"], r["test_error_std"]),
             f"{r['params_m_mean']:.2f}", f"{r['flops_m_mean']:.0f}", f"{r['search_cost_h_mean']:.3f}"]
            for _, r in summary.iterrows()]
    lines = ["## DARTS space (searched, then trained from scratch)", "",
             *_table(["Method", "Searched on", "Seeds", "Test error (%)", "Params (M)", "FLOPs (M)",
                      "Search cost (h)"], rows), "", "### Searched cells", ""]
    for _, r in runs.sort_values(["method", "dataset", "seed"]).iterrows():
        picture = Path(r["result_file"]).parents[1] / "derive" / "cells.png"
        lines.append(f"- {r['method']} {r['dataset']} seed {r['seed']}: test error {r['test_error']:.2f}%, "
                     f"`{r['arch']}`")
        if picture.exists():
            lines.append(f"  ![cells]({_relative(picture, results_dir)})")
    return lines + [""]


def _relative(path: Path, results_dir: Path) -> str:
    return str(Path(path).resolve().relative_to(results_dir.resolve()))


def expected_seeds(expected: list[dict], space: str) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for e in expected:
        if e["space"] == space:
            counts[(e["method"], e["dataset"])] = counts.get((e["method"], e["dataset"]), 0) + 1
    return counts


def missing_lines(expected: list[dict]) -> list[str]:
    missing = [e for e in expected if not Path(e["file"]).exists()]
    if not missing:
        return []
    return ["**Missing runs** (failed or not finished; not averaged in): "
            + ", ".join(f"{e['method']} {e['space']}/{e['dataset']} seed {e['seed']}" for e in missing), ""]


def ranking_markdown(ranking_files: list[str]) -> list[str]:
    """Kendall tau / Spearman rho of every supernet after each training stage."""
    rows = []
    for f in (f for f in ranking_files if Path(f).exists()):
        r = read_json(f)
        for p in r["per_stage"]:
            if p["kendall_tau"] is not None:
                rows.append([r["method"], r["dataset"], str(r["seed"]), p["stage"], str(p["n"]),
                             f"{p['kendall_tau']:.3f}", f"{p['spearman_rho']:.3f}"])
    if not rows:
        return []
    return ["### Supernet ranking: supernet accuracy vs benchmark accuracy of sampled cells", "",
            *_table(["Method", "Dataset", "Seed", "After stage", "Cells", "Kendall tau", "Spearman rho"], rows), ""]


def figures(space: str, space_runs: pd.DataFrame, results_dir: Path) -> list[Path]:
    """Every figure the space's runs support; a method without the data simply has none."""
    out_dir = results_dir / space / "figures"
    files = list(space_runs["result_file"])
    written = []
    if space == "nb201":
        written += trajectory_plot([read_json(f) for f in files], out_dir / "search_trajectory.png")
    arch_files = [Path(f).parents[1] / "derive" / "arch.json" for f in files]
    written += heatmaps([a for a in arch_files if a.exists()], out_dir)
    hep = {}
    for f in files:  # HEP-NAS: sub-supernet accuracies after each split
        log = Path(f).parents[1]
        levels = {p.parent.name: read_json(p) for p in sorted(log.glob("h*/hierarchy.json"))}
        if levels:
            # each child's validation accuracy after its last SMD epoch
            hep[f"{log.name} {log.parents[0].name}"] = {name: [c["val_acc"][-1] for c in lv.get("children", [])]
                                                        for name, lv in levels.items()}
    written += hierarchy_plot(hep, out_dir / "hep_sub_supernets.png")
    ranking = {}
    for f in files:  # ranking diagnostics, per stage where a method records them
        rank_file = Path(f).parents[1] / "ranking" / "result.json"
        if rank_file.exists():
            r = read_json(rank_file)
            points = [(p["stage"], p["kendall_tau"]) for p in r["per_stage"] if p["kendall_tau"] is not None]
            if points:
                ranking[f"{r['method']} seed {r['seed']}"] = points
    written += ranking_plot(ranking, out_dir / "ranking_kendall_tau.png")
    return written


def to_html(markdown_text: str, title: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "img{max-width:100%}code{font-size:11px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head>" \
           f"<body>{body}</body></html>\n"


def report(spec: dict, runtime: dict, results_dir: Path, paper: dict | None = None,
           ledger_dir: str | Path | None = None) -> None:
    """REPORT.md/.html over the finished runs in results/, and the NAS-Bench-201 reproductions
    recorded in the ledger (`ledger_dir`, else spec's `ledger`, else ledger/ where it runs)."""
    from .ledger import load_ledger
    from .report_ledger import ledger_markdown
    from .reproduction import load_paper_results

    ledger_dir = Path(ledger_dir if ledger_dir is not None else spec.get("ledger", "ledger"))
    records = load_ledger(ledger_dir)
    expected = spec.get("expected") or [{"file": f} for f in spec["results"]]
    existing = [e["file"] for e in expected if Path(e["file"]).exists()]
    runs = runs_table(existing, spec["profile"])
    paper = paper if paper is not None else spec.get("paper") or load_paper_results()
    sections = [f"# nasflow report (profile `{spec['profile']}`)", ""]
    if spec["profile"] != "paper":
        sections += [f"Profile `{spec['profile']}`: the runs in results/ are at reduced scale, not a reproduction of "
                     "the papers' numbers (the ledger's paper-profile records are).", ""]
    sections += missing_lines([e for e in expected if "method" in e])
    metrics, written = {}, []
    for space in spec["spaces"]:
        space_runs = runs[runs["space"] == space] if len(runs) else runs
        counts = expected_seeds([e for e in expected if "method" in e], space)
        with atomic_path(results_dir / space / "summary.parquet") as tmp:
            space_runs.drop(columns="result_file", errors="ignore").to_parquet(tmp, index=False)
        ledger_text = ledger_markdown(records, paper, str(ledger_dir)) if space == "nb201" else []
        if space_runs.empty:
            sections += [f"## {space}: no finished runs", "", *ledger_text]
            continue
        columns = list(METRICS) if space == "nb201" else RETRAIN_COLUMNS
        if space == "nb201":
            bench = load_benchmark(runtime["benchmark"]["source"], runtime["benchmark"]["path"])
            text = nb201_markdown(space_runs, bench.optimal(), counts) + ranking_markdown(spec.get("ranking", []))
        else:
            text = darts_markdown(space_runs, results_dir, counts)
        repro = reproduction_table(space_runs, paper, space, spec["profile"])
        with atomic_path(results_dir / space / "reproduction.parquet") as tmp:
            repro.to_parquet(tmp, index=False)
        if not repro.empty:
            text += [f"### Reproduction ({space}): the papers' numbers beside the runs in results/", "",
                     *reproduction_markdown(repro[repro["n_seeds"] > 0], LABELS), ""]
        text += ledger_text
        space_figures = figures(space, space_runs, results_dir)
        text += [f"![{p.stem}]({_relative(p, results_dir)})" for p in space_figures] + [""]
        written += space_figures
        write_text(results_dir / space / "summary.md", "\n".join(text))
        sections += text
        metrics[space] = {f"{r['method']}/{r['dataset']}": {**{c: r[f"{c}_mean"] for c in columns},
                                                           "n_seeds": int(r["n_seeds"])}
                          for _, r in summary_table(space_runs, columns).iterrows()}
    if "nb201" not in spec["spaces"] and not records.empty:
        sections += ["## NAS-Bench-201", "", *ledger_markdown(records, paper, str(ledger_dir))]
    markdown_text = "\n".join(sections)
    write_text(results_dir / "REPORT.md", markdown_text)
    write_text(results_dir / "REPORT.html", to_html(markdown_text, "nasflow report"))
    tracker = Tracker(runtime["tracking"], "report", {"stage": "report", "params_hash": runtime["config_hash"],
                                                     "git_commit": runtime["git_commit"], "profile": spec["profile"]})
    for path in [results_dir / "REPORT.md", results_dir / "REPORT.html", *written]:
        tracker.log_artifact(path)
    tracker.finish()
    write_json(results_dir / "metrics.json", metrics)
