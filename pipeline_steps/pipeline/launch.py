"""`nasflow run`: Snakemake with this machine's cores and GPUs (params/local.yaml, NASFLOW_CORES,
NASFLOW_GPUS), so that `dvc repro`, whose command is fixed in dvc.yaml, honours them too."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..common.errors import NasflowError
from .machine import machine_settings

PROFILE = "workflow/profiles/default"


def gpu_count() -> int:
    """The NVIDIA GPUs this machine lists (0 without a driver)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def snakemake_command(params_dir: str | os.PathLike, extra: list[str]) -> list[str]:
    settings = machine_settings(params_dir)
    cmd = [sys.executable, "-m", "snakemake", "--profile", PROFILE]
    cores, gpus, slots = settings.get("cores"), settings.get("gpus"), settings.get("gpu_slots", 1)
    for name, value in (("cores", cores), ("gpus", gpus), ("gpu_slots", slots)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise NasflowError(f"invalid machine setting {name} = {value!r}: give a whole number "
                               "(params/local.yaml or NASFLOW_" + name.upper() + ")")
    if cores is not None and "--cores" not in extra and "-c" not in extra:
        cmd += ["--cores", str(cores)]
    if gpus is None:
        gpus = gpu_count()
    if gpus and "--resources" not in extra:
        cmd += ["--resources", f"gpu={gpus * slots}"]
    return cmd + extra


def run(params_dir: str | os.PathLike, extra: list[str]) -> None:
    """Replace this process with Snakemake (its exit status and signals are the user's)."""
    if not Path("Snakefile").is_file():  # Snakemake runs the Snakefile of the working directory
        raise NasflowError("no Snakefile here: run `nasflow run` from the project root")
    cmd = snakemake_command(params_dir, extra)
    print("nasflow: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)
