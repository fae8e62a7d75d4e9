"""The supernet ranking diagnostic in the report: Kendall tau / Spearman rho of supernet accuracy
against the benchmark after each training stage, shown once per supernet. Methods that read one
shared supernet (same space, dataset, seed and supernet key) share its row and its line; a
method's own later stages (DARTS-PT's select, HPE's prune stages) are its own."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..common.atomic import read_json
from .reproduction import method_name
from .tables import _table, method_order


def _same(a: dict, b: dict) -> bool:
    return all(abs((a[k] or 0) - (b[k] or 0)) < 1e-9 for k in ("kendall_tau", "spearman_rho")) and a["n"] == b["n"]


def ranking_entries(ranking_files: list[str], runs: pd.DataFrame) -> list[dict]:
    """One entry per (supernet or method stage, dataset, seed) with a correlation: `methods` lists
    every method the row stands for. Methods that share a supernet key share its entry, unless
    their numbers differ (then each keeps its own, so a disagreement stays visible)."""
    keys = {(r["method"], r["dataset"], int(r["seed"])): r["supernet_key"] for _, r in runs.iterrows()} \
        if len(runs) else {}
    entries: list[dict] = []
    for f in (f for f in ranking_files if Path(f).exists()):
        r = read_json(f)
        seed = int(r["seed"])
        for i, p in enumerate(r["per_stage"]):
            if p["kendall_tau"] is None:  # one cell left: nothing to rank
                continue
            shared = i == 0 and (r["method"], r["dataset"], seed) in keys
            owner = ("supernet", keys[(r["method"], r["dataset"], seed)]) if shared else ("method", r["method"])
            entry = {"owner": owner, "dataset": r["dataset"], "seed": seed, "stage": p["stage"], "position": i,
                     "n": p["n"], "kendall_tau": p["kendall_tau"], "spearman_rho": p["spearman_rho"],
                     "methods": [r["method"]]}
            twin = next((e for e in entries if shared and e["owner"] == owner and e["dataset"] == r["dataset"]
                         and e["seed"] == seed and _same(e, entry)), None)
            if twin:
                twin["methods"].append(r["method"])
            else:
                entries.append(entry)
    return entries


def _label(paper: dict, methods: list[str]) -> str:
    return ", ".join(method_name(paper, m) for m in method_order(paper, methods))


def ranking_markdown(entries: list[dict], paper: dict) -> list[str]:
    if not entries:
        return []
    order = {m: i for i, m in enumerate(method_order(paper, {m for e in entries for m in e["methods"]}))}
    entries = sorted(entries, key=lambda e: (min(order[m] for m in e["methods"]), e["dataset"], e["seed"],
                                             e["position"]))
    rows = [[_label(paper, e["methods"]) + (" (shared supernet)" if len(e["methods"]) > 1 else ""), e["dataset"],
             str(e["seed"]), e["stage"], str(e["n"]), f"{e['kendall_tau']:.3f}", f"{e['spearman_rho']:.3f}"]
            for e in entries]
    return ["### Supernet ranking: supernet accuracy vs benchmark accuracy of sampled cells", "",
            "Once per supernet: methods that read the same trained supernet share its row; a method's own later "
            "stages follow under its name.", "",
            *_table(["Supernet of", "Searched on", "Seed", "After stage", "Cells", "Kendall tau", "Spearman rho"],
                    rows), ""]


def ranking_series(entries: list[dict], paper: dict) -> dict[str, dict[int, list[tuple[str, float]]]]:
    """Per line of the ranking figure: {seed: [(stage, tau), ...]} along the chain of training stages
    a method's result rests on; methods whose chains are the same points share one line."""
    chains: dict[str, dict[int, list[tuple[str, float]]]] = {}
    for e in sorted(entries, key=lambda e: e["position"]):
        for m in e["methods"]:
            chains.setdefault(m, {}).setdefault(e["seed"], []).append((e["stage"], e["kendall_tau"]))
    merged: dict[str, tuple[list[str], dict]] = {}
    for m, per_seed in chains.items():
        same = next((k for k, (_, s) in merged.items() if s == per_seed), None)
        if same:
            merged[same][0].append(m)
        else:
            merged[m] = ([m], per_seed)
    return {_label(paper, methods): per_seed for methods, per_seed in merged.values()}
