"""Readable progress lines for long commands: ``[step] message`` on stderr, with timings."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(label: str) -> Iterator[None]:
    """Print ``label ...`` now and ``label done in 1.2 s`` when the block ends."""
    say(f"- {label} ...")
    started = time.perf_counter()
    yield
    say(f"  {label}: done in {time.perf_counter() - started:.1f} s")
