"""Progress of long loops, for people watching a terminal and for log files.

On a terminal an epoch's steps show as a tqdm bar. Written to a file (what every Snakemake rule
does with a stage's output) there is no bar; instead each epoch ends with one line (the callers
print it), and within an epoch a heartbeat line says every NASFLOW_HEARTBEAT_S seconds (default
60; 0 turns it off) how many steps are done, the running loss, images per second and the
epoch's ETA. The setting only changes what is printed, never a result.

The step loop stays cheap: `StepProgress.step()` reads the clock and nothing else; the loss, a
device sync on a GPU, is read only when a line is due. Every line is flushed, since stderr
redirected to a file is block-buffered.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Iterable, Iterator, TextIO, TypeVar

from tqdm.auto import tqdm

from .errors import NasflowError

HEARTBEAT_ENV = "NASFLOW_HEARTBEAT_S"
T = TypeVar("T")
DEFAULT_HEARTBEAT_S = 60.0


def heartbeat_interval() -> float | None:
    """Seconds between heartbeat lines (None: off), from NASFLOW_HEARTBEAT_S."""
    raw = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not raw:
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise NasflowError(f"{HEARTBEAT_ENV}={raw!r} is not a number of seconds "
                           f"(default {DEFAULT_HEARTBEAT_S:g}; 0 turns the heartbeat off)")
    return value or None


def log_line(text: str, stream: TextIO | None = None) -> None:
    """One line to stderr, flushed; printed through tqdm so that a live bar is redrawn below it."""
    stream = stream or sys.stderr
    tqdm.write(text, file=stream)
    stream.flush()


def duration(seconds: float) -> str:
    """45s, 12m05s, 3h02m: short enough for a log line."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stream-like object without a terminal
        return False


class StepProgress:
    """The steps of one epoch: call `step()` after each, `close()` at the end.

    `measure()` returns (running mean loss, images trained on so far); it is called only when a
    heartbeat is due, because on a GPU reading the loss waits for the queued steps.
    `enabled=False` prints nothing and shows no bar (tests, inner loops)."""

    def __init__(self, label: str, total: int, measure: Callable[[], tuple[float, int]] | None,
                 enabled: bool = True, interval: float | None = None, stream: TextIO | None = None):
        self.label, self.total, self.measure = label, total, measure
        self.stream = stream or sys.stderr
        self.interval = (interval if interval is not None else heartbeat_interval()) if enabled else None
        self.bar = tqdm(total=total, desc=label, leave=False, mininterval=2.0, file=self.stream) \
            if enabled and _isatty(self.stream) else None
        self.done = 0
        self.started = time.monotonic()
        self.next_at = self.started + self.interval if self.interval else math.inf

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if time.monotonic() >= self.next_at:
            self.beat()

    def beat(self) -> None:
        # the loss waits for the device first, so the rate counts finished steps; a loop of
        # evaluations (no measure) says only how far it got
        loss, images = self.measure() if self.measure is not None else (None, 0)
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-9)
        eta = duration((self.total - self.done) * elapsed / max(self.done, 1))
        if self.bar is not None:
            if loss is not None:
                self.bar.set_postfix_str(f"loss={loss:.4g}")
        elif loss is None:
            log_line(f"{self.label} {self.done}/{self.total} after {duration(elapsed)}, ETA {eta}", self.stream)
        else:
            log_line(f"{self.label} step {self.done}/{self.total} loss={loss:.4g} {images / elapsed:.1f} images/s "
                     f"ETA {eta}", self.stream)
        self.next_at = now + (self.interval or math.inf)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def loop(items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
    """`items` with progress: a bar on a terminal, a heartbeat line in a log file when the loop
    runs longer than the heartbeat interval (the evaluations of DARTS-PT, HPE-DARTS, SE-NAS, HEP-NAS
    and the ranking diagnostic between their epochs)."""
    items = list(items) if total is None else items
    progress = StepProgress(label, len(items) if total is None else total, None)
    try:
        for item in items:
            yield item
            progress.step()
    finally:
        progress.close()
