"""The pipeline plan: which runs exist, what each stage reads (its spec) and where it writes.

Snakemake rules and the CLI both ask this module, so a path or a spec is defined once.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

from ..methods import get_method
from ..report.reproduction import load_paper_results, method_name
from .config import canonical_json, spec_key
from .machine import without_machine_keys

RUN_DIR = "results/{space}/{dataset}/seed{seed}"
SUPERNET_DIR = RUN_DIR + "/supernet/{key}"
METHOD_STAGE_DIR = RUN_DIR + "/{method}/{stage}"    # a method's own stages (e.g. DARTS-PT's select)
DERIVE_FILE = RUN_DIR + "/{method}/derive/arch.json"
LOOKUP_FILE = RUN_DIR + "/{method}/lookup/result.json"
RETRAIN_FILE = RUN_DIR + "/{method}/retrain/result.json"
RANKING_FILE = RUN_DIR + "/{method}/ranking/result.json"   # supernet ranking diagnostic (NB201)
CHECKPOINT_RANKING = "ranking.json"                         # beside each training stage's supernet.pt
# NB201 cells are looked up in the benchmark; DARTS-space cells are trained from scratch.
RESULT_FILE = {"nb201": LOOKUP_FILE, "darts": RETRAIN_FILE}
REPORT_FILE = "results/REPORT.md"
REPORT_METRICS = "metrics.json"    # at the top, tracked by git: `dvc metrics` reads it
SUMMARY_FILE = "results/{space}/summary.parquet"


class Plan:
    """`identify_data=False` leaves the data's identity out of the specs (for printing settings
    where the data may be absent); every stage that runs needs it."""

    def __init__(self, cfg: dict, project_dir: str | Path = ".", identify_data: bool = True):
        self.cfg = cfg
        self.project_dir = Path(project_dir).resolve()
        self.identify_data = identify_data
        self._data_ids: dict[str, str | None] = {}
        self._paper: dict | None = None

    def data_id(self, dataset: str) -> str | None:
        """The content hash of `dataset` where data.root points (data/identity.py)."""
        if not self.identify_data:
            return None
        if dataset not in self._data_ids:
            from ..data.identity import data_id

            d = self.cfg["data"]
            self._data_ids[dataset] = data_id(dataset, self.project_dir / Path(d["root"]).expanduser(), d["source"],
                                              d["download"])
        return self._data_ids[dataset]

    def data_scale(self, dataset: str, keys=("image_size", "max_images", "train_portion")) -> dict:
        """What a stage reads of the data: which data (its identity) and how much of it, at what size."""
        return {"id": self.data_id(dataset), **{k: self.cfg["data"][k] for k in keys}}

    # ----------------------------------------------------------------- runs
    def runs(self) -> list[dict]:
        c = self.cfg
        return [dict(space=s, dataset=d, seed=seed, method=m)
                for s, d, seed, m in itertools.product(c["spaces"], c["datasets"], c["seeds"], c["methods"])]

    # ----------------------------------------------------------------- specs
    def supernet_spec(self, method: str, space: str, dataset: str, seed: int) -> dict:
        c = self.cfg
        own = get_method(method).supernet(c, space)  # a method's preset may change the supernet
        warmup = {"alpha_warmup": own["alpha_warmup"]} if own.get("alpha_warmup") else {}
        return {**warmup,
            "stage": "supernet",
            "space": space,
            "space_settings": {**c["space"][space], **own["space"]},
            "dataset": dataset,
            "data": self.data_scale(dataset),
            "search": {**c["search"], **own["search"]},
            "mode": own["mode"],
            "seed": int(seed),
        }

    def supernet_dir(self, method: str, space: str, dataset: str, seed: int) -> str:
        key = spec_key(self.supernet_spec(method, space, dataset, seed))
        return SUPERNET_DIR.format(space=space, dataset=dataset, seed=seed, key=key)

    def supernet_spec_for_key(self, space: str, dataset: str, seed: int, key: str) -> dict:
        """The spec behind a supernet path: the methods that share it agree on every field."""
        for method in self.cfg["methods"]:
            spec = self.supernet_spec(method, space, dataset, seed)
            if spec_key(spec) == key:
                return spec
        raise KeyError(f"no configured method trains supernet {key} for {space}/{dataset}/seed{seed}")

    def stage_dirs(self, method: str, space: str, dataset: str, seed: int) -> list[str]:
        """The training stages a method's result rests on, in order: its supernet, then its own stages.
        Each directory holds supernet.pt, metrics.json and history.json."""
        own = [METHOD_STAGE_DIR.format(space=space, dataset=dataset, seed=seed, method=method, stage=stage)
               for stage in get_method(method).stages(self.cfg, space)]
        return [self.supernet_dir(method, space, dataset, seed), *own]

    def final_state(self, method: str, space: str, dataset: str, seed: int) -> str:
        return self.stage_dirs(method, space, dataset, seed)[-1] + "/supernet.pt"

    def method_stage_spec(self, method: str, space: str, dataset: str, seed: int, stage: str) -> dict:
        m = get_method(method)
        stages = m.stages(self.cfg, space)
        if stage not in stages:
            raise KeyError(f"method {method} has no stage {stage!r} (its stages: {stages})")
        sn = self.supernet_spec(method, space, dataset, seed)
        before = self.method_stage_spec(method, space, dataset, seed, stages[stages.index(stage) - 1]) \
            if stages.index(stage) else sn
        return {"stage": stage, "method": method, "space": space, "space_settings": sn["space_settings"],
                "dataset": dataset, "data": sn["data"], "search": sn["search"], "seed": int(seed),
                "settings": m.stage_settings(self.cfg, space, stage), "after": spec_key(before)}

    def method_stage_input(self, method: str, space: str, dataset: str, seed: int, stage: str) -> str:
        dirs = self.stage_dirs(method, space, dataset, seed)
        stages = get_method(method).stages(self.cfg, space)
        return dirs[stages.index(stage)] + "/supernet.pt"

    def paper_name(self, method: str) -> str:
        """The paper's name of a method (for the pictures a stage draws); the id where none is given."""
        if self._paper is None:
            names = self.project_dir / "params" / "paper_results.yaml"
            self._paper = load_paper_results(names.parent) if names.is_file() else {}
        return method_name(self._paper, method)

    def derive_spec(self, method: str, space: str, dataset: str, seed: int) -> dict:
        sn = self.supernet_spec(method, space, dataset, seed)
        return {"stage": "derive", "method": method, "name": self.paper_name(method), "space": space,
                "space_settings": sn["space_settings"],
                "settings": get_method(method).derive_settings(self.cfg, space), "seed": int(seed), "dataset": dataset}

    def lookup_spec(self, method: str, space: str, dataset: str, seed: int) -> dict:
        return {**self.derive_spec(method, space, dataset, seed), "stage": "lookup",
                "benchmark": {"source": self.cfg["benchmark"]["source"]}}

    def retrain_spec(self, method: str, space: str, dataset: str, seed: int) -> dict:
        c = self.cfg
        settings = c["retrain"] if space == "darts" else {k: v for k, v in c["retrain_nb201"].items() if k != "enabled"}
        return {"stage": "retrain", "method": method, "space": space, "dataset": dataset, "seed": int(seed),
                "retrain": settings, "data": self.data_scale(dataset, ("image_size", "max_images"))}

    def _ranking_settings(self, dataset: str) -> dict:
        s = dict(self.cfg["diagnostics"]["ranking"])
        s.pop("enabled")
        if s["metric"] == "auto":  # the searched dataset's test accuracy
            s["metric"] = f"{dataset.replace('-', '_')}_test_acc"
        return s

    def checkpoint_ranking_spec(self, owner: str, dataset: str, seed: int, stage: str) -> dict:
        """The ranking of one training stage's state: `owner` "supernet" with `stage` its key (no
        method named, so the methods that share it share one job), or a method and its own stage."""
        if owner == "supernet":
            sn = self.supernet_spec_for_key("nb201", dataset, seed, stage)
            who = {"of": "supernet", "supernet_key": stage}
        else:
            sn = self.supernet_spec(owner, "nb201", dataset, seed)
            who = {"of": stage, "method": owner}
        return {"stage": "ranking", **who, "space": "nb201", "space_settings": sn["space_settings"],
                "dataset": dataset, "seed": int(seed), "data": sn["data"], "settings": self._ranking_settings(dataset),
                "benchmark": {"source": self.cfg["benchmark"]["source"]}}

    def stage_ranking_files(self, method: str, dataset: str, seed: int) -> list[str]:
        """The ranking of every training stage a method's result rests on, in order."""
        return [d + "/" + CHECKPOINT_RANKING for d in self.stage_dirs(method, "nb201", dataset, seed)]

    def ranking_spec(self, method: str, dataset: str, seed: int) -> dict:
        return {"stage": "ranking", "method": method, "space": "nb201", "dataset": dataset, "seed": int(seed),
                "settings": self._ranking_settings(dataset)}

    def ranking_files(self) -> list[str]:
        if not self.cfg["diagnostics"]["ranking"]["enabled"]:
            return []
        return [RANKING_FILE.format(**r) for r in self.runs() if r["space"] == "nb201"]

    def set_aside_damaged_outputs(self) -> list[str]:
        """Outputs of configured runs that cannot be read (a truncated copy, a full disk, an edit)
        are renamed to *.damaged, so that Snakemake sees them missing and rebuilds them, and no
        reader of theirs fails on every rerun: checkpoints and the JSON files stages write."""
        from ..common.checkpoints import checkpoint_is_readable, json_is_readable, set_aside

        files: list[Path] = []
        for r in self.runs():
            m, sp, d, seed = r["method"], r["space"], r["dataset"], r["seed"]
            for stage_dir in self.stage_dirs(m, sp, d, seed):
                files += [Path(stage_dir) / n for n in ("supernet.pt", "metrics.json", "history.json")]
            files += [Path(DERIVE_FILE.format(**r)), Path(RESULT_FILE[sp].format(**r))]
            if sp == "nb201":
                files += [Path(RANKING_FILE.format(**r)), Path(RETRAIN_FILE.format(**r))]
        moved = []
        for f in dict.fromkeys(files):
            path = self.project_dir / f
            readable = checkpoint_is_readable if path.suffix == ".pt" else json_is_readable
            if path.exists() and not readable(path):
                moved.append(str(set_aside(path).relative_to(self.project_dir)))
        return moved

    def ledger_files(self) -> list[str]:
        """The committed records of reproduced runs the report shows (an input: a new one re-runs it)."""
        return sorted(str(p.relative_to(self.project_dir)) for p in (self.project_dir / "ledger").rglob("*.json"))

    def report_spec(self) -> dict:
        """Every run the report expects (a missing one is shown as missing, not averaged over), and
        the papers' numbers it compares against."""
        c = self.cfg
        expected = [{**r, "file": RESULT_FILE[r["space"]].format(**r)} for r in self.runs()]
        return {"stage": "report", "profile": c["profile"], "spaces": c["spaces"], "metrics": REPORT_METRICS,
                "results": [e["file"] for e in expected], "expected": expected, "ranking": self.ranking_files(),
                "paper": load_paper_results(self.project_dir / "params")}

    # ----------------------------------------------------------------- targets
    def targets(self) -> list[str]:
        extra = [RETRAIN_FILE.format(**r) for r in self.runs()
                 if r["space"] == "nb201" and self.cfg["retrain_nb201"]["enabled"]]
        return [REPORT_FILE, REPORT_METRICS] + [SUMMARY_FILE.format(space=s) for s in self.cfg["spaces"]] + extra

    def resources(self, rule: str) -> dict:
        """A rule's resources; gpu `auto` asks for one GPU where this machine has NVIDIA GPUs, none
        elsewhere (so CPU workstations run seeds in parallel). Cluster profiles set gpu explicitly."""
        res = dict(self.cfg["resources"][rule])
        if res["gpu"] == "auto":
            res["gpu"] = 1 if shutil.which("nvidia-smi") else 0
        return res

    # ----------------------------------------------------------------- runtime
    def runtime(self) -> dict:
        """Settings that do not change any result (so they are not in the stage hashes)."""
        c = self.cfg
        uri = c["tracking"]["uri"] or f"sqlite:///{self.project_dir / 'mlflow.db'}"
        return {
            "device": c["device"],
            "captured_step": c["captured_step"],
            "gpu_slots": c["gpu_slots"],
            "channels_last": {True: "on", False: "off"}.get(c["channels_last"], c["channels_last"]),
            "data": {k: c["data"][k] for k in ("root", "source", "download")},
            "benchmark": c["benchmark"],
            # parent_run_id: the invocation's MLflow run (invocation.py); runtime only, in no hash
            "tracking": {**c["tracking"], "uri": uri, "artifacts": (self.project_dir / "mlartifacts").as_uri(),
                         "parent_run_id": os.environ.get("NASFLOW_PARENT_RUN")},
            "profile": c["profile"],
            "config_hash": spec_key({k: v for k, v in without_machine_keys(c, self.project_dir / "params").items()
                                     if k != "resources"}),
            "git_commit": git_commit(self.project_dir),
        }


def git_commit(cwd: Path) -> str:
    """HEAD's short hash; NASFLOW_GIT_COMMIT names it where the project is a copy without .git."""
    if os.environ.get("NASFLOW_GIT_COMMIT"):
        return os.environ["NASFLOW_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def spec_arg(spec: dict) -> str:
    return canonical_json(spec)


def runtime_json(plan: Plan) -> str:
    return json.dumps(plan.runtime(), sort_keys=True)
