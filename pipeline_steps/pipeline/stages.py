"""The stages the Snakemake rules call. Each writes its outputs atomically, a JSON with its
measured wall time and device, and one MLflow run; long stages resume from their last epoch."""
from __future__ import annotations

import time
from pathlib import Path


from ..common.atomic import atomic_copy, read_json, write_json
from ..common.checkpoints import load_checkpoint, load_resume
from ..common.device import resolve_device
from ..common.errors import NasflowError
from ..common.progress import log_line
from ..data.catalog import dataset_info
from ..data.search_data import device_images
from ..evaluation.benchmark import load_benchmark
from ..evaluation.retrain import NB201Network, RetrainSettings, cifar_network
from ..evaluation.retrain import retrain as retrain_network
from ..methods import PROTOCOL_VERSIONS, get_method
from ..spaces import get_space
from ..spaces.genotype import Genotype, genotype_from_json
from ..transforms.spos import KeptSnapshots
from .stage_run import StageRun, data_settings, log_data, run_name, stage_tags
from .tracking import Tracker


def supernet(spec: dict, runtime: dict, out_ckpt: Path, out_metrics: Path, out_history: Path) -> None:
    """Train the shared supernet for `search.epochs` epochs in `spec.mode` (alpha frozen for the first
    `alpha_warmup` epochs where a method asks for a warm-up), checkpointing every epoch; with
    `search.snapshots` K, the last epoch's K-snapshot weight average is kept in the state."""
    run = StageRun(spec, runtime, out_ckpt.parent, run_name(spec), "shared")
    epochs, snapshots = spec["search"]["epochs"], spec["search"].get("snapshots", 0)
    log_line(f"supernet {run.key}: epoch {run.state.epoch} of {epochs}, {run.data.steps_per_epoch} steps per epoch "
             f"(batch {run.data.batch_size}) on {run.device}")
    while run.state.epoch < epochs:
        # `snapshots: K`: the last epoch keeps K weight snapshots' mean in the state (SPOS / SE-NAS Eq. 4)
        hooks = [KeptSnapshots(run.data.steps_per_epoch, snapshots)] if snapshots and run.state.epoch == epochs - 1 else []
        run.epoch("fixed_alpha" if run.state.epoch < spec.get("alpha_warmup", 0) else spec["mode"], hooks=hooks)
    run.finish(out_ckpt, out_metrics, out_history)


def method_stage(spec: dict, runtime: dict, start: Path, out_ckpt: Path, out_metrics: Path, out_history: Path) -> None:
    """A method's own stage on the state `start` holds (e.g. DARTS-PT's selection); resumes per epoch."""
    method, settings = get_method(spec["method"]), spec["settings"]
    run = StageRun(spec, runtime, out_ckpt.parent, run_name(spec), spec["method"], start=start, prepare=lambda state: method.prepare_stage(spec["stage"], state, settings),
                   load=method.load_state)
    log_line(f"{spec['method']} {spec['stage']} {run.key}: from {start} at epoch {run.state.epoch}, "
             f"{run.data.steps_per_epoch} steps per epoch (batch {run.data.batch_size}) on {run.device}")
    artifacts = method.run_stage(spec["stage"], run, settings) or {}
    for name, data in artifacts.items():
        write_json(out_ckpt.parent / name, data)
        run.tracker.log_dict(data, name)
    run.finish(out_ckpt, out_metrics, out_history)


def derive(spec: dict, runtime: dict, state_ckpt: Path, out: Path) -> None:
    """Read the architecture out of the method's final state with the method's selection rule."""
    t0 = time.perf_counter()
    method = get_method(spec["method"])
    space = get_space(spec["space"], spec["space_settings"])
    ckpt = load_checkpoint(state_ckpt)
    history = ckpt["history"]
    if not history:
        raise NasflowError(f"{state_ckpt} holds no trained epoch; re-run its stage")
    index = method.select_record(space, history, spec["settings"])
    record = history[index]
    arch = method.derive(space, record, spec["settings"])
    tracker = Tracker(runtime["tracking"], run_name(spec), stage_tags(spec, runtime, spec["method"]))
    tracker.log_params(spec)
    result = {"arch": str(arch), "method": spec["method"], "space": spec["space"], "ops": list(space.ops),
              "state_key": ckpt["meta"]["key"],
              "epoch": record["epoch"], "selected_record": index, "alpha": record["alpha"], "mask": record["mask"],
              "search_wall_time_s": search_wall_time(history, index)}
    criterion = spec["settings"].get("criterion")
    score_key = spec["settings"].get("naive_pruning") if criterion == "naive" else criterion
    if score_key in record.get("scores", {}):  # the score this method selected by, for the report's heat map
        result["scores"] = {criterion: record["scores"][score_key]}
    if isinstance(arch, Genotype):  # DARTS space: the genotype as data, and a picture of both cells
        result["genotype"] = arch.to_dict()
        from ..spaces.cell_plot import plot_genotype  # matplotlib: only DARTS-space derives draw

        for picture in plot_genotype(arch, out.with_name("cells"), title=f"{spec.get('name', spec['method'])}, seed {spec['seed']}"):
            tracker.log_artifact(picture)
    tracker.log_dict(result["alpha"], "alpha.json")
    tracker.log_dict({k: result[k] for k in ("arch", "genotype") if k in result}, "arch.json")
    tracker.set_tags({"arch": result["arch"][:5000]})
    result["wall_time_s"] = time.perf_counter() - t0
    write_json(out, result)
    tracker.finish()
    log_line(f"derive {_label(spec)}: {result['arch']} (history record {index}, epoch {record['epoch']}; "
             f"{len(history)} records)")


def _label(spec: dict) -> str:
    return f"{spec['method']} {spec['space']} {spec['dataset']} seed{spec['seed']}"


def provenance(method: str, runtime: dict, stage_metrics: list[Path]) -> dict:
    """Where a result came from: profile, commit, protocol generation, and per training stage the
    device, torch and data it ran on (a ledger record is made of these)."""
    stages = [read_json(p) for p in stage_metrics]
    return {"profile": runtime["profile"], "git_commit": runtime["git_commit"],
            "protocol_version": PROTOCOL_VERSIONS[method],
            "device_name": stages[0].get("device_name"), "torch": stages[0].get("torch"),
            "data_fingerprint": stages[0].get("data_fingerprint"),
            "stages": [{k: m.get(k) for k in ("stage", "key", "device_name", "torch", "data_fingerprint",
                                              "captured_step", "wall_time_s")} for m in stages]}


def search_wall_time(history: list[dict], index: int) -> dict[str, float]:
    """Measured time per training stage up to the selected record (an early stop ends the search there)."""
    out: dict[str, float] = {}
    for rec in history[: index + 1]:
        out[rec.get("stage", "supernet")] = rec["wall_time_s"]
    return out


def wall_times(arch: dict, stage_metrics: list[Path], **more: float) -> dict[str, float]:
    """Each stage's measured wall time; training stages count up to the record the method selected."""
    times = {m["stage"] if "stage" in m else "supernet": m["wall_time_s"] for m in map(read_json, stage_metrics)}
    times.update(arch.get("search_wall_time_s", {}))
    return {**times, "derive": arch["wall_time_s"], **more}


def lookup(spec: dict, runtime: dict, arch_file: Path, stage_metrics: list[Path], history_file: Path,
           out: Path) -> None:
    """Benchmark numbers of the derived cell, and of the cell each of the method's criteria would
    derive after every epoch (the search trajectories)."""
    t0 = time.perf_counter()
    method = get_method(spec["method"])
    space = get_space(spec["space"], spec["space_settings"])
    bench = load_benchmark(spec["benchmark"]["source"], runtime["benchmark"]["path"])
    arch = read_json(arch_file)
    row = bench.lookup(arch["arch"])
    tracker = Tracker(runtime["tracking"], run_name(spec), stage_tags(spec, runtime, spec["method"]))
    tracker.log_params(spec)
    history = read_json(history_file)
    trajectories = {}
    for label, settings in method.criteria(spec["settings"]).items():
        trajectories[label] = []
        for rec in history:
            numbers = bench.lookup(method.derive(space, rec, settings))
            trajectories[label].append({"epoch": rec["epoch"], "stage": rec.get("stage", "supernet"), **numbers})
    for point in trajectories[method.name if method.name in trajectories else next(iter(trajectories))]:
        tracker.log_metrics({f"bench_{k}": v for k, v in point.items() if k.endswith("_acc")}, step=point["epoch"])
    first = read_json(stage_metrics[0])
    result = {**row, "method": spec["method"], "space": spec["space"], "dataset": spec["dataset"],
              "seed": spec["seed"], "supernet_key": first["key"], "device": first["device"],
              "selected_epoch": arch["epoch"], "trajectories": trajectories,
              "wall_time_s": wall_times(arch, stage_metrics, lookup=time.perf_counter() - t0),
              **provenance(spec["method"], runtime, stage_metrics)}
    tracker.log_metrics({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=0)
    tracker.set_tags({"arch": row["arch_str"]})
    write_json(out, result)
    tracker.finish()
    log_line(f"lookup {_label(spec)}: {row['arch_str']} (index {row['nb201_index']}) rank {row['rank']} of "
             f"{len(bench)}; test acc CIFAR-10 {row['cifar10_test_acc']:.2f}, CIFAR-100 {row['cifar100_test_acc']:.2f}, "
             f"ImageNet16-120 {row['imagenet16_120_test_acc']:.2f}")


def retrain(spec: dict, runtime: dict, arch_file: Path, stage_metrics: list[Path], out_model: Path, out: Path) -> None:
    """Train the derived network from scratch, resuming per epoch: a DARTS-space genotype with the
    DARTS protocol (METHODS.md 1.3), or an NB201 cell with the NB201 protocol."""
    arch = read_json(arch_file)
    device = resolve_device(runtime["device"], runtime.get("gpu_slots", 1))
    data = data_settings(spec, runtime)
    train_images, test_images = device_images(data, "train", device), device_images(data, "test", device)
    settings = RetrainSettings(**spec["retrain"])
    num_classes = dataset_info(spec["dataset"]).num_classes
    if "genotype" in arch:
        model = cifar_network(genotype_from_json(arch["genotype"]), num_classes, settings)
    else:
        model = NB201Network(arch["arch"], num_classes, settings.channels, cells_per_stage=settings.layers)
    model = model.to(device)
    resume = out_model.with_name("resume.pt")
    meta = (load_resume(resume) or {}).get("meta", {})
    # a resumed retrain logs to a new run linked to the one its checkpoint names (tracking.py)
    tracker = Tracker(runtime["tracking"], run_name(spec), stage_tags(spec, runtime, spec["method"]),
                      previous_run=meta.get("run_id"))
    tracker.log_params(spec)
    log_data(tracker, data, train_images.fingerprint, len(train_images), "training")
    log_data(tracker, data, test_images.fingerprint, len(test_images), "evaluation")
    result = retrain_network(model, train_images, test_images, settings, resume, spec["seed"],
                             on_epoch=lambda r: tracker.log_metrics(r, step=r["epoch"]), meta={"run_id": tracker.run_id})
    atomic_copy(resume, out_model)  # resume.pt stays until Snakemake has recorded the job (leftovers.py)
    first = read_json(stage_metrics[0])
    result = {**{k: v for k, v in result.items() if k != "wall_time_s"}, "arch": arch["arch"], "method": spec["method"],
              "space": spec["space"], "dataset": spec["dataset"], "seed": spec["seed"], "device": str(device),
              "supernet_key": first["key"], "selected_epoch": arch["epoch"],
              "wall_time_s": wall_times(arch, stage_metrics, retrain=result["wall_time_s"])}
    tracker.log_metrics({k: result[k] for k in ("test_acc", "test_error", "params_m", "flops_m")}, step=result["epochs"])
    write_json(out, result)
    tracker.finish()
    log_line(f"retrain {_label(spec)}: test error {result['test_error']:.2f}% after {result['epochs']} epochs, "
             f"{result['params_m']:.3f}M params, {result['flops_m']:.1f}M FLOPs")
