"""The quick pipeline end to end for bench/bench.py: a fresh copy of the project, Snakemake run, run
again (nothing to do) and dry-run, each timed."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TIMEOUT_S = 6 * 3600  # a pipeline with a large dataset takes a while


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def pipeline_rows(device: str, data: str | None, device_label: str) -> list[tuple]:
    with tempfile.TemporaryDirectory(prefix="nasflow-bench-") as tmp:
        tmp = Path(tmp)
        if data:
            data_root = Path(data).expanduser().resolve()
            cached = any((data_root / ".nasflow-cache").glob("cifar10-folder-train*"))
            data_note = f"image folder {data_root} ({'decode cache present' if cached else 'includes decoding it'})"
        else:
            from tests.conftest import make_image_folder  # the tests' small learnable dataset
            log("making a synthetic image folder (10 classes x 300 train images, 32 px)")
            data_root = make_image_folder(tmp / "synthetic", n_train=300, n_test=10, size=32)
            data_note = "synthetic image folder (tests/conftest.make_image_folder, 3000 train images, 32 px)"
        from tests.project import copy_project  # the tests' copy of the project's files

        project = copy_project(tmp / "project")
        # where the data lives and which device: this machine's settings, not parameters
        local = {"device": device, "data": {"root": str(data_root), "source": "folder", "download": False}}
        (project / "params" / "local.yaml").write_text(yaml.safe_dump(local, sort_keys=False))
        cfg = yaml.safe_load((project / "params" / "nasflow.yaml").read_text())
        quick = yaml.safe_load((project / "params" / "profiles" / "quick.yaml").read_text())
        s, d, nb = quick["search"], quick["data"], quick["space"]["nb201"]
        scale = (f"quick profile: {'+'.join(cfg['methods'])} on {'+'.join(cfg['spaces'])} x {len(cfg['seeds'])} seeds"
                 f" (NB201 C={nb['channels']} N={nb['cells_per_stage']}), {s['epochs']} epochs, {d['max_images']}"
                 f" images at {d['image_size']} px")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONPATH": str(project)}
        for name in ("NASFLOW_RUNTIME", "NASFLOW_PARENT_RUN"):  # the Snakefile sets them; inherited ones must not leak
            env.pop(name, None)

        def snakemake(*extra: str) -> tuple[float, str]:
            cmd = [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/default", *extra]
            log(f"running {' '.join(cmd[2:])} in {project}")
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
            wall = time.perf_counter() - t0
            out = r.stdout + r.stderr
            if r.returncode != 0:
                raise SystemExit(f"bench: snakemake {' '.join(extra)} failed ({r.returncode}):\n{out[-4000:]}")
            return wall, out

        full, out = snakemake()
        steps = re.findall(r"(\d+) of (\d+) steps", out)
        jobs = f"{steps[-1][1]} jobs" if steps else "job count not found"
        noop, out = snakemake()
        noop_note = "nothing re-ran" if "Nothing to be done" in out else "WARNING: jobs re-ran"
        dry, _ = snakemake("-n")
    return [
        ("pipeline end to end (snakemake, fresh copy)", device_label, f"{full:.1f}", "s",
         f"{scale}; {jobs}; data: {data_note}"),
        ("pipeline no-op re-run (snakemake again)", device_label, f"{noop:.1f}", "s", noop_note),
        ("pipeline dry run (snakemake -n)", device_label, f"{dry:.1f}", "s", "DAG and parameter check only"),
    ]
