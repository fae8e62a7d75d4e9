"""Snakemake's directory lock after a kill: `.snakemake/locks/` stays behind when Snakemake is
SIGKILLed, and the same command then stops with a LockException until `--unlock`. The lock is stale
when no other Snakemake process works in the project; the Snakefile clears it then, so a plain
rerun resumes."""
from __future__ import annotations

import os
from pathlib import Path


def _ancestors(pid: int) -> set[int]:
    out = set()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def other_snakemake_running(project: Path) -> bool:
    """Is a Snakemake process other than this one (and its parents) working in `project`?"""
    mine = _ancestors(os.getpid())
    proc = Path("/proc")
    if not proc.is_dir():
        return True  # cannot tell: assume the lock is held
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = (entry / "cwd").resolve()
        except OSError:
            continue
        if cwd == project.resolve() and any(b"snakemake" in part for part in cmd[:3]) \
                and not any(part == b"--unlock" for part in cmd):
            return True
    return False


def clear_stale_locks(project: Path) -> bool:
    """Remove Snakemake's locks in `project` when no other Snakemake process works there."""
    locks = Path(project) / ".snakemake" / "locks"
    files = [p for p in locks.glob("*.lock")] if locks.is_dir() else []
    if not files or other_snakemake_running(Path(project)):
        return False
    for p in files:
        p.unlink(missing_ok=True)
    return True
