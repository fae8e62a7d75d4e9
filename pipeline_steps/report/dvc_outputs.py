"""What `dvc metrics show` and `dvc plots show` read, written by the report stage.

metrics.json (project root, git-tracked): the profile and, per space, dataset and method, the mean
result over seeds under short keys (`nb201.cifar10.darts.c10_test`). results/plots/: per-epoch
CSVs, `trajectory/` (the benchmark accuracy of the cell each method would derive after every
epoch, mean over seeds) and `training/` (loss and accuracy of every training stage).
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..common.atomic import write_json, write_text

SHORT = {"cifar10_valid_acc": "c10_valid", "cifar10_test_acc": "c10_test", "cifar100_valid_acc": "c100_valid",
         "cifar100_test_acc": "c100_test", "imagenet16_120_valid_acc": "in16_valid",
         "imagenet16_120_test_acc": "in16_test", "test_error": "test_err", "test_acc": "test_acc",
         "params_m": "params_m", "flops_m": "flops_m"}
TRAINING_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc")


def _results(expected: list[dict]) -> list[tuple[dict, dict]]:
    out = []
    for e in expected:
        path = Path(e["file"])
        if "method" in e and path.is_file():
            out.append((e, json.loads(path.read_text())))
    return out


def metrics_summary(profile: str, expected: list[dict]) -> dict:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for e, result in _results(expected):
        groups[(e["space"], e["dataset"], e["method"])].append(result)
    metrics: dict = {"profile": profile}
    for (space, dataset, method), rows in sorted(groups.items()):
        entry = {short: round(float(np.mean([r[k] for r in rows])), 4)
                 for k, short in SHORT.items() if all(isinstance(r.get(k), (int, float)) for r in rows)}
        entry["seeds"] = len(rows)
        metrics.setdefault(space, {}).setdefault(dataset, {})[method] = entry
    return metrics


def write_metrics(path: Path, profile: str, expected: list[dict]) -> None:
    write_json(path, metrics_summary(profile, expected))


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_plot_data(results_dir: Path, expected: list[dict]) -> list[Path]:
    """Rewrites results/plots/ from the current results (a run no longer configured leaves no file)."""
    plots = results_dir / "plots"
    written: dict[Path, str] = {}
    curves: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e, result in _results(expected):
        run_dir = Path(e["file"]).parents[2]  # results/{space}/{dataset}/seed{seed}
        name = f"{e['space']}-{e['dataset']}"
        target = f"{e['dataset'].replace('-', '_')}_test_acc"
        for point in (result.get("trajectories") or {}).get(e["method"], []):
            if isinstance(point.get(target), (int, float)):
                curves[(name, e["method"])][int(point["epoch"])].append(float(point[target]))
        stage_dirs = [run_dir / "supernet" / result["supernet_key"]] if result.get("supernet_key") else []
        stage_dirs += sorted(p.parent for p in (run_dir / e["method"]).glob("*/history.json"))
        for d in stage_dirs:
            history = d / "history.json"
            if not history.is_file():
                continue
            label = f"supernet-{d.name}" if d.parent.name == "supernet" else f"{e['method']}-{d.name}"
            rows = [r for r in json.loads(history.read_text()) if isinstance(r, dict)]
            columns = ["epoch", *[c for c in TRAINING_COLUMNS if any(c in r for r in rows)]]
            written[plots / "training" / f"{name}-seed{e['seed']}-{label}.csv"] = _csv(rows, columns)
    for (name, method), by_epoch in curves.items():
        rows = [{"epoch": ep, "test_acc": round(float(np.mean(v)), 4), "seeds": len(v)}
                for ep, v in sorted(by_epoch.items())]
        written[plots / "trajectory" / f"{name}-{method}.csv"] = _csv(rows, ["epoch", "test_acc", "seeds"])
    for old in plots.rglob("*.csv") if plots.is_dir() else []:
        if old not in written:
            old.unlink()
    for path, text in written.items():
        write_text(path, text)
    return sorted(written)
