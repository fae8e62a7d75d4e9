"""Files a stage no longer needs once Snakemake has recorded it complete.

A training stage keeps its `resume.pt` after writing its outputs: if Snakemake is killed before it
records the job complete, the rerun deletes the outputs as incomplete, and the stage must then
finish from that checkpoint instead of training again. The main Snakemake removes those
checkpoints when it ends (every job it ran is recorded by then), and the temp files of writes
that a kill interrupted when it starts with no other Snakemake working in the project.
"""
from __future__ import annotations

from pathlib import Path

RESUME = "resume.pt"
STAGE_OUTPUTS = ("supernet.pt", "metrics.json", "history.json")   # a training stage's outputs
RETRAIN_OUTPUTS = ("model.pt", "result.json")


def finished_resume_files(results: Path) -> list[Path]:
    """resume.pt files beside a complete set of their stage's outputs."""
    out = []
    for resume in results.rglob(RESUME):
        names = RETRAIN_OUTPUTS if resume.parent.name == "retrain" else STAGE_OUTPUTS
        if all((resume.parent / n).is_file() for n in names):
            out.append(resume)
    return sorted(out)


def remove_finished_resume_files(results: Path) -> int:
    files = finished_resume_files(results) if results.is_dir() else []
    for f in files:
        f.unlink(missing_ok=True)
    return len(files)


def remove_interrupted_writes(results: Path) -> int:
    """`.<name>.<random>.tmp` files of atomic writes (common/atomic.py) a kill left behind."""
    files = sorted(results.rglob(".*.tmp")) if results.is_dir() else []
    for f in files:
        f.unlink(missing_ok=True)
    return len(files)
