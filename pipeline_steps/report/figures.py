"""The report's figures: accuracy of the selected cell per epoch and criterion (DARTS-PT Fig. 4,
OStr Fig. 9), HEP-NAS sub-supernet accuracies per hierarchy, and supernet ranking correlations
(Kendall tau per stage); the heat maps are in heatmaps.py. Each returns the PNGs it wrote.
Panels of one figure share their y axis, every line is named in a legend at readable size, and
lines that coincide are drawn so that both stay visible and the legend says so."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common.atomic import atomic_path
from .reproduction import criterion_name, method_name
from .tables import method_order

FONT = {"font.size": 10, "axes.titlesize": 11, "legend.fontsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
STYLES = ("-", "--", "-.", ":")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(FONT)
    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    _plt().close(fig)
    return path


def _grid(plt, n: int, width: float, height: float, ncols: int = 3):
    ncols = min(n, ncols)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), sharey=True, squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _mean_curves(results: list[dict], criterion: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Epochs, mean and std over seeds of a criterion's C10 test accuracy, and the stage per epoch."""
    per_epoch: dict[int, list[float]] = {}
    stages: dict[int, str] = {}
    for r in results:
        for p in r["trajectories"][criterion]:
            per_epoch.setdefault(p["epoch"], []).append(p["cifar10_test_acc"])
            stages[p["epoch"]] = p.get("stage", "supernet")
    epochs = np.array(sorted(per_epoch))
    values = [per_epoch[e] for e in epochs]
    return (epochs, np.array([np.mean(v) for v in values]), np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0
                                                                        for v in values]), [stages[e] for e in epochs])


def _panels(results: list[dict], paper: dict) -> list[tuple[list[str], list[dict]]]:
    """One panel per method; methods whose traced cells are the same for every seed (e.g. OStr-DARTS
    and OStr-DARTS* read off one shared supernet) share one panel."""
    panels: list[tuple[list[str], list[dict]]] = []
    for method in method_order(paper, {r["method"] for r in results}):
        own = sorted((r for r in results if r["method"] == method), key=lambda r: r["seed"])
        twin = next((p for p in panels if [(r["seed"], r["trajectories"]) for r in p[1]]
                     == [(r["seed"], r["trajectories"]) for r in own]), None)
        if twin:
            twin[0].append(method)
        else:
            panels.append(([method], own))
    return panels


def trajectory_plot(results: list[dict], path: Path, paper: dict | None = None,
                    optimal: float | None = None) -> list[Path]:
    """Benchmark C10 test accuracy of the cell each criterion selects after every epoch, mean (± std
    band) over seeds, one panel per method, one shared y axis."""
    if not results:
        return []
    paper = paper or {}
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    panels = _panels(results, paper)
    fig, axes = _grid(plt, len(panels), 5.2, 4.4)
    for ax, (methods, runs) in zip(axes, panels):
        drawn: dict[str, np.ndarray] = {}
        criteria = sorted(runs[0]["trajectories"])
        for i, criterion in enumerate(criteria):
            epochs, mean, std, stages = _mean_curves(runs, criterion)
            same = next((c for c, m in drawn.items() if m.shape == mean.shape and np.allclose(m, mean)), None)
            label = criterion_name(paper, criterion) + (f" (same cells as {criterion_name(paper, same)})" if same else "")
            # later lines thinner and on top, so a line that coincides with an earlier one still shows
            ax.plot(epochs, mean, marker=MARKERS[i % len(MARKERS)], linestyle=STYLES[i % len(STYLES)],
                    linewidth=3.2 - 0.7 * i, markersize=8 - 1.2 * i, zorder=2 + i, label=label)
            if len(runs) > 1:
                ax.fill_between(epochs, np.clip(mean - std, 0, 100), np.clip(mean + std, 0, 100), alpha=0.12, zorder=1)
            drawn[criterion] = mean
        for x, (stage, before) in zip(epochs[1:], zip(stages[1:], stages)):
            if stage != before:  # where the method's own stages (e.g. DARTS-PT's selection) take over
                ax.axvline(x - 0.5, color="grey", linewidth=0.9, linestyle="--", zorder=0)
                ax.annotate(stage, (x - 0.5, 1.0), xycoords=("data", "axes fraction"), fontsize=8, color="grey",
                            ha="left", va="top", xytext=(2, -2), textcoords="offset points")
        if optimal is not None:
            ax.axhline(optimal, color="grey", linewidth=0.9, linestyle=(0, (1, 3)), zorder=0,
                       label=f"best cell in NB201 ({optimal:.2f})")
        seeds = ", ".join(str(r["seed"]) for r in runs)
        ax.set_title(", ".join(method_name(paper, m) for m in methods) + f"\n(seeds {seeds})")
        ax.set_xlabel("epoch (supernet, then the method's stages)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False,
                  title="mean over seeds, band ± std" if len(runs) > 1 else None, title_fontsize=9)
    for ax in axes[::3]:  # the first panel of each row
        ax.set_ylabel("NAS-Bench-201 CIFAR-10 test acc (%)")
    fig.suptitle("Selected cell after every epoch, by selection criterion")
    return [_save(fig, path)]


def hierarchy_plot(logs: dict[str, dict], path: Path) -> list[Path]:
    """HEP-NAS Fig. 3: validation accuracy of every sub-supernet after each split, per run; the
    sub-supernet kept (the best) is ringed. `logs` maps a run label to {hierarchy: [child accuracies]}."""
    if not logs:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    levels = list(next(iter(logs.values())))
    for i, (label, per_level) in enumerate(sorted(logs.items())):
        offset = 0.12 * (i - (len(logs) - 1) / 2)
        for level, (name, accs) in enumerate(per_level.items()):
            x = np.full(len(accs), level + offset)
            ax.scatter(x, accs, s=36, marker=MARKERS[i % len(MARKERS)], color=f"C{i}", label=label if not level else None)
            if accs:
                ax.scatter([level + offset], [max(accs)], s=140, facecolors="none", edgecolors=f"C{i}", linewidths=1.5)
    ax.scatter([], [], s=140, facecolors="none", edgecolors="black", label="kept (best) sub-supernet")
    ax.set_xticks(range(len(levels)), levels)
    ax.set_xlabel("hierarchy (split)")
    ax.set_ylabel("sub-supernet validation acc (%)")
    ax.set_title("HEP-NAS: sub-supernets after each split")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False, ncol=2)
    return [_save(fig, path)]


def ranking_plot(series: dict[str, dict[int, list[tuple[str, float]]]], path: Path,
                 ylabel: str = "Kendall tau") -> list[Path]:
    """Ranking correlation of supernet accuracy with the benchmark after each training stage, mean
    (± std) over seeds, one line per supernet chain (methods that share one share the line)."""
    if not series:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 4.4), layout="constrained")
    longest = 1
    for i, (label, per_seed) in enumerate(sorted(series.items())):
        chain = max(per_seed.values(), key=len)
        longest = max(longest, len(chain))
        values = [[s[k][1] for s in per_seed.values() if len(s) > k] for k in range(len(chain))]
        mean = [np.mean(v) for v in values]
        std = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
        x = np.arange(len(chain)) + 0.05 * (i - (len(series) - 1) / 2)  # side by side, not on top of each other
        ax.errorbar(x, mean, yerr=std, marker=MARKERS[i % len(MARKERS)], linestyle=STYLES[i % len(STYLES)], capsize=3,
                    label=f"{label}: {' > '.join(s for s, _ in chain)} ({len(per_seed)} seed{'s' * (len(per_seed) > 1)})")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(longest), ["supernet", *(f"stage {k}" for k in range(1, longest))])
    ax.set_xlabel("after training stage (the method's stages are named in the legend)")
    ax.set_ylabel(f"{ylabel} (mean ± std over seeds)")
    ax.set_title("Supernet ranking vs NAS-Bench-201, once per supernet")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    return [_save(fig, path)]
