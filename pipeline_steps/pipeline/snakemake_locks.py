"""Snakemake's directory lock after a kill: `.snakemake/locks/` stays behind when Snakemake is
SIGKILLed, and the same command then stops with a LockException until `--unlock`. The lock is stale
when no other Snakemake process works in the project; the Snakefile clears it then, so a plain
rerun resumes."""
from __future__ import annotations

import os
from pathlib import Path


def proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of `pid` from /proc, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[19]
    except (OSError, ValueError, IndexError):
        return None


def runs_snakemake(pid: int) -> bool:
    """Does `pid`'s command line start Snakemake (`snakemake ...`, `python -m snakemake ...`)?"""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"snakemake" in part for part in cmd[:3]) and b"--unlock" not in cmd


def ancestors(pid: int) -> list[int]:
    """`pid` and its parents, nearest first."""
    out: list[int] = []
    while pid > 1 and pid not in out:
        out.append(pid)
        st = proc_stat(pid)
        if st is None:
            break
        pid = st[0]
    return out


def other_snakemake_running(project: Path) -> bool:
    """Is a Snakemake process other than this one (and its parents) working in `project`?"""
    mine = set(ancestors(os.getpid()))
    proc = Path("/proc")
    if not proc.is_dir():
        return True  # cannot tell: assume the lock is held
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cwd = (entry / "cwd").resolve()
        except OSError:
            continue
        if cwd == project.resolve() and runs_snakemake(int(entry.name)):
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
