"""Heat maps of softmax(alpha) and of the score a method selects by (OStr), per edge and op: one
figure per method, one row per seed. Edges are named by the nodes they join (`0->1`); softmax(alpha)
is drawn on the fixed 0-1 scale of a probability, so a near-uniform 0.198-0.204 stays near-uniform,
and the values are written in the cells; a score's colours span its own panel, which the colour bar
says. Pruned ops are grey, the op the run selected is outlined."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import read_json
from .report_figures import _plt, _save
from .reproduction import criterion_name, method_name


def edge_names(space: str, n_edges: int) -> list[str]:
    """`i->j` for the edge from node i into node j. NB201: nodes 0..3, 0 the cell's input; DARTS:
    nodes 0, 1 the cell's two inputs (c_{k-2}, c_{k-1}), 2..5 the intermediate nodes."""
    if space == "nb201":
        from .spaces.nb201 import EDGES

        return [f"{j}->{i}" for i, j in EDGES]
    from .spaces.darts import EDGE_INPUT, EDGE_NODE

    names = [f"{j}->{i}" for i, j in zip(EDGE_NODE, EDGE_INPUT)]
    return names if len(names) == n_edges else [f"edge {e}" for e in range(n_edges)]


def selected_ops(arch: dict, kind: str, n_edges: int) -> list[int | None]:
    """Per edge, the index of the op in the derived cell (None for an edge the cell does not use)."""
    ops = list(arch["ops"])
    if arch.get("space") == "nb201" or "genotype" not in arch:
        from .spaces.nb201 import str_to_ops

        try:
            return [ops.index(o) for o in str_to_ops(arch["arch"])]
        except Exception:  # an arch of another space: nothing to outline
            return [None] * n_edges
    from .spaces.darts import EDGE_INPUT, EDGE_NODE

    chosen: list[int | None] = [None] * n_edges
    for k, (op, j) in enumerate(arch["genotype"].get(kind, [])):
        node = 2 + k // 2
        e = next(e for e in range(n_edges) if EDGE_NODE[e] == node and EDGE_INPUT[e] == j)
        chosen[e] = ops.index(op) if op in ops else None
    return chosen


def _softmax(alpha: np.ndarray, mask: np.ndarray) -> np.ndarray:
    a = np.where(mask, alpha, -np.inf)
    e = np.exp(a - a.max(axis=1, keepdims=True))
    total = e.sum(axis=1, keepdims=True)
    return e / np.where(total > 0, total, 1)


def _panels(arch: dict, paper: dict) -> list[tuple[str, str, np.ndarray, bool]]:
    """(name, cell type, values, on the 0-1 scale) per panel."""
    panels = [("softmax(alpha)", kind, _softmax(np.asarray(a, float), np.asarray(arch["mask"][kind], bool)), True)
              for kind, a in arch["alpha"].items()]
    return panels + [(f"{criterion_name(paper, name)} score", kind, np.asarray(s, float), False)
                     for name, per_kind in arch.get("scores", {}).items() for kind, s in per_kind.items()]


def _draw(fig, ax, arch: dict, name: str, kind: str, values: np.ndarray, probability: bool, edges: list[str]):
    from matplotlib.patches import Rectangle

    plt = _plt()
    mask = np.asarray(arch["mask"][kind], dtype=bool)
    shown = np.ma.masked_where(~mask, values)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    alive = values[mask] if mask.any() else np.zeros(1)
    lo, hi = (0.0, 1.0) if probability else (float(alive.min()), float(alive.max()))
    im = ax.imshow(shown, aspect="auto", cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
    small = values.size > 60  # DARTS cells: 14 edges x 8 ops
    for (e, o), v in np.ndenumerate(values):
        if mask[e, o]:
            dark = (v - lo) / ((hi - lo) or 1) < 0.6
            ax.text(o, e, f"{v:.2f}" if small else f"{v:.3f}", ha="center", va="center", fontsize=6.5 if small else 8,
                    color="white" if dark else "black")
    for e, o in enumerate(selected_ops(arch, kind, len(edges))):
        if o is not None:
            ax.add_patch(Rectangle((o - 0.5, e - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(arch["ops"])), arch["ops"], rotation=35, ha="right")
    ax.set_yticks(range(len(edges)), edges)
    ax.set_ylabel("edge (from->to node)")
    spread = f"values {alive.min():.3f}-{alive.max():.3f}"
    open_rows = [values[e, mask[e]] for e in range(len(values)) if mask[e].sum() > 1]
    if probability and not open_rows:
        spread = "one op left per edge"
    elif probability and all(r.max() - r.min() < 1e-3 for r in open_rows):  # SPOS, fixed alpha: alpha never moved
        spread = f"uniform {alive.mean():.3f}: alpha not trained"
    title = f"{name}, {kind} cell" if len(arch["mask"]) > 1 else name
    ax.set_title(f"{title}\n{spread}" + (", colour 0-1" if probability else ", colour = this range"), fontsize=10)
    bar = fig.colorbar(im, ax=ax, fraction=0.05)
    bar.set_label("probability (fixed 0-1)" if probability else "score (panel's own range)")


def heatmaps(arch_files: list[Path], out_dir: Path, paper: dict | None = None) -> list[Path]:
    """One figure per (method, searched dataset): rows are seeds, columns softmax(alpha) and scores."""
    paper = paper or {}
    plt = _plt()
    groups: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for f in sorted(arch_files):
        arch = read_json(f)
        dataset, seed = Path(f).parts[-5], Path(f).parts[-4]
        groups.setdefault((arch["method"], dataset), []).append((seed, arch))
    written = []
    for (method, dataset), runs in sorted(groups.items()):
        first = runs[0][1]
        n_edges = len(next(iter(first["mask"].values())))
        edges = edge_names(first.get("space", "nb201" if n_edges == 6 else "darts"), n_edges)
        n_panels = len(_panels(first, paper))
        fig, axes = plt.subplots(len(runs), n_panels, squeeze=False, layout="constrained",
                                 figsize=(4.6 * n_panels, (0.32 * n_edges + 1.9) * len(runs)))
        for row, (seed, arch) in zip(axes, runs):
            for ax, panel in zip(row, _panels(arch, paper)):
                _draw(fig, ax, arch, *panel, edges)
            row[0].set_ylabel(f"{seed.replace('seed', 'seed ')}: edge (from->to node)")
        note = "nodes 0, 1: the cell's inputs; " if len(edges) == 14 else "node 0: the cell's input; "
        fig.suptitle(f"{method_name(paper, method)}, searched on {dataset}\n"
                     f"({note}red: the op selected; grey: pruned)", fontsize=11)
        written.append(_save(fig, out_dir / f"heatmap_{method}_{dataset}.png"))
    return written
