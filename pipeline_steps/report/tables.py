"""The report's tables in the papers' layout: methods by their papers' names, each paper's reported
numbers as "(reported)" rows beside ours, search cost in seconds labelled by the device it was
measured on, ranks spelled out, and the runs' per-seed rows."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from ..common.atomic import read_json
from ..evaluation.benchmark import METRICS
from .reproduction import method_name, reported_cost

LABELS = {"cifar10_valid_acc": "C10 valid", "cifar10_test_acc": "C10 test", "cifar100_valid_acc": "C100 valid",
          "cifar100_test_acc": "C100 test", "imagenet16_120_valid_acc": "IN16 valid",
          "imagenet16_120_test_acc": "IN16 test", "test_error": "Test error (%)"}
RETRAIN_COLUMNS = ["test_error", "test_acc", "params_m", "flops_m"]
NOT_SEARCH = ("lookup", "retrain")  # stages after the search; their time is not search cost
COST_NOTE = ("Search cost: measured wall-clock seconds of every training stage the result rests on and the "
             "derive (not the lookup or retraining), mean over seeds, in seconds of the device they ran on "
             "(GPU-s on CUDA, CPU-s on the CPU). (reported) rows: the paper's number on its GPU, converted "
             "to seconds from the unit the paper prints (in brackets). Costs on different devices do not compare.")


def search_cost_s(wall_time_s: dict[str, float]) -> float:
    """Search cost in seconds: every training stage the result rests on (up to an early stop) plus
    derive; the lookup and the retraining come after the search."""
    return float(sum(t for stage, t in wall_time_s.items() if stage not in NOT_SEARCH))


def _kind(device: str | None, name: str | None) -> str | None:
    if device:
        kind = str(device).split(":")[0].lower()
        return {"cuda": "GPU", "cpu": "CPU"}.get(kind, kind.upper())
    if name:
        return "CPU" if name.strip().lower() == "cpu" else "GPU"  # device_name is a CUDA card's name or `cpu`
    return None


def search_devices(result: dict, result_file: str | Path) -> tuple[str, str]:
    """(kind, names) of the devices the search stages ran on: GPU, CPU, or e.g. `CPU+GPU` when they
    differ. Read from the stage metrics (the result's own `device` may be the retraining's)."""
    run_dir = Path(result_file).parents[2]
    files = [run_dir / "supernet" / str(result.get("supernet_key")) / "metrics.json"]
    files += [run_dir / result["method"] / s / "metrics.json" for s in result["wall_time_s"]
              if s not in ("supernet", "derive", *NOT_SEARCH)]
    stages = [read_json(f) for f in files if f.exists()] or result.get("stages") or []
    pairs = [(s.get("device"), s.get("device_name")) for s in stages] or [(result.get("device"), None)]
    kinds = list(dict.fromkeys(k for k in (_kind(d, n) for d, n in pairs) if k))
    names = list(dict.fromkeys(n or d for d, n in pairs if n or d))
    return "+".join(sorted(kinds)) or "device", ", ".join(names)


def runs_table(result_files: list[str | Path], profile: str = "") -> pd.DataFrame:
    rows = []
    for f in result_files:
        r = read_json(f)
        row = {k: r[k] for k in ("method", "space", "dataset", "seed", "device", "supernet_key")}
        row["profile"] = profile
        row["arch"] = r.get("arch_str", r.get("arch"))
        row.update({k: r[k] for k in (*METRICS, "rank", *RETRAIN_COLUMNS, "selected_epoch") if k in r})
        row.update({f"wall_{stage}_s": t for stage, t in r["wall_time_s"].items()})
        row["search_cost_s"] = search_cost_s(r["wall_time_s"])
        row["search_device"], row["search_device_name"] = search_devices(r, f)
        row["result_file"] = str(f)
        rows.append(row)
    return pd.DataFrame(rows)


def method_order(paper: dict, methods) -> list[str]:
    """The registry's order (baselines first, each method's variants after it), as the papers list
    them; ids the registry does not know after, alphabetically."""
    from ..methods import METHODS

    known = list(METHODS)
    return sorted(set(methods), key=lambda m: (known.index(m) if m in known else len(known), m))


def summary_table(runs: pd.DataFrame, columns: list[str], expected: dict | None = None) -> pd.DataFrame:
    """mean +- std over seeds per method and search dataset. n_seeds is how many finished;
    n_expected how many were asked for, so a failed seed shows instead of silently shrinking n."""
    g = runs.groupby(["method", "dataset"], sort=True)
    out = g[[c for c in (*columns, "search_cost_s") if c in runs]].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["n_seeds"] = g.size()
    if "search_device" in runs:
        out["search_device"] = g["search_device"].agg(lambda s: "+".join(sorted(set("+".join(s).split("+")))))
    out = out.reset_index()
    out["n_expected"] = [(expected or {}).get((m, d), n) for m, d, n in zip(out["method"], out["dataset"], out["n_seeds"])]
    return out


def _pm(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.2f}" if std is None or pd.isna(std) else f"{mean:.2f}±{std:.2f}"


def _seeds(r) -> str:
    return str(r["n_seeds"]) if r["n_seeds"] == r["n_expected"] else f"{r['n_seeds']} of {r['n_expected']}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # arch strings are full of pipes, which would end the table cell


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _size(value, digits: int) -> str:
    """Params / FLOPs in millions as the papers print them (3.42, 545), small quick-profile ones to 3 figures."""
    if value is None or pd.isna(value):
        return "-"
    return f"{value:.{digits}f}" if value >= 10 ** -digits * 100 else f"{value:.3g}"


def cost_text(seconds: float, kind: str) -> str:
    """Seconds as NB201 papers print them, with the device: `1,234 GPU-s`, `56.7 CPU-s`."""
    if seconds is None or pd.isna(seconds):
        return "-"
    return f"{seconds:,.0f} {kind}-s" if seconds >= 100 else f"{seconds:.1f} {kind}-s"


def reported_cost_text(target: dict) -> str:
    cost = reported_cost(target)
    if cost is None:
        return "-"
    seconds, note = cost
    return f"{seconds:,.0f} GPU-s" + (f" ({note})" if note else "")


def _reported_rows(paper: dict, space: str, method: str, cells) -> list[list[str]]:
    """The paper's rows for a method: `cells(target)` gives the metric cells."""
    return [[f"{method_name(paper, method)} (reported)", t["searched_on"], str(t.get("seeds", "-")),
             reported_cost_text(t), *cells(t)] for t in paper.get(space, []) if t["method"] == method]


def nb201_markdown(runs: pd.DataFrame, optimal: dict, expected: dict | None = None, paper: dict | None = None,
                   n_cells: int = 15625) -> list[str]:
    paper = paper or {}
    summary = summary_table(runs, list(METRICS), expected)
    rows = []
    for method in method_order(paper, summary["method"]):
        rows += _reported_rows(paper, "nb201", method, lambda t: [_pm(*t[m]) if m in t else "-" for m in METRICS])
        rows += [[method_name(paper, method), r["dataset"], _seeds(r),
                  cost_text(r["search_cost_s_mean"], r["search_device"]),
                  *(_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS)]
                 for _, r in summary[summary["method"] == method].iterrows()]
    rows.append(["Optimal", "-", "-", "-", *(f"{optimal[m]:.2f}" for m in METRICS)])
    order = {m: i for i, m in enumerate(method_order(paper, runs["method"]))}
    per_run = [[method_name(paper, r["method"]), r["dataset"], str(r["seed"]), f"`{_cell(r['arch'])}`",
                f"{int(r['rank']):,} of {n_cells:,}", *(f"{r[m]:.2f}" for m in METRICS),
                cost_text(r["search_cost_s"], r["search_device"]), _cell(r["search_device_name"])]
               for _, r in runs.sort_values(["method", "dataset", "seed"], key=lambda c: c.map(order)
                                            if c.name == "method" else c).iterrows()]
    return ["## NAS-Bench-201", "",
            "Accuracy (%) of the searched cell in the benchmark, mean ± std over seeds; each paper's own numbers "
            "in the (reported) row above ours.", "",
            *_table(["Method", "Searched on", "Seeds", "Search cost", *(LABELS[m] for m in METRICS)], rows),
            "", COST_NOTE, "", "### Runs", "",
            f"Rank: rank r of {n_cells:,} by CIFAR-10 test accuracy (1 is the best cell in the benchmark; tied "
            "cells share a rank).", "",
            *_table(["Method", "Searched on", "Seed", "Arch", f"Rank (of {n_cells:,}, by C10 test)",
                     *(LABELS[m] for m in METRICS), "Search cost", "Device"], per_run), ""]


def darts_markdown(runs: pd.DataFrame, results_dir: Path, expected: dict | None = None,
                   paper: dict | None = None) -> list[str]:
    paper = paper or {}
    summary = summary_table(runs, RETRAIN_COLUMNS, expected)
    rows = []
    for method in method_order(paper, summary["method"]):
        rows += _reported_rows(paper, "darts", method, lambda t: [
            _pm(*t["test_error"]) if "test_error" in t else "-", _size(t.get("params_m"), 2), _size(t.get("flops_m"), 0)])
        rows += [[method_name(paper, method), r["dataset"], _seeds(r),
                  cost_text(r["search_cost_s_mean"], r["search_device"]),
                  _pm(r["test_error_mean"], r["test_error_std"]), _size(r["params_m_mean"], 2),
                  _size(r["flops_m_mean"], 0)] for _, r in summary[summary["method"] == method].iterrows()]
    lines = ["## DARTS space (searched, then trained from scratch)", "",
             *_table(["Method", "Searched on", "Seeds", "Search cost", "Test error (%)", "Params (M)", "FLOPs (M)"],
                     rows), "", COST_NOTE, "", "### Searched cells", ""]
    for _, r in runs.sort_values(["method", "dataset", "seed"]).iterrows():
        picture = Path(r["result_file"]).parents[1] / "derive" / "cells.png"
        lines.append(f"- {method_name(paper, r['method'])} {r['dataset']} seed {r['seed']}: test error "
                     f"{r['test_error']:.2f}%, `{r['arch']}`")
        if picture.exists():
            lines.append(f"  ![cells]({os.path.relpath(picture, results_dir)})")  # results_dir may hold no runs
    return lines + [""]


def retrain_nb201_markdown(runs: pd.DataFrame, retrain_files: list[str | Path], paper: dict | None = None) -> list[str]:
    """The searched NB201 cells trained from scratch here (`retrain_nb201.enabled`), beside the
    benchmark's 200-epoch number for the same cell on the dataset searched. A retraining of another
    cell than the run's current one (an older derive) is left out."""
    from ..spaces.nb201 import ops_to_str, str_to_ops

    current = {(r["method"], r["dataset"], int(r["seed"])): r for _, r in runs.iterrows()} if len(runs) else {}
    rows = []
    for f in (f for f in retrain_files if Path(f).exists()):
        t = read_json(f)
        run = current.get((t["method"], t["dataset"], int(t["seed"])))
        if run is None or ops_to_str(str_to_ops(t["arch"])) != run["arch"]:
            continue
        bench = run.get(f"{t['dataset'].replace('-', '_')}_test_acc", float("nan"))
        rows.append({"method": t["method"], "dataset": t["dataset"], "seed": int(t["seed"]), "epochs": t.get("epochs"),
                     "test_acc": t["test_acc"], "bench": bench, "params_m": t["params_m"], "flops_m": t["flops_m"],
                     "cost": t["wall_time_s"].get("retrain", float("nan")), "device": _kind(t.get("device"), None)})
    if not rows:
        return []
    table = pd.DataFrame(rows)
    out = []
    for method in method_order(paper or {}, table["method"]):
        for dataset, g in table[table["method"] == method].groupby("dataset"):
            out.append([method_name(paper or {}, method), dataset, str(len(g)),
                        ", ".join(str(e) for e in dict.fromkeys(g["epochs"])), _pm(g["test_acc"].mean(), g["test_acc"].std()),
                        _pm(g["bench"].mean(), g["bench"].std()), _size(g["params_m"].mean(), 2),
                        _size(g["flops_m"].mean(), 0), cost_text(g["cost"].mean(), "+".join(sorted(set(g["device"]))))])
    return ["### NAS-Bench-201 cells trained from scratch (`retrain_nb201`)", "",
            "Each run's searched cell trained here from scratch on the dataset it was searched on (test accuracy, "
            "mean ± std over seeds), beside the benchmark's accuracy for the same cells (200 epochs).", "",
            *_table(["Method", "Searched on", "Seeds", "Epochs", "Test acc (%), retrained", "Benchmark test acc (%)",
                     "Params (M)", "FLOPs (M)", "Retrain cost"], out), ""]
