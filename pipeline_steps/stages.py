"""The stages the Snakemake rules call. Each writes its outputs atomically, a JSON with its
measured wall time and device, and one MLflow run; long stages resume from their last epoch."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from .atomic import read_json, write_json
from .benchmark import load_benchmark
from .config import spec_key
from .data import DataSettings, SearchData, device_images
from .datasets import dataset_info
from .device import resolve_device
from .methods import get_method
from .retrain import NB201Network, RetrainSettings, cifar_network
from .retrain import retrain as retrain_network
from .spaces import get_space
from .spaces.cell_plot import plot_genotype
from .spaces.genotype import Genotype, genotype_from_json
from .supernet import Optimisation, init_state
from .tracking import Tracker
from .train import StepSettings, train_epoch


def _tags(spec: dict, runtime: dict, method: str) -> dict:
    return {"method": method, "space": spec["space"], "dataset": spec["dataset"], "seed": spec["seed"],
            "stage": spec["stage"], "stage_key": spec_key(spec), "git_commit": runtime["git_commit"],
            "params_hash": runtime["config_hash"], "profile": runtime["profile"]}


def _benchmark_for(space: str, benchmark: dict):
    return load_benchmark(benchmark["source"], benchmark["path"]) if space == "nb201" else None


def _data_settings(spec: dict, runtime: dict) -> DataSettings:
    """Where the data lives (runtime) and how much of it, at what size (the stage's spec)."""
    d, scale = runtime["data"], spec["data"]
    return DataSettings(dataset=spec["dataset"], root=d["root"], source=d["source"], download=d["download"],
                        image_size=scale["image_size"], max_images=scale["max_images"],
                        train_portion=scale.get("train_portion", 0.5))


def supernet(spec: dict, runtime: dict, out_ckpt: Path, out_metrics: Path, out_history: Path) -> None:
    """Train the shared supernet for `search.epochs` epochs in `spec.mode`, checkpointing every epoch."""
    key = spec_key(spec)
    space = get_space(spec["space"], spec["space_settings"])
    s = spec["search"]
    device = resolve_device(runtime["device"])
    data = SearchData(_data_settings(spec, runtime), s["batch_size"], device)
    opt = Optimisation(epochs=s["epochs"], lr=s["lr"], lr_min=s["lr_min"], momentum=s["momentum"],
                       weight_decay=s["weight_decay"], arch_lr=s["arch_lr"], arch_betas=tuple(s["arch_betas"]),
                       arch_weight_decay=s["arch_weight_decay"])
    state = init_state(space, data.num_classes, opt, spec["seed"], device)
    resume = out_ckpt.parent / "resume.pt"
    meta: dict = {}
    if resume.exists():
        ckpt = torch.load(resume, map_location="cpu", weights_only=False)
        if ckpt.get("meta", {}).get("key") == key:  # a checkpoint of other settings is ignored
            state.load_state_dict(ckpt)
            meta = ckpt["meta"]
            print(f"resuming supernet {key} after epoch {state.epoch}", file=sys.stderr)
    tracker = Tracker(runtime["tracking"], f"supernet-{spec['space']}-{spec['dataset']}-seed{spec['seed']}",
                      _tags(spec, runtime, "shared"), run_id=meta.get("run_id"))
    if not meta:
        tracker.log_params(spec)
    bench = _benchmark_for(spec["space"], runtime["benchmark"])
    wall = float(meta.get("wall_time_s", 0.0))
    step_settings = StepSettings(grad_clip=s["grad_clip"])
    while state.epoch < s["epochs"]:
        t0 = time.perf_counter()
        record = train_epoch(state, data, spec["mode"], step_settings, progress=sys.stderr.isatty())
        wall += time.perf_counter() - t0
        record["wall_time_s"] = wall
        record["alpha"] = {k: a.detach().cpu().tolist() for k, a in state.alpha.items()}
        record["mask"] = {k: m.tolist() for k, m in state.mask.items()}
        record["arch"] = str(space.derive(state.weights(), state.mask, True))
        if bench is not None:  # live monitoring only; the lookup stage recomputes per method
            record["bench_cifar10_test_acc"] = bench.lookup(record["arch"])["cifar10_test_acc"]
        state.history.append(record)
        tracker.log_metrics({k: v for k, v in record.items() if isinstance(v, float)}, step=state.epoch)
        state.save(resume, key=key, run_id=tracker.run_id, wall_time_s=wall)
        print(f"epoch {state.epoch}/{s['epochs']} " + " ".join(
            f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)) + f" arch={record['arch']}",
            file=sys.stderr, flush=True)
    state.save(out_ckpt, key=key, spec=spec)
    write_json(out_history, state.history)
    final = state.history[-1] if state.history else {}
    tracker.log_dict(final.get("alpha", {}), "alpha.json")
    tracker.log_dict({"arch": final.get("arch")}, "arch.json")
    write_json(out_metrics, {"key": key, "epochs": state.epoch, "wall_time_s": wall, "device": str(device),
                             **{k: v for k, v in final.items() if k not in ("alpha", "mask", "wall_time_s")}})
    tracker.finish()
    resume.unlink(missing_ok=True)


def derive(spec: dict, runtime: dict, supernet_ckpt: Path, out: Path) -> None:
    """Read the architecture out of a trained supernet with the method's selection rule."""
    t0 = time.perf_counter()
    method = get_method(spec["method"])
    space = get_space(spec["space"], spec["space_settings"])
    ckpt = torch.load(supernet_ckpt, map_location="cpu", weights_only=False)
    arch = method.derive(space, ckpt["alpha"], ckpt["mask"], spec["settings"])
    tracker = Tracker(runtime["tracking"], f"{spec['method']}-derive-{spec['space']}-{spec['dataset']}-seed{spec['seed']}",
                      _tags(spec, runtime, spec["method"]))
    tracker.log_params(spec)
    result = {"arch": str(arch), "method": spec["method"], "space": spec["space"], "supernet_key": ckpt["meta"]["key"],
              "alpha": {k: a.tolist() for k, a in ckpt["alpha"].items()}}
    if isinstance(arch, Genotype):  # DARTS space: the genotype as data, and a picture of both cells
        result["genotype"] = arch.to_dict()
        for picture in plot_genotype(arch, out.with_name("cells"), title=f"{spec['method']} seed {spec['seed']}"):
            tracker.log_artifact(picture)
    tracker.log_dict(result["alpha"], "alpha.json")
    tracker.log_dict({k: result[k] for k in ("arch", "genotype") if k in result}, "arch.json")
    tracker.set_tags({"arch": result["arch"][:5000]})
    result["wall_time_s"] = time.perf_counter() - t0
    write_json(out, result)
    tracker.finish()


def lookup(spec: dict, runtime: dict, arch_file: Path, supernet_metrics: Path, supernet_history: Path,
           out: Path) -> None:
    """Benchmark numbers of the derived cell, and of the cell the method would derive after each epoch."""
    t0 = time.perf_counter()
    method = get_method(spec["method"])
    space = get_space(spec["space"], spec["space_settings"])
    bench = load_benchmark(spec["benchmark"]["source"], spec["benchmark"]["path"])
    arch = read_json(arch_file)
    row = bench.lookup(arch["arch"])
    tracker = Tracker(runtime["tracking"], f"{spec['method']}-lookup-{spec['space']}-{spec['dataset']}-seed{spec['seed']}",
                      _tags(spec, runtime, spec["method"]))
    tracker.log_params(spec)
    trajectory = []
    for rec in read_json(supernet_history):
        epoch_arch = method.derive(space, rec["alpha"], rec["mask"], spec["settings"])
        numbers = bench.lookup(epoch_arch)
        trajectory.append({"epoch": rec["epoch"], **numbers})
        tracker.log_metrics({f"bench_{k}": v for k, v in numbers.items() if k.endswith("_acc")}, step=rec["epoch"])
    sn = read_json(supernet_metrics)
    result = {**row, "method": spec["method"], "space": spec["space"], "dataset": spec["dataset"],
              "seed": spec["seed"], "supernet_key": sn["key"], "device": sn["device"], "trajectory": trajectory,
              "wall_time_s": {"supernet": sn["wall_time_s"], "derive": arch["wall_time_s"],
                              "lookup": time.perf_counter() - t0}}
    tracker.log_metrics({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=0)
    tracker.set_tags({"arch": row["arch_str"]})
    write_json(out, result)
    tracker.finish()


def retrain(spec: dict, runtime: dict, arch_file: Path, supernet_metrics: Path, out_model: Path, out: Path) -> None:
    """Train the derived network from scratch, resuming per epoch: a DARTS-space genotype with the
    DARTS protocol (METHODS.md 1.3), or an NB201 cell with the NB201 protocol."""
    arch = read_json(arch_file)
    device = resolve_device(runtime["device"])
    data = _data_settings(spec, runtime)
    train_images, test_images = device_images(data, "train", device), device_images(data, "test", device)
    settings = RetrainSettings(**spec["retrain"])
    num_classes = dataset_info(spec["dataset"]).num_classes
    if "genotype" in arch:
        model = cifar_network(genotype_from_json(arch["genotype"]), num_classes, settings)
    else:
        model = NB201Network(arch["arch"], num_classes, settings.channels, cells_per_stage=settings.layers)
    model = model.to(device)
    resume = out_model.with_name("resume.pt")
    meta = torch.load(resume, map_location="cpu", weights_only=False).get("meta", {}) if resume.exists() else {}
    tracker = Tracker(runtime["tracking"], f"{spec['method']}-retrain-{spec['space']}-{spec['dataset']}-seed{spec['seed']}",
                      _tags(spec, runtime, spec["method"]), run_id=meta.get("run_id"))
    if not meta:
        tracker.log_params(spec)
    result = retrain_network(model, train_images, test_images, settings, resume, spec["seed"],
                             on_epoch=lambda r: tracker.log_metrics(r, step=r["epoch"]), meta={"run_id": tracker.run_id},
                             progress=sys.stderr.isatty())
    os.replace(resume, out_model)
    sn = read_json(supernet_metrics)
    result = {**{k: v for k, v in result.items() if k != "wall_time_s"}, "arch": arch["arch"], "method": spec["method"],
              "space": spec["space"], "dataset": spec["dataset"], "seed": spec["seed"], "device": str(device),
              "supernet_key": sn["key"], "wall_time_s": {"supernet": sn["wall_time_s"], "derive": arch["wall_time_s"],
                                                         "retrain": result["wall_time_s"]}}
    tracker.log_metrics({k: result[k] for k in ("test_acc", "test_error", "params_m", "flops_m")}, step=result["epochs"])
    write_json(out, result)
    tracker.finish()
