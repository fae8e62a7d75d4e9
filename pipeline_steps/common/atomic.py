"""Atomic writes: every output appears whole or not at all (temp file, then rename)."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """`dst` becomes a copy of `src` in one step, sharing its blocks where the file system allows
    (a hard link: later atomic writes to `src` replace it with a new file, so `dst` stays)."""
    import shutil

    with atomic_path(dst) as tmp:
        try:
            os.unlink(tmp)
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A damaged file (cut off, edited) is one line naming it, not a traceback."""
    from .errors import NasflowError

    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:
        raise NasflowError(f"{path} is damaged ({e}); delete it and run the same command again to rebuild it") \
            from None


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):  # numpy / torch scalars and arrays
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")

