"""Draw a DARTS genotype's normal and reduction cells (PNG and SVG) with matplotlib alone.

Inputs c_{k-2} and c_{k-1} sit on the left, intermediate nodes 0..3 around the bottom and the
output c_{k} at the top right; every genotype edge is an arrow labelled with its op, and the
concatenated nodes feed c_{k} with unlabelled grey arrows.
"""
from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from ..common.atomic import atomic_path
from .genotype import STEPS, Genotype

_INPUT_COLOUR, _NODE_COLOUR, _OUTPUT_COLOUR = "#a6cee3", "#fdbf6f", "#b2df8a"
_RADIUS = 4.0
_LABEL_SPOTS = (0.5, 0.4, 0.6, 0.3, 0.7, 0.35, 0.65, 0.25, 0.75)


def _positions() -> dict[int, tuple[float, float]]:
    """Genotype node index -> (x, y): 0, 1 = inputs, 2..5 = nodes 0..3, STEPS + 2 = output.

    All nodes lie on one circle (points in convex position), so no straight edge between two
    nodes passes through a third one; the gap at the top separates the inputs from the output."""
    angles = (125, 175, 225, 270, 315, 5, 55)
    return {n: (_RADIUS * math.cos(math.radians(a)), _RADIUS * math.sin(math.radians(a)))
            for n, a in enumerate(angles)}


def _label(node: int) -> str:
    return {0: "$c_{k-2}$", 1: "$c_{k-1}$", STEPS + 2: "$c_{k}$"}.get(node, str(node - 2))


def _arrow(ax, a, b, colour: str, lw: float) -> None:
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, shrinkA=18, shrinkB=18,
                                 color=colour, lw=lw))


def _overlaps(box, boxes) -> bool:
    x, y, w, h = box
    return any(abs(x - bx) < (w + bw) / 2 and abs(y - by) < (h + bh) / 2 for bx, by, bw, bh in boxes)


def _near_line(box, a, b) -> bool:
    """Whether segment a-b passes within the label box's half-height of its centre."""
    (x, y, _, h), (x0, y0), (x1, y1) = box, a, b
    dx, dy = x1 - x0, y1 - y0
    t = min(max(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0), 1.0)
    return math.hypot(x - x0 - t * dx, y - y0 - t * dy) < h / 2 + 0.05


def _draw_cell(ax, pairs, concat, title: str) -> None:
    pos = _positions()
    out = STEPS + 2
    ax.set_title(title, fontsize=13)
    lines = [(pos[n], pos[out]) for n in concat] + [(pos[src], pos[2 + k // 2]) for k, (_, src) in enumerate(pairs)]
    for a, b in lines[:len(concat)]:
        _arrow(ax, a, b, "#aaaaaa", 1.0)
    taken = [(x, y, 1.0, 0.6) for x, y in pos.values()]   # node boxes, in data units
    for k, (op, src) in enumerate(pairs):
        (x0, y0), (x1, y1) = own = lines[len(concat) + k]
        _arrow(ax, own[0], own[1], "#333333", 1.3)
        # slide the label along its edge to the first spot clear of nodes, earlier labels and,
        # if possible, other edges (a label on a crossing would be ambiguous)
        w, h = 0.085 * len(op) + 0.1, 0.3
        spots = [(x0 + t * (x1 - x0), y0 + t * (y1 - y0), w, h) for t in _LABEL_SPOTS]
        free = [b for b in spots if not _overlaps(b, taken)]
        clear = [b for b in free if not any(_near_line(b, *line) for line in lines if line is not own)]
        box = (clear or free or spots)[0]
        taken.append(box)
        ax.text(box[0], box[1], op, fontsize=8, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))
    for n, (x, y) in pos.items():
        colour = _INPUT_COLOUR if n < 2 else _OUTPUT_COLOUR if n == out else _NODE_COLOUR
        ax.text(x, y, _label(n), fontsize=11, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.4", fc=colour, ec="#333333"))
    lim = _RADIUS + 0.8
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.axis("off")


def plot_genotype(genotype: Genotype, out_stem: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """Write `<out_stem>.png` and `<out_stem>.svg` (any suffix of out_stem is replaced); returns both paths."""
    stem = Path(out_stem)
    stem = stem.with_suffix("") if stem.suffix in (".png", ".svg") else stem
    fig = Figure(figsize=(14, 7.2))
    axes = fig.subplots(1, 2)
    _draw_cell(axes[0], genotype.normal, genotype.normal_concat, "normal cell")
    _draw_cell(axes[1], genotype.reduce, genotype.reduce_concat, "reduction cell")
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    paths = (stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.svg")
    for path, fmt in zip(paths, ("png", "svg")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", pad_inches=0.15)
    return paths
