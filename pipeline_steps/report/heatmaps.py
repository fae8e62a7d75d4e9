"""Heat maps of softmax(alpha) and of the score a method selects by (OStr), per edge and op: one
figure per method, one row per seed. Edges are named by the nodes they join (`0->1`; DARTS inputs
`k-2`, `k-1`); softmax(alpha) is drawn on the fixed 0-1 scale of a probability, so a near-uniform
0.198-0.204 stays near-uniform, and the values are written in the cells; a score's colours span its own panel, which the colour bar
says. Pruned ops are grey, the op the run selected is outlined."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common.atomic import read_json
from .figures import _plt, _save
from .reproduction import criterion_name, method_name


def edge_names(space: str, n_edges: int) -> list[str]:
    """`i->j` for the edge from node i into node j, named as in the cell pictures. NB201: nodes 0..3,
    0 the cell's input; DARTS: inputs k-2, k-1 (c_{k-2}, c_{k-1}) and intermediate nodes 0..3."""
    if space == "nb201":
        from ..spaces.nb201 import EDGES

        return [f"{j}->{i}" for i, j in EDGES]
    from ..spaces.darts import EDGE_INPUT, EDGE_NODE

    node = lambda n: ("k-2", "k-1")[n] if n < 2 else str(n - 2)  # noqa: E731
    names = [f"{node(j)}->{node(i)}" for i, j in zip(EDGE_NODE, EDGE_INPUT)]
    return names if len(names) == n_edges else [f"edge {e}" for e in range(n_edges)]


def selected_ops(arch: dict, kind: str, n_edges: int) -> list[int | None]:
    """Per edge, the index of the op in the derived cell (None for an edge the cell does not use)."""
    ops = list(arch["ops"])
    if arch.get("space") == "nb201" or "genotype" not in arch:
        from ..spaces.nb201 import str_to_ops

        try:
            return [ops.index(o) for o in str_to_ops(arch["arch"])]
        except Exception:  # an arch of another space: nothing to outline
            return [None] * n_edges
    from ..spaces.darts import EDGE_INPUT, EDGE_NODE

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
    digits = 3 if np.abs(alive).max() < 10 else 1
    for (e, o), v in np.ndenumerate(values):
        if mask[e, o]:
            dark = (v - lo) / ((hi - lo) or 1) < 0.6
            text = f"{v:.{digits}f}"
            text = text.replace("0.", ".", 1) if small and text.startswith(("0.", "-0.")) else text
            ax.text(o, e, text, ha="center", va="center", fontsize=7 if small else 8, color="white" if dark else "black")
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
    elif probability and all(r.max() - r.min() < 1e-3 for r in open_rows):  # SPOS, fixed alpha, a short search
        spread = f"uniform {alive.mean():.3f} (spread under 0.001 on every edge)"
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
        # NB201 (one cell type): a seed's panels side by side; DARTS: normal | reduce side by side, one
        # row per seed and quantity, so that 14 x 8 cells stay readable
        kinds = len(first["mask"])
        per_seed = len(_panels(first, paper))
        ncols = per_seed if kinds == 1 else kinds
        nrows = len(runs) * (per_seed // ncols)
        fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                                 figsize=((4.6 if kinds == 1 else 7.0) * ncols, (0.32 * n_edges + 1.9) * nrows))
        flat = list(axes.flat)
        for i, (seed, arch) in enumerate(runs):
            for k, (ax, panel) in enumerate(zip(flat[i * per_seed:(i + 1) * per_seed], _panels(arch, paper))):
                _draw(fig, ax, arch, *panel, edges)
                if k % ncols == 0:
                    ax.set_ylabel(f"{seed.replace('seed', 'seed ')}: edge (from->to node)")
        note = "k-2, k-1: the cell's inputs, 0-3 its nodes; " if len(edges) == 14 else "node 0: the cell's input; "
        fig.suptitle(f"{method_name(paper, method)}, searched on {dataset}\n"
                     f"({note}red: the op selected; grey: pruned)", fontsize=11)
        written.append(_save(fig, out_dir / f"heatmap_{method}_{dataset}.png"))
    return written
