"""HEP-NAS sub-supernet training at paper scale: memory held by the 2^|h| children and one SMD step."""
from __future__ import annotations

import statistics
import time

import torch

from iteration import BATCH, SUPERNETS, RandomSearchData, build_state, log, max_rss_bytes, paper_params
from pipeline_steps.supernet.train import MODES, StepSettings, StepStats


def measure_smd(space_name: str, device_name: str) -> dict:
    """HEP-NAS sub-supernet training: the parent split into 2^|h_k| children on the largest
    hierarchy (NB201 node 3: 3 edges, 8 children; DARTS node 5: 5 edges, 32 children), each a full
    state with its optimisers; memory held by the children, and one SMD step (CE + KL to the
    teacher + mean KL to every sibling: 1 + 2^|h_k| forwards). DARTS steps only on a GPU."""
    from pipeline_steps.transforms.distill import SMDSettings
    from pipeline_steps.transforms.partition import EdgeSplit, spawn_child, spawn_children

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    data = RandomSearchData(device, batch_size=paper_batch())
    state = build_state("nb201" if space_name == "nb201" else "darts_no_none", device)
    n_ops = len(state.space.ops)
    kind, edges = ("cell", (3, 4, 5)) if space_name == "nb201" else ("normal", (9, 10, 11, 12, 13))
    half = n_ops // 2
    splits = [EdgeSplit(kind, e, (tuple(range(half)), tuple(range(half, n_ops))), 0.0) for e in edges]
    MODES["bilevel"](state, data, StepSettings(grad_clip=5.0), StepStats(), StepStats(), [])  # optimiser state exists
    sync()
    before = torch.cuda.memory_allocated(device) if cuda else max_rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    teacher = spawn_child(state, state.mask)
    children = spawn_children(state, splits)
    sync()
    held = (torch.cuda.memory_allocated(device) - before) if cuda else state_bytes([teacher, *children])
    out = {"children": len(children), "held": held, "step": None, "peak": None}
    if cuda or space_name == "nb201":
        settings = SMDSettings(grad_clip=5.0, teacher=teacher, siblings=tuple(children[1:]))
        times = []
        for i in range(3):
            log(f"SMD step {space_name} {i + 1}/3")
            sync()
            t0 = time.perf_counter()
            MODES["smd"](children[0], data, settings, StepStats(), StepStats(), [])
            sync()
            times.append(time.perf_counter() - t0)
        out["step"] = statistics.median(times[1:])
        out["peak"] = (torch.cuda.max_memory_allocated(device) if cuda else max_rss_bytes()) - before
    return out


def paper_batch() -> int:
    """HEP-NAS's NB201 batch in the paper profile."""
    batch = paper_params()["method"]["hep_nas"]["batch_size"]
    return (batch.get("nb201") if isinstance(batch, dict) else batch) or BATCH


def state_bytes(states) -> int:
    """Bytes of every tensor the states hold: weights, BN buffers, alpha, optimiser moments."""
    def tensors(obj):
        if torch.is_tensor(obj):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from tensors(v)
    total = 0
    for st in states:
        for t in tensors([st.model.state_dict(), list(st.alpha.values()), st.w_optimizer.state_dict()["state"],
                          st.a_optimizer.state_dict()["state"]]):
            total += t.numel() * t.element_size()
    return total


def smd_rows(space_name: str, device: str, m: dict) -> list[tuple]:
    what = f"HEP-NAS SMD, {SUPERNETS['nb201' if space_name == 'nb201' else 'darts_no_none']}, {m['children']} children"
    mem = "torch.cuda.memory_allocated" if device.startswith("cuda") else "peak RSS"
    held = "torch.cuda.memory_allocated increase after spawning" if device.startswith("cuda") else "bytes of their tensors"
    rows = [(f"{what}: memory held by the children + teacher", device, f"{m['held'] / 2**20:.0f}", "MiB",
             f"{held}: weights, BN buffers, alpha, SGD momentum, Adam moments")]
    if m["step"] is None:
        rows.append((f"{what}: one SMD step", device, "-", "s", "skipped on CPU (1 + 32 forwards of the DARTS supernet)"))
    else:
        rows += [(f"{what}: one SMD step", device, f"{m['step']:.4g}", "s",
                  f"batch {paper_batch()} (the paper's): child forward/backward + teacher + {m['children'] - 1} "
                  "sibling forwards"),
                 (f"{what}: peak memory over the step", device, f"{m['peak'] / 2**20:.0f}", "MiB",
                  f"{mem} increase over the parent alone, children held")]
    return rows
