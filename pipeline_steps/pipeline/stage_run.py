"""What every training stage shares: data on the device, a supernet state that resumes from its
last checkpoint, an MLflow run, per-epoch history records, and the atomic final outputs.

The supernet stage and every method stage (DARTS-PT selection, HPE pruning stages, ...) are a
`StageRun` plus a loop that calls `epoch()` and the method's own transformations of `state`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..common.atomic import write_json
from ..common.checkpoints import load_checkpoint, load_resume
from ..common.device import device_name, resolve_device, use_memory_format
from ..data.identity import check_data_identity
from ..data.search_data import DataSettings, SearchData
from ..evaluation.benchmark import load_benchmark
from ..scores.ostr import OStrStatistics
from ..spaces import get_space
from ..supernet.state import Optimisation, SupernetState, init_state
from ..supernet.train import step_settings, train_epoch
from .config import spec_key
from .tracking import Tracker


def run_name(spec: dict) -> str:
    """A stage run's MLflow name: what ran, on what, which seed ("darts_pt select nb201/cifar10
    seed0"); a supernet also names its key, as methods with other supernet settings train their own."""
    where = f"{spec['space']}/{spec['dataset']} seed{spec['seed']}"
    if spec["stage"] == "supernet":
        return f"supernet {where} {spec_key(spec)}"
    if spec["stage"] == "ranking" and "method" not in spec:  # a shared supernet's ranking
        return f"supernet ranking {where} {spec['supernet_key']}"
    if spec["stage"] == "ranking" and "of" in spec:
        return f"{spec['method']} ranking {spec['of']} {where}"
    return f"{spec['method']} {spec['stage']} {where}"


def log_data(tracker: Tracker, settings: DataSettings, fingerprint: str, images: int, context: str) -> None:
    """The images a stage read as the run's dataset input; its digest is the data fingerprint."""
    tracker.log_dataset(settings.dataset, fingerprint, str(settings.root), context,
                        profile={"images": images, "image_size": settings.image_size, "source": settings.source,
                                 "max_images": settings.max_images})


def stage_tags(spec: dict, runtime: dict, method: str) -> dict:
    return {"method": method, "space": spec["space"], "dataset": spec["dataset"], "seed": spec["seed"],
            "stage": spec["stage"], "stage_key": spec_key(spec), "git_commit": runtime["git_commit"],
            "params_hash": runtime["config_hash"], "profile": runtime["profile"]}


def data_settings(spec: dict, runtime: dict) -> DataSettings:
    """Where the data lives (runtime) and how much of it, at what size (the stage's spec)."""
    d, scale = runtime["data"], spec["data"]
    if scale.get("id") is not None:
        check_data_identity(spec["dataset"], scale["id"], d)
    return DataSettings(dataset=spec["dataset"], root=d["root"], source=d["source"], download=d["download"],
                        image_size=scale["image_size"], max_images=scale["max_images"],
                        train_portion=scale.get("train_portion", 0.5))


def optimisation(search: dict) -> Optimisation:
    return Optimisation(epochs=search["epochs"], lr=search["lr"], lr_min=search["lr_min"], momentum=search["momentum"],
                        weight_decay=search["weight_decay"], arch_lr=search["arch_lr"],
                        arch_betas=tuple(search["arch_betas"]), arch_weight_decay=search["arch_weight_decay"],
                        alpha_init=search["alpha_init"], lr_period=search.get("lr_period"),
                        nesterov=search.get("nesterov", False))


class StageRun:
    """A resumable training stage. `start` is the checkpoint it continues from (None: a fresh
    supernet); `prepare(state)` runs after `start` is loaded and before `resume.pt` is, so that
    optimisers a stage replaces are the ones its own checkpoint restores."""

    def __init__(self, spec: dict, runtime: dict, out_dir: Path, run_name: str, method: str,
                 start: Path | None = None, prepare: Callable[[SupernetState], None] | None = None,
                 load: Callable[[SupernetState, dict], None] = SupernetState.load_state_dict):
        self.spec, self.runtime, self.key = spec, runtime, spec_key(spec)
        self.space = get_space(spec["space"], spec["space_settings"])
        self.device = resolve_device(runtime["device"], runtime.get("gpu_slots", 1))
        search = spec["search"]
        self.data_settings = data_settings(spec, runtime)
        self.data = SearchData(self.data_settings, search["batch_size"], self.device)
        self.state = init_state(self.space, self.data.num_classes, optimisation(search), spec["seed"], self.device)
        self.memory_format = use_memory_format(self.state.model, self.device, runtime.get("channels_last", "off"))
        self.wall = 0.0
        if start is not None:
            ckpt = load_checkpoint(start)
            load(self.state, ckpt)  # its history continues here; its wall time stays its own
        if prepare is not None:
            prepare(self.state)
        self.resume = out_dir / "resume.pt"
        meta: dict = {}
        ckpt = load_resume(self.resume)
        if ckpt is not None:
            if ckpt.get("meta", {}).get("key") == self.key:  # a checkpoint of other settings is ignored
                load(self.state, ckpt)
                meta = ckpt["meta"]
                self.wall = float(meta.get("wall_time_s", 0.0))
                print(f"resuming {spec['stage']} {self.key} after epoch {self.state.epoch}", file=sys.stderr)
        self.resumed = bool(meta)
        # a resumed stage logs to a new run linked to the one its checkpoint names (tracking.py)
        self.tracker = Tracker(runtime["tracking"], run_name, stage_tags(spec, runtime, method),
                               previous_run=meta.get("run_id"))
        self.tracker.log_params(spec)
        log_data(self.tracker, self.data_settings, self.data.fingerprint, len(self.data.images), "training")
        for record in self.state.history if self.resumed else ():
            if record.get("stage") == spec["stage"]:
                self.tracker.log_metrics({k: v for k, v in record.items() if isinstance(v, float)}, step=record["epoch"])
        self.bench = load_benchmark(runtime["benchmark"]["source"], runtime["benchmark"]["path"]) \
            if spec["space"] == "nb201" else None
        self.step_settings = step_settings(spec.get("mode"), search)

    # ----------------------------------------------------------------- per epoch
    def epoch(self, mode: str, hooks: Iterable = (), **extra) -> dict:
        """One epoch in `mode`; the history record holds alpha, mask, the magnitude-derived arch,
        the operation-strength statistics of the alpha steps, and `extra`."""
        state = self.state
        ostr = OStrStatistics()
        t0 = time.perf_counter()
        record = train_epoch(state, self.data, mode, self.step_settings, hooks=[ostr, *hooks],
                             captured=self.runtime.get("captured_step", "off"), label=self.spec["stage"])
        self.wall += time.perf_counter() - t0
        record.update(stage=self.spec["stage"], wall_time_s=self.wall, **extra)
        record["alpha"] = {k: a.detach().cpu().tolist() for k, a in state.alpha.items()}
        record["mask"] = {k: m.tolist() for k, m in state.mask.items()}
        record["arch"] = str(self.space.derive(state.weights(self.step_settings.mixing), state.mask, True))
        scores = ostr.finish_epoch()
        if scores:
            record["scores"] = scores
        if self.bench is not None:  # live monitoring only; the lookup stage recomputes per method
            record["bench_cifar10_test_acc"] = self.bench.lookup(record["arch"])["cifar10_test_acc"]
        state.history.append(record)
        self.tracker.log_metrics({k: v for k, v in record.items() if isinstance(v, float)}, step=state.epoch)
        self.checkpoint()
        print(f"{self.spec['stage']} epoch {state.epoch} " + " ".join(
            f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)) + f" arch={record['arch']}",
            file=sys.stderr, flush=True)
        return record

    def checkpoint(self) -> None:
        self.state.save(self.resume, key=self.key, run_id=self.tracker.run_id, wall_time_s=self.wall)

    def timed(self, fn: Callable, *args, **kwargs):
        """Run a scoring/selection step and count its time as this stage's wall time."""
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.wall += time.perf_counter() - t0
        return out

    # ----------------------------------------------------------------- outputs
    def finish(self, out_ckpt: Path, out_metrics: Path, out_history: Path, **metrics) -> None:
        state = self.state
        state.save(out_ckpt, key=self.key, spec=self.spec)
        write_json(out_history, state.history)
        final = state.history[-1] if state.history else {}
        self.tracker.log_dict(final.get("alpha", {}), "alpha.json")
        self.tracker.log_dict({"arch": final.get("arch")}, "arch.json")
        write_json(out_metrics, {"key": self.key, "stage": self.spec["stage"], "epochs": state.epoch,
                                 "wall_time_s": self.wall, "device": str(self.device),
                                 "device_name": device_name(self.device), "torch": torch.__version__,
                                 "data_fingerprint": self.data.fingerprint,
                                 "captured_step": self.runtime.get("captured_step", "off"),
                                 "memory_format": self.memory_format, **metrics,
                                 **{k: v for k, v in final.items()
                                    if isinstance(v, (int, float, str)) and k not in ("wall_time_s", "stage")}})
        self.tracker.finish()
        # resume.pt stays: were Snakemake killed before recording this job, the rerun would finish from
        # it rather than train again; Snakemake's own ending removes it (leftovers.py)
