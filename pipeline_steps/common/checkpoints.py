"""Reading checkpoints that may be damaged (a kill during a copy, a full disk): a damaged file is
renamed to <name>.damaged, out of every reader's way, and the stage that made it runs again."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from .errors import NasflowError


def checkpoint_is_readable(path: str | Path) -> bool:
    """A torch checkpoint is a zip archive: a truncated or empty file has no readable central
    directory (checked without loading the tensors)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def json_is_readable(path: str | Path) -> bool:
    import json

    try:
        json.loads(Path(path).read_text())
        return True
    except (OSError, ValueError):
        return False


def set_aside(path: str | Path) -> Path:
    """Rename a damaged file to <name>.damaged (kept for inspection, out of every reader's way)."""
    path = Path(path)
    target = path.with_name(path.name + ".damaged")
    os.replace(path, target)
    return target


def load_checkpoint(path: Path) -> dict:
    """A finished stage's checkpoint; a damaged one is set aside, so that the next run rebuilds it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, empty file, unpickling error
        moved = set_aside(path)
        raise NasflowError(f"{path} is damaged ({type(e).__name__}); moved to {moved.name}: run the same "
                           "command again to rebuild it") from None


def load_resume(path: Path) -> dict | None:
    """The resume checkpoint, or None; a damaged one (a kill while it was copied, a full disk) is
    set aside with one line and the stage starts from its last good state instead."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        moved = set_aside(path)
        print(f"warning: {path} is damaged ({type(e).__name__}); moved to {moved.name}, starting this stage "
              "from its input", file=sys.stderr, flush=True)
        return None
