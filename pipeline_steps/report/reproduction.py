"""The reproduction table: each method's reported numbers (params/paper_results.yaml) beside ours,
the difference, and whether it lies within the tolerance METHODS.md 7 proposes."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml

from ..common.errors import NasflowError

PAPER_RESULTS = "paper_results.yaml"
NB201_METRICS = ("cifar10_valid_acc", "cifar10_test_acc", "cifar100_valid_acc", "cifar100_test_acc",
                 "imagenet16_120_valid_acc", "imagenet16_120_test_acc")
DARTS_METRICS = ("test_error",)
COST_UNITS = {"search_cost_s": (1.0, "s"), "search_cost_h": (3600.0, "h"), "search_cost_gpu_days": (86400.0, "GPU-days")}
INFO_KEYS = {"method", "searched_on", "seeds", "source", "params_m", "flops_m", "search_gpu", *COST_UNITS}


def load_paper_results(params_dir: str | Path = "params") -> dict:
    """The papers' numbers, checked: every metric is [mean, std] with std a number or null."""
    path = Path(params_dir) / PAPER_RESULTS
    if not path.exists():
        raise NasflowError(f"{path} is missing: it holds the papers' numbers for the reproduction table")
    data = yaml.safe_load(path.read_text()) or {}
    for key in ("std_multiple", "floor", "zero_std"):
        if not isinstance(data.get("tolerance", {}).get(key), (int, float)):
            raise NasflowError(f"{path}: tolerance.{key} must be a number")
    for key in ("names", "criterion_names"):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in (data.get(key) or {}).items()):
            raise NasflowError(f"{path}: {key} must map ids to names (strings)")
    for space, metrics in (("nb201", NB201_METRICS), ("darts", DARTS_METRICS)):
        for i, row in enumerate(data.get(space, [])):
            where = f"{path}: {space}[{i}] ({row.get('method', '?')})"
            if "method" not in row or "searched_on" not in row:
                raise NasflowError(f"{where} needs `method` and `searched_on`")
            for k, v in row.items():
                if k in INFO_KEYS:
                    continue
                if k not in metrics:
                    raise NasflowError(f"{where}: unknown metric {k!r}; valid: {', '.join(metrics)}")
                if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], (int, float))
                        and (v[1] is None or isinstance(v[1], (int, float)))):
                    raise NasflowError(f"{where}: {k} must be [mean, std] (std may be null), got {v!r}")
    return data


def method_name(paper: dict, method: str) -> str:
    """The paper's name for a method id (params/paper_results.yaml `names`), the id where none is given."""
    return (paper.get("names") or {}).get(method, method)


def criterion_name(paper: dict, criterion: str) -> str:
    """A traced selection criterion's name: a criterion of its own, else the method it is named after."""
    return (paper.get("criterion_names") or {}).get(criterion) or method_name(paper, criterion)


def reported_cost(target: dict) -> tuple[float, str] | None:
    """A paper row's search cost in seconds and a note: the paper's own unit where it is not seconds,
    and its GPU where named (e.g. (4320.0, '1.2 h')); None where the paper gives no cost."""
    for key, (factor, unit) in COST_UNITS.items():
        if target.get(key) is not None:
            note = [] if unit == "s" else [f"{target[key]:g} {unit}"]
            note += [target["search_gpu"]] if target.get("search_gpu") else []
            return float(target[key]) * factor, ", ".join(note)
    return None


def tolerance(std: float | None, rule: dict) -> float:
    """max(2 x std, 0.5 pp); 0.3 pp for a reported std of exactly 0; the floor when no std is given."""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return float(rule["floor"])
    if std == 0:
        return float(rule["zero_std"])
    return max(rule["std_multiple"] * std, rule["floor"])


def reproduction_table(runs: pd.DataFrame, paper: dict, space: str, profile: str) -> pd.DataFrame:
    """One row per (paper row, metric): paper mean/std/seeds, ours mean/std/n, difference, verdict."""
    metrics = NB201_METRICS if space == "nb201" else DARTS_METRICS
    rows = []
    for target in paper.get(space, []):
        ours = runs[(runs["method"] == target["method"]) & (runs["dataset"] == target["searched_on"])] \
            if len(runs) else runs
        for metric in metrics:
            if metric not in target:
                continue
            mean, std = target[metric]
            values = ours[metric].dropna() if metric in ours else pd.Series(dtype=float)
            n = len(values)
            ours_mean = float(values.mean()) if n else float("nan")
            ours_std = float(values.std()) if n > 1 else float("nan")
            tol = tolerance(std, paper["tolerance"])
            diff = ours_mean - mean if n else float("nan")
            if not n:
                verdict = "no runs"
            elif profile != "paper":
                verdict = f"not a reproduction (profile {profile})"
            else:
                verdict = "match" if abs(diff) <= tol else "off"
            rows.append({"method": target["method"], "searched_on": target["searched_on"], "metric": metric,
                         "paper_mean": mean, "paper_std": std, "paper_seeds": target.get("seeds"),
                         "ours_mean": ours_mean, "ours_std": ours_std, "n_seeds": n, "difference": diff,
                         "tolerance": tol, "verdict": verdict, "source": target.get("source", "")})
    return pd.DataFrame(rows)


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x, fmt="{:.2f}") -> str:
    return "-" if _missing(x) else fmt.format(x)


def reproduction_markdown(table: pd.DataFrame, labels: dict[str, str],
                          extra: tuple[tuple[str, str], ...] = (), names: dict | None = None) -> list[str]:
    """The table as markdown, methods by their papers' names (`names`: the paper results' mapping);
    `extra` adds (header, column) pairs after the verdict."""
    if table.empty:
        return []
    head = ["Method", "Searched on", "Metric", "Paper", "Ours", "Seeds (ours / paper)", "Difference", "Tolerance",
            "Verdict", *(h for h, _ in extra)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        paper = _num(r["paper_mean"]) + ("" if _missing(r["paper_std"]) else f"±{_num(r['paper_std'])}")
        ours = _num(r["ours_mean"]) + ("" if _missing(r["ours_std"]) else f"±{_num(r['ours_std'])}")
        seeds = f"{r['n_seeds']} / {'?' if _missing(r['paper_seeds']) else int(r['paper_seeds'])}"
        lines.append("| " + " | ".join([(names or {}).get(r["method"], r["method"]), r["searched_on"], labels.get(r["metric"], r["metric"]), paper,
                                         ours, seeds, _num(r["difference"], "{:+.2f}"), f"±{r['tolerance']:.2f}",
                                         r["verdict"], *(str(r[c]) for _, c in extra)]) + " |")
    return lines
