"""The comparison report: per-run rows, mean +- std over seeds, the search trajectory plot and
the searched DARTS cells."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .atomic import atomic_path, read_json, write_json, write_text
from .benchmark import METRICS, load_benchmark
from .tracking import Tracker

LABELS = {"cifar10_valid_acc": "C10 valid", "cifar10_test_acc": "C10 test", "cifar100_valid_acc": "C100 valid",
          "cifar100_test_acc": "C100 test", "imagenet16_120_valid_acc": "IN16 valid",
          "imagenet16_120_test_acc": "IN16 test"}
RETRAIN_COLUMNS = ["test_error", "test_acc", "params_m", "flops_m"]


def runs_table(result_files: list[str]) -> pd.DataFrame:
    rows = []
    for f in result_files:
        r = read_json(f)
        row = {k: r[k] for k in ("method", "space", "dataset", "seed", "device", "supernet_key")}
        row["arch"] = r.get("arch_str", r.get("arch"))
        row.update({k: r[k] for k in (*METRICS, "rank", *RETRAIN_COLUMNS) if k in r})
        row.update({f"wall_{stage}_s": t for stage, t in r["wall_time_s"].items()})
        # search = every training stage the result rests on (up to an early stop) plus derive
        row["search_cost_h"] = sum(t for stage, t in r["wall_time_s"].items() if stage not in ("lookup", "retrain")) / 3600
        row["result_file"] = str(f)
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """mean +- std over seeds per method and search dataset; n_seeds says how many it rests on."""
    g = runs.groupby(["method", "dataset"], sort=True)
    out = g[[*columns, "search_cost_h"]].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["n_seeds"] = g.size()
    return out.reset_index()


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f}±{std:.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # arch strings are full of pipes, which would end the table cell


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def nb201_markdown(runs: pd.DataFrame, optimal: dict) -> list[str]:
    summary = summary_table(runs, list(METRICS))
    rows = [[r["method"], r["dataset"], str(r["n_seeds"]), f"{r['search_cost_h_mean']:.3f}",
             *(_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS)] for _, r in summary.iterrows()]
    rows.append(["Optimal", "-", "-", "-", *(f"{optimal[m]:.2f}" for m in METRICS)])
    per_run = [[r["method"], r["dataset"], str(r["seed"]), f"`{_cell(r['arch'])}`", str(r["rank"]),
                *(f"{r[m]:.2f}" for m in METRICS), f"{r['search_cost_h'] * 3600:.1f}"]
               for _, r in runs.sort_values(["method", "dataset", "seed"]).iterrows()]
    return ["## NAS-Bench-201", "",
            *_table(["Method", "Searched on", "Seeds", "Search cost (h)", *(LABELS[m] for m in METRICS)], rows),
            "", "### Runs", "",
            *_table(["Method", "Dataset", "Seed", "Arch", "Rank", *(LABELS[m] for m in METRICS), "Search (s)"],
                    per_run),
            "", "![search trajectory](nb201/figures/search_trajectory.png)", ""]


def darts_markdown(runs: pd.DataFrame, results_dir: Path) -> list[str]:
    summary = summary_table(runs, RETRAIN_COLUMNS)
    rows = [[r["method"], r["dataset"], str(r["n_seeds"]), _pm(r["test_error_mean"], r["test_error_std"]),
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
            lines.append(f"  ![cells]({picture.resolve().relative_to(results_dir.resolve())})")
    return lines + [""]


def trajectory_plot(result_files: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [read_json(f) for f in result_files]
    methods = sorted({r["method"] for r in results})
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, method in zip(axes[0], methods):
        for r in (r for r in results if r["method"] == method):
            for i, (criterion, t) in enumerate(r["trajectories"].items()):
                label = f"{criterion}, seed {r['seed']}" if len(r["trajectories"]) > 1 else f"seed {r['seed']}"
                ax.plot([p["epoch"] for p in t], [p["cifar10_test_acc"] for p in t], marker=".", label=label,
                        color=colours[i % len(colours)] if len(r["trajectories"]) > 1 else None,
                        linestyle=["-", "--", ":", "-."][int(r["seed"]) % 4] if len(r["trajectories"]) > 1 else "-")
            starts = [p["epoch"] for p, q in zip(t[1:], t) if p.get("stage") != q.get("stage")]
            for x in starts:  # where the method's own stage (e.g. DARTS-PT selection) takes over
                ax.axvline(x - 0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_title(f"{method}: selected cell per epoch")
        ax.set_xlabel("epoch (supernet, then the method's stages)")
        ax.set_ylabel("NAS-Bench-201 CIFAR-10 test acc (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def report(spec: dict, runtime: dict, results_dir: Path) -> None:
    runs = runs_table(spec["results"])
    sections, metrics, figures = [f"# nasflow report (profile `{spec['profile']}`)", ""], {}, []
    if spec["profile"] != "paper":
        sections += [f"Profile `{spec['profile']}`: reduced scale, not a reproduction of the papers' numbers.", ""]
    for space in spec["spaces"]:
        space_runs = runs[runs["space"] == space]
        with atomic_path(results_dir / space / "summary.parquet") as tmp:
            space_runs.drop(columns="result_file").to_parquet(tmp, index=False)
        if space == "nb201":
            bench = load_benchmark(runtime["benchmark"]["source"], runtime["benchmark"]["path"])
            text = nb201_markdown(space_runs, bench.optimal())
            figure = results_dir / "nb201" / "figures" / "search_trajectory.png"
            trajectory_plot(list(space_runs["result_file"]), figure)
            figures.append(figure)
            columns = list(METRICS)
        else:
            text = darts_markdown(space_runs, results_dir)
            columns = RETRAIN_COLUMNS
        write_text(results_dir / space / "summary.md", "\n".join(text))
        sections += text
        metrics[space] = {f"{r['method']}/{r['dataset']}": {**{c: r[f"{c}_mean"] for c in columns},
                                                           "n_seeds": int(r["n_seeds"])}
                          for _, r in summary_table(space_runs, columns).iterrows()}
    write_text(results_dir / "REPORT.md", "\n".join(sections))
    tracker = Tracker(runtime["tracking"], "report", {"stage": "report", "params_hash": runtime["config_hash"],
                                                     "git_commit": runtime["git_commit"], "profile": spec["profile"]})
    for path in [results_dir / "REPORT.md", *figures]:
        tracker.log_artifact(path)
    tracker.finish()
    write_json(results_dir / "metrics.json", metrics)
