"""How far a supernet can be trusted: Kendall tau and Spearman rho between the accuracy the
supernet gives a cell (its ops picked one-hot, the weights shared) and the cell's NAS-Bench-201
accuracy, over a seeded sample of the cells each training stage still allows."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .atomic import write_json
from .benchmark import load_benchmark
from .checkpoints import load_checkpoint
from .data import SearchData
from .device import resolve_device
from .methods import get_method
from .scores.child_eval import benchmark_accuracies, current_space, evaluate_nb201, nb201_arch, rank_correlation
from .scores.child_eval import scoring_batches
from .spaces import get_space
from .stage_run import data_settings, log_data, run_name, stage_tags
from .supernet import Optimisation, init_state
from .tracking import Tracker


def sample_cells(mask: torch.Tensor, op_names: list[str], n: int, generator: torch.Generator) -> list[str]:
    """Up to n distinct NB201 cells whose every op is alive in `mask` (all of them when fewer)."""
    cells = [nb201_arch(key, op_names) for key in current_space({"cell": mask}, ("cell",))]
    if len(cells) <= n:
        return cells
    pick = torch.randperm(len(cells), generator=generator)[:n].tolist()
    return [cells[i] for i in sorted(pick)]


def ranking(spec: dict, runtime: dict, state_files: list[Path], out: Path) -> None:
    """Rank correlation after every training stage the method's result rests on."""
    t0 = time.perf_counter()
    s = spec["settings"]
    space = get_space(spec["space"], spec["space_settings"])
    device = resolve_device(runtime["device"], runtime.get("gpu_slots", 1))
    settings = data_settings(spec, runtime)
    data = SearchData(settings, s["images"], device)
    generator = torch.Generator().manual_seed(spec["seed"])
    batches = scoring_batches(data, generator, images=s["images"], batch_size=s["images"])
    bench = load_benchmark(spec["benchmark"]["source"], runtime["benchmark"]["path"])
    state = init_state(space, data.num_classes, Optimisation(epochs=1), spec["seed"], device)
    tracker = Tracker(runtime["tracking"], run_name(spec), stage_tags(spec, runtime, spec["method"]))
    tracker.log_params(spec)
    log_data(tracker, settings, data.fingerprint, len(data.images), "evaluation")
    per_stage = []
    for i, path in enumerate(state_files):
        ckpt = load_checkpoint(path)
        get_method(spec["method"]).load_state(state, ckpt)
        cells = sample_cells(ckpt["mask"]["cell"], list(space.ops), s["archs"], generator)
        predicted = evaluate_nb201(state.model, cells, batches, list(space.ops), bn=s["bn"])
        truth = benchmark_accuracies(bench, cells, s["metric"])
        # a stage that leaves one cell (DARTS-PT's select, the last pruning stage) has nothing to rank
        corr = rank_correlation(predicted, truth) if len(cells) > 1 else \
            {"kendall_tau": None, "spearman_rho": None, "n": len(cells)}
        stage = Path(path).parent.name if i else "supernet"
        per_stage.append({"stage": stage, "epoch": ckpt["epoch"], **corr,
                          "cells": [{"arch": a, "supernet_acc": predicted[a], "benchmark_acc": truth[a]} for a in cells]})
        if corr["kendall_tau"] is not None:
            tracker.log_metrics({"kendall_tau": corr["kendall_tau"], "spearman_rho": corr["spearman_rho"]}, step=i)
    result = {"method": spec["method"], "dataset": spec["dataset"], "seed": spec["seed"], "metric": s["metric"],
              "per_stage": per_stage, "wall_time_s": time.perf_counter() - t0}
    write_json(out, result)
    tracker.log_dict({p["stage"]: {k: p[k] for k in ("kendall_tau", "spearman_rho", "n")} for p in per_stage},
                     "ranking.json")
    tracker.finish()
