"""The comparison report: per-run rows, mean +- std over seeds, and the search trajectory plot."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .atomic import atomic_path, read_json, write_json, write_text
from .benchmark import METRICS, load_benchmark
from .tracking import Tracker

LABELS = {"cifar10_valid_acc": "C10 valid", "cifar10_test_acc": "C10 test", "cifar100_valid_acc": "C100 valid",
          "cifar100_test_acc": "C100 test", "imagenet16_120_valid_acc": "IN16 valid",
          "imagenet16_120_test_acc": "IN16 test"}


def runs_table(lookup_files: list[str]) -> pd.DataFrame:
    rows = []
    for f in lookup_files:
        r = read_json(f)
        row = {k: r[k] for k in ("method", "space", "dataset", "seed", "arch_str", "rank", "device", "supernet_key")}
        row.update({m: r[m] for m in METRICS})
        row.update({f"wall_{stage}_s": t for stage, t in r["wall_time_s"].items()})
        row["search_cost_h"] = sum(r["wall_time_s"].values()) / 3600
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """mean +- std over seeds per method and search dataset; n says how many seeds it rests on."""
    g = runs.groupby(["method", "dataset"], sort=True)
    out = g[[*METRICS, "search_cost_h"]].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["n_seeds"] = g.size()
    return out.reset_index()


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f}±{std:.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # arch strings are full of pipes, which would end the table cell


def markdown(summary: pd.DataFrame, runs: pd.DataFrame, optimal: dict, profile: str) -> str:
    head = ["Method", "Searched on", "Seeds", "Search cost (h)"] + [LABELS[m] for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [r["method"], r["dataset"], str(r["n_seeds"]), f"{r['search_cost_h_mean']:.3f}"]
        cells += [_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| Optimal | - | - | - | " + " | ".join(f"{optimal[m]:.2f}" for m in METRICS) + " |")
    per_run = ["| Method | Dataset | Seed | Arch | Rank | " + " | ".join(LABELS[m] for m in METRICS) + " | Wall (s) |",
               "|" + "---|" * (6 + len(METRICS))]
    for _, r in runs.sort_values(["method", "dataset", "seed"]).iterrows():
        wall = sum(r[c] for c in runs.columns if c.startswith("wall_"))
        per_run.append(f"| {r['method']} | {r['dataset']} | {r['seed']} | `{_cell(r['arch_str'])}` | {r['rank']} | "
                       + " | ".join(f"{r[m]:.2f}" for m in METRICS) + f" | {wall:.1f} |")
    note = ("" if profile == "paper" else
            f"\nProfile `{profile}`: a reduced-scale run, not a reproduction of the papers' numbers.\n")
    return "\n".join(["## NAS-Bench-201", note, *lines, "", "### Runs", "", *per_run, ""])


def trajectory_plot(lookup_files: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [read_json(f) for f in lookup_files]
    methods = sorted({r["method"] for r in results})
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for r in (r for r in results if r["method"] == method):
            t = r["trajectory"]
            ax.plot([p["epoch"] for p in t], [p["cifar10_test_acc"] for p in t], marker=".",
                    label=f"{r['dataset']} seed {r['seed']}")
        ax.set_title(f"{method}: derived cell per search epoch")
        ax.set_xlabel("search epoch")
        ax.set_ylabel("NAS-Bench-201 CIFAR-10 test acc (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def report(spec: dict, runtime: dict, results_dir: Path) -> None:
    runs = runs_table(spec["lookups"])
    bench = load_benchmark(runtime["benchmark"]["source"], runtime["benchmark"]["path"])
    sections, metrics = [f"# nasflow report (profile `{spec['profile']}`)", ""], {}
    for space in spec["spaces"]:
        space_runs = runs[runs["space"] == space]
        summary = summary_table(space_runs)
        space_dir = results_dir / space
        with atomic_path(space_dir / "summary.parquet") as tmp:
            space_runs.to_parquet(tmp, index=False)
        text = markdown(summary, space_runs, bench.optimal(), spec["profile"])
        write_text(space_dir / "summary.md", text)
        figure = space_dir / "figures" / "search_trajectory.png"
        trajectory_plot([f for f in spec["lookups"] if read_json(f)["space"] == space], figure)
        sections += [text, f"![search trajectory]({figure.relative_to(results_dir)})", ""]
        metrics[space] = {f"{r['method']}/{r['dataset']}": {**{m: r[f"{m}_mean"] for m in METRICS},
                                                           "n_seeds": int(r["n_seeds"])}
                          for _, r in summary.iterrows()}
    write_text(results_dir / "REPORT.md", "\n".join(sections))
    tracker = Tracker(runtime["tracking"], "report", {"stage": "report", "params_hash": runtime["config_hash"],
                                                     "git_commit": runtime["git_commit"], "profile": spec["profile"]})
    tracker.log_artifact(results_dir / "REPORT.md")
    for space in spec["spaces"]:
        tracker.log_artifact(results_dir / space / "figures" / "search_trajectory.png")
    tracker.finish()
    write_json(results_dir / "metrics.json", metrics)
