"""Readable progress lines for long commands: ``[step] message`` on stderr, with timings,
and a progress bar for work counted in rows."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(label: str) -> Iterator[None]:
    """Print ``label ...`` now and ``label done in 1.2 s`` when the block ends."""
    say(f"- {label} ...")
    started = time.perf_counter()
    yield
    say(f"  {label}: done in {time.perf_counter() - started:.1f} s")


class ProgressBar:
    """One line on stderr for work counted in rows: ``[#####.....] 52 % 1,040,000/2,000,000
    rows 81,200 rows/s ETA 12 s``. On a terminal the line is redrawn in place (at most 5
    times a second); elsewhere (a log file, a pipe) a line is written every 10 seconds, so
    a nightly log shows progress without drowning in it."""

    WIDTH = 24

    def __init__(self, total: int, unit: str = "rows", *, stream: TextIO | None = None):
        self.total = max(total, 0)
        self.unit = unit
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self._interval = 0.2 if self.interactive else 10.0
        # Non-interactive: the first line after one interval, not at once.
        self._last = 0.0 if self.interactive else time.monotonic()

    def update(self, done: int, seconds: float, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < self._interval:
            return
        self._last = now
        line = self.line(done, seconds)
        if self.interactive:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, done: int, seconds: float) -> str:
        rate = done / seconds if seconds > 0 else 0.0
        total = max(self.total, done)
        fraction = done / total if total else 1.0
        filled = round(fraction * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        left = (total - done) / rate if rate > 0 else None
        eta = "ETA --" if left is None else f"ETA {_duration(left)}"
        return (
            f"[{bar}] {fraction:4.0%} {done:,}/{total:,} {self.unit} "
            f"{rate:,.0f} {self.unit}/s {eta}"
        )


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
