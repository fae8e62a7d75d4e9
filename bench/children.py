"""P(a) over NB201 (SE-NAS, SPOS, the ranking diagnostic) and one SE-NAS shrink stage at paper settings.

P(a) of every one of the 15,625 cells on one fixed batch of 512 D_val images (9,445 forwards:
children that differ only on edges that cannot reach the output compute the same), with the
children batched as `child_eval.children_per_pass` batches them on this device, side by side with
one child at a time on a sample. A CPU measures a sample and extrapolates (it would take hours).
The SE-NAS shrink stage is composed from measured parts: P(a) of the stage's space plus
`stage_epochs` epochs of SPOS steps at the paper's batch.
"""
from __future__ import annotations

import statistics
import time

import torch

from iteration import RandomSearchData, build_state, log, paper_params
from pipeline_steps.scores import child_eval
from pipeline_steps.spaces.nb201 import all_arch_strings
from pipeline_steps.supernet.train import MODES, StepSettings, StepStats

IMAGES = 512
SAMPLE = {"cpu": 6, "cuda": 512}  # children timed one at a time (and batched on CPU, for the ratio)


def measure_children(device_name: str) -> dict:
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    data = RandomSearchData(device)
    state = build_state("nb201", device)
    for _ in range(2):  # as in the pipeline, P(a) reads a supernet that has trained (on a CPU 3x faster after)
        MODES["bilevel"](state, data, StepSettings(grad_clip=5.0), StepStats(), StepStats(), [])
    ops = list(state.space.ops)
    batches = child_eval.scoring_batches(data, torch.Generator().manual_seed(1), images=IMAGES, batch_size=IMAGES)
    cells = list(all_arch_strings())
    pick = torch.randperm(len(cells), generator=torch.Generator().manual_seed(0))[:SAMPLE[device.type]].tolist()
    sample = [cells[i] for i in pick]

    def timed(archs, per_pass: int) -> float:
        keys = [child_eval.nb201_key(a, ops) for a in archs]
        sync()
        t0 = time.perf_counter()
        child_eval.evaluate_children(state.model, keys, batches, ("cell",), len(ops), none_index=ops.index("none"),
                                     per_pass=per_pass, progress="bench: P(a)")
        sync()
        return time.perf_counter() - t0

    auto = child_eval.children_per_pass(state.model, device, IMAGES)
    log(f"P(a): {len(sample)} children one at a time on {device_name}")
    timed(sample[:4], 1)  # warm-up
    one = timed(sample, 1) / len(sample)
    out = {"one_at_a_time": one, "per_pass": auto, "sample": len(sample)}
    if cuda:
        log(f"P(a): all {len(cells)} cells, {auto} children per pass")
        timed(sample[:auto], auto)  # warm-up at the batched shape
        out["space"] = timed(cells, auto)
    else:
        out["batched_4"] = timed(sample, 4) / len(sample)
    out["spos_step"] = spos_step_time(device, sync)
    return out


def paper_se_nas() -> dict:
    """The paper profile's SE-NAS stage length and batch on NB201."""
    s = paper_params()["method"]["se_nas"]
    return {"stage_epochs": s["stage_epochs"]["nb201"], "batch": s["optimiser"]["batch_size"]}


def spos_step_time(device: torch.device, sync) -> float:
    batch = paper_se_nas()["batch"]
    data = RandomSearchData(device, batch_size=batch)
    state = build_state("nb201", device)
    settings, times = StepSettings(grad_clip=5.0), []
    for i in range(8):
        log(f"SPOS step at batch {batch}: {i + 1}/8")
        sync()
        t0 = time.perf_counter()
        MODES["spos"](state, data, settings, StepStats(), StepStats(), [])
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


def children_rows(device: str, m: dict) -> list[tuple]:
    unique, cells = 9_445, 15_625
    rows = [("P(a), NB201 supernet, one child at a time", device, f"{m['one_at_a_time']:.4g}", "s/child",
             f"{m['sample']} sampled cells, {IMAGES} D_val images, batch-statistics BN")]
    if "space" in m:
        space = m["space"]
        rows += [("P(a) of all 15,625 NB201 cells", device, f"{space:.4g}", "s",
                  f"{unique:,} forwards of {IMAGES} images, {m['per_pass']} children per pass; one at a time it "
                  f"would take {m['one_at_a_time'] * unique:.4g} s ({m['one_at_a_time'] * unique / space:.2g}x)")]
    else:
        space = m["one_at_a_time"] * unique
        rows += [("P(a) of all 15,625 NB201 cells (extrapolated)", device, f"{space:.4g}", "s",
                  f"{unique:,} forwards x the per-child time (one child per pass, this device's default); "
                  f"4 children per pass: {m['batched_4']:.4g} s/child ({m['batched_4'] / m['one_at_a_time']:.2f}x)")]
    p = paper_se_nas()
    steps = -(-25_000 // p["batch"])
    train = m["spos_step"] * steps * p["stage_epochs"]
    rows += [(f"SPOS step, NB201 supernet, batch {p['batch']}", device, f"{m['spos_step']:.4g}", "s/step",
              "one sampled path: forward, backward, clip, Nesterov SGD (median of 5)"),
             ("SE-NAS shrink stage 1 at paper settings (composed)", device, f"{space + train:.4g}", "s",
              f"P(a) of {cells:,} cells ({space:.4g} s) + {p['stage_epochs']} SPOS epochs x {steps} steps "
              f"({train:.4g} s)")]
    return rows
