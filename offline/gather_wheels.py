#!/usr/bin/env python
"""Gather the wheels a paper run needs on a GPU machine without network that has Python and
PyTorch (with CUDA) but none of nasflow's other packages.

    python offline/gather_wheels.py WHEEL_DIR [--python-version 3.12] [--have FILE] [--bench]

Run it where nasflow is installed (`pip install -e .`): it takes the packages the pipeline's stages
and Snakemake import, with every dependency installed here, drops those the target already has
(PyTorch and its stack, or the names listed one per line in --have), and downloads each remaining
one as a wheel for the target Python on x86-64 Linux (building a wheel where only a source archive
exists). Tracking (MLflow) and DVC are left out: a paper run works without them and the results
carry their provenance. `--bench` adds xautodl (installed here, without its dependencies), the
search model bench/step_speed.py compares against. Then carry WHEEL_DIR and the CIFAR-10 files to
the GPU machine and run `offline/paper_run.sh` or `offline/gpu_bench.sh` there.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

# what `python -m pipeline_steps` and the Snakefile import for a NAS-Bench-201 run
ROOTS = ["snakemake", "jsonschema", "pyyaml", "numpy", "scipy", "pandas", "pyarrow", "tqdm", "pillow", "matplotlib",
         "markdown-it-py"]
# a machine with PyTorch has these (and they are large)
TARGET_HAS = ["torch", "torchvision", "triton", "numpy", "sympy", "networkx", "jinja2", "markupsafe", "filelock",
              "fsspec", "typing-extensions", "setuptools", "mpmath", "pillow"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str], skip: set[str]) -> list[str]:
    """name==version of every installed package the roots need, less `skip` (and what only they need)."""
    seen, todo, out = set(), list(roots), []
    while todo:
        name = norm(todo.pop())
        if name in seen or name in skip or name.startswith("nvidia-"):
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        out.append(f"{dist.metadata['Name']}=={dist.version}")
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[ ;<>=!~\[(]", req.strip())[0])
    return sorted(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheel_dir", type=Path)
    p.add_argument("--python-version", default="3.12")
    p.add_argument("--have", type=Path, default=None, help="packages the target already has, one name per line")
    p.add_argument("--bench", action="store_true", help="also xautodl, for bench/step_speed.py's comparison")
    args = p.parse_args()
    skip = {norm(n) for n in TARGET_HAS}
    if args.have:
        skip |= {norm(line.split("==")[0].strip()) for line in args.have.read_text().splitlines() if line.strip()}
    args.wheel_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    extra = [f"xautodl=={md.version('xautodl')}"] if args.bench else []
    for pkg in [*closure(ROOTS, skip), *extra]:
        platforms = [a for plat in PLATFORMS for a in ("--platform", plat)]
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                              "--python-version", args.python_version, "--implementation", "cp", *platforms,
                              "-d", str(args.wheel_dir), pkg], capture_output=True, text=True)
        if got.returncode != 0:  # a source archive only: a pure-Python one builds into a wheel that fits
            got = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(args.wheel_dir),
                                  pkg], capture_output=True, text=True)
        if got.returncode != 0:
            failed.append(pkg)
        print(("FAILED " if got.returncode else "") + pkg, file=sys.stderr)
    if failed:
        print(f"no wheel for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
