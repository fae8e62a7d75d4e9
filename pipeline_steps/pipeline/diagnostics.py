"""How far a supernet can be trusted: Kendall tau and Spearman rho between the accuracy the
supernet gives a cell (its ops picked one-hot, the weights shared) and the cell's NAS-Bench-201
accuracy, over a seeded sample of the cells each training stage still allows. Each training
stage's state is ranked once (`rank_checkpoint`); a method's diagnostic collects its stages."""
from __future__ import annotations

import time
import zlib
from pathlib import Path

import torch

from ..common.atomic import read_json, write_json
from ..common.checkpoints import load_checkpoint
from ..common.device import resolve_device
from ..data.search_data import SearchData
from ..evaluation.benchmark import load_benchmark
from ..methods import get_method
from ..scores.child_eval import benchmark_accuracies, current_space, evaluate_nb201, nb201_arch, rank_correlation
from ..scores.child_eval import scoring_batches
from ..spaces import get_space
from ..supernet.state import Optimisation, SupernetState, init_state
from .stage_run import data_settings, log_data, run_name, stage_tags
from .tracking import Tracker


def sample_cells(mask: torch.Tensor, op_names: list[str], n: int, generator: torch.Generator) -> list[str]:
    """Up to n distinct NB201 cells whose every op is alive in `mask` (all of them when fewer)."""
    cells = [nb201_arch(key, op_names) for key in current_space({"cell": mask}, ("cell",))]
    if len(cells) <= n:
        return cells
    pick = torch.randperm(len(cells), generator=generator)[:n].tolist()
    return [cells[i] for i in sorted(pick)]


def rank_checkpoint(spec: dict, runtime: dict, state_file: Path, out: Path) -> None:
    """Rank correlation of one training stage's state. A supernet's is computed once, however many
    methods share it (its spec names no method); a method's own stage loads through the method."""
    t0 = time.perf_counter()
    s = spec["settings"]
    space = get_space(spec["space"], spec["space_settings"])
    device = resolve_device(runtime["device"], runtime.get("gpu_slots", 1))
    settings = data_settings(spec, runtime)
    data = SearchData(settings, s["images"], device)
    generator = torch.Generator().manual_seed(stage_seed(spec["seed"], spec["of"]))
    batches = scoring_batches(data, generator, images=s["images"], batch_size=s["images"])
    bench = load_benchmark(spec["benchmark"]["source"], runtime["benchmark"]["path"])
    state = init_state(space, data.num_classes, Optimisation(epochs=1), spec["seed"], device)
    tracker = Tracker(runtime["tracking"], run_name(spec), stage_tags(spec, runtime, spec.get("method", "supernet")))
    tracker.log_params(spec)
    log_data(tracker, settings, data.fingerprint, len(data.images), "evaluation")
    ckpt = load_checkpoint(state_file)
    (get_method(spec["method"]).load_state if "method" in spec else SupernetState.load_state_dict)(state, ckpt)
    cells = sample_cells(ckpt["mask"]["cell"], list(space.ops), s["archs"], generator)
    predicted = evaluate_nb201(state.model, cells, batches, list(space.ops), bn=s["bn"], progress="ranking: cells")
    truth = benchmark_accuracies(bench, cells, s["metric"])
    # a stage that leaves one cell (DARTS-PT's select, the last pruning stage) has nothing to rank
    corr = rank_correlation(predicted, truth) if len(cells) > 1 else \
        {"kendall_tau": None, "spearman_rho": None, "n": len(cells)}
    record = {"stage": spec["of"], "epoch": ckpt["epoch"], **corr, "metric": s["metric"],
              "cells": [{"arch": a, "supernet_acc": predicted[a], "benchmark_acc": truth[a]} for a in cells],
              "wall_time_s": time.perf_counter() - t0}
    if corr["kendall_tau"] is not None:
        tracker.log_metrics({"kendall_tau": corr["kendall_tau"], "spearman_rho": corr["spearman_rho"]}, step=0)
    write_json(out, record)
    tracker.finish()


def stage_seed(seed: int, stage: str) -> int:
    """The cells and images a stage is ranked on: the run's seed for the supernet, and a seed of its
    own for every later stage, so that each stage's sample does not depend on which others ran."""
    return seed if stage == "supernet" else (seed * 1_000_003 + zlib.crc32(stage.encode())) % 2**63


def ranking(spec: dict, stage_files: list[Path], out: Path) -> None:
    """The method's ranking diagnostic: the stage records of every training stage its result rests
    on, in order (the supernet's shared with the methods that share it)."""
    per_stage = [read_json(f) for f in stage_files]
    result = {"method": spec["method"], "dataset": spec["dataset"], "seed": spec["seed"],
              "metric": spec["settings"]["metric"], "per_stage": [{k: v for k, v in p.items() if k != "metric"}
                                                                 for p in per_stage],
              "wall_time_s": sum(p.get("wall_time_s", 0.0) for p in per_stage)}
    write_json(out, result)
