"""The report's figures: accuracy of the selected cell per epoch and criterion (DARTS-PT Fig. 4,
OStr Fig. 9), alpha and score heat maps per edge, HEP-NAS sub-supernet accuracies per hierarchy,
and supernet ranking correlations (Kendall tau per stage). Each returns the PNGs it wrote."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path, read_json


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    _plt().close(fig)
    return path


def trajectory_plot(results: list[dict], path: Path) -> list[Path]:
    """Benchmark C10 test accuracy of the cell each criterion selects after every epoch, per method."""
    plt = _plt()
    methods = sorted({r["method"] for r in results})
    if not methods:
        return []
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, method in zip(axes[0], methods):
        for r in (r for r in results if r["method"] == method):
            several = len(r["trajectories"]) > 1
            for i, (criterion, t) in enumerate(sorted(r["trajectories"].items())):
                ax.plot([p["epoch"] for p in t], [p["cifar10_test_acc"] for p in t], marker=".",
                        label=f"{criterion}, seed {r['seed']}" if several else f"seed {r['seed']}",
                        color=colours[i % len(colours)] if several else None,
                        linestyle=["-", "--", ":", "-."][int(r["seed"]) % 4] if several else "-")
            starts = [p["epoch"] for p, q in zip(t[1:], t) if p.get("stage") != q.get("stage")]
            for x in starts:  # where the method's own stages (e.g. DARTS-PT selection) take over
                ax.axvline(x - 0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_title(f"{method}: selected cell per epoch")
        ax.set_xlabel("epoch (supernet, then the method's stages)")
        ax.set_ylabel("NAS-Bench-201 CIFAR-10 test acc (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return [_save(fig, path)]


def heatmaps(arch_files: list[Path], out_dir: Path) -> list[Path]:
    """Per run: softmax(alpha) per edge and op (masked ops blank), and the method's score where it
    selects by one (OStr), for each cell type."""
    plt = _plt()
    written = []
    for f in arch_files:
        arch = read_json(f)
        panels = [("softmax(alpha)", kind, np.asarray(a, dtype=float)) for kind, a in arch["alpha"].items()]
        panels += [(name, kind, np.asarray(s, dtype=float)) for name, per_kind in arch.get("scores", {}).items()
                   for kind, s in per_kind.items()]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 0.35 * len(panels[0][2]) + 1.8),
                                 squeeze=False)
        for ax, (name, kind, values) in zip(axes[0], panels):
            mask = np.asarray(arch["mask"][kind], dtype=bool)
            if name == "softmax(alpha)":
                values = np.where(mask, values, -np.inf)
                values = np.exp(values - values.max(axis=1, keepdims=True))
                values = values / np.where(values.sum(axis=1, keepdims=True) > 0, values.sum(axis=1, keepdims=True), 1)
            shown = np.ma.masked_where(~mask, values)
            im = ax.imshow(shown, aspect="auto", cmap="viridis")
            ops = arch["ops"]
            ax.set_xticks(range(len(ops)), ops, rotation=60, ha="right", fontsize=6)
            ax.set_yticks(range(values.shape[0]), [str(e) for e in range(values.shape[0])], fontsize=6)
            ax.set_ylabel("edge")
            ax.set_title(f"{name} ({kind})", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(f"{arch['method']}: {Path(f).parts[-5]} {Path(f).parts[-4]}", fontsize=9)
        written.append(_save(fig, out_dir / f"heatmap_{arch['method']}_{Path(f).parts[-5]}_{Path(f).parts[-4]}.png"))
    return written


def hierarchy_plot(logs: dict[str, dict], path: Path) -> list[Path]:
    """HEP-NAS Fig. 3: validation accuracy of every sub-supernet after each split, per run.
    `logs` maps a run label to {hierarchy: [child accuracies]}."""
    if not logs:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (label, per_level) in enumerate(sorted(logs.items())):
        for level, (name, accs) in enumerate(per_level.items()):
            x = level + 0.1 * (i - len(logs) / 2)
            ax.scatter([x] * len(accs), accs, s=12, label=label if level == 0 else None)
    ax.set_xticks(range(len(next(iter(logs.values())))), list(next(iter(logs.values()))))
    ax.set_xlabel("hierarchy")
    ax.set_ylabel("sub-supernet validation acc (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return [_save(fig, path)]


def ranking_plot(series: dict[str, list[tuple[str, float]]], path: Path, ylabel: str = "Kendall tau") -> list[Path]:
    """Ranking correlation of supernet accuracy with the benchmark, per stage, one line per run."""
    if not series:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, points in sorted(series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("stage")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return [_save(fig, path)]
