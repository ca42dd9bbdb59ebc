"""Adaptive batching: concurrent requests of one worker merged into one runtime call.

Request threads put their encoded rows in a bounded queue and wait; one batcher thread
takes everything waiting (up to ``max_batch`` rows), runs the model once, and hands each
request its slice. At low load a request runs alone at once; under load requests pile up
while the model runs and form the next, larger batch, so throughput grows with load instead
of latency (Triton's dynamic batcher works the same way). ``max_wait`` optionally holds an
incomplete batch that long for more rows (Triton's ``max_queue_delay``); 0 runs at once.

Overload is answered, never suffered: past ``max_queue_rows`` rows waiting, :meth:`submit`
raises :class:`OverloadedError` at once (503 with ``Retry-After``); a request not scored within
its timeout raises :class:`RequestTimeoutError` (504) and is dropped from the queue, so a backlog
never grows without bound and nobody waits for an answer that comes too late.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.errors import EdgefleetError, InputError

logger = logging.getLogger("edgefleet.serving")

Run = Callable[[npt.NDArray[np.float32]], Any]
"""``run(rows)`` scores a whole batch; what it returns is split by ``split``."""


class OverloadedError(EdgefleetError):
    """The queue is full: come back after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeoutError(EdgefleetError):
    """The request was not scored within its timeout."""


class RetiredError(EdgefleetError):
    """This batcher's model was replaced: score with the new one."""


@dataclass(frozen=True)
class BatchLimits:
    max_batch: int = 1024
    """Most rows in one runtime call."""
    max_wait: float = 0.0
    """Seconds an incomplete batch may wait for more rows."""
    max_queue_rows: int = 8192
    """Rows waiting past which a request is refused (503)."""
    timeout: float = 10.0
    """Seconds a request may wait for its scores (504 past it)."""

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a whole number >= 1")
        if not 0 <= self.max_wait <= 10:
            raise InputError(f"--max-wait must be from 0 to 10000 ms, not {self.max_wait * 1000:g}")
        if not 0 < self.timeout <= 3600:
            raise InputError("--request-timeout must be above 0 and at most 3600 s")


@dataclass(eq=False)
class _Job:
    rows: npt.NDArray[np.float32]
    arrived: float
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Batch:
    """One runtime call: its rows, the result, and each request's time in the service."""

    rows: npt.NDArray[np.float32]
    result: Any
    latencies: npt.NDArray[np.float64]


class Batcher:
    """One batching thread over ``run``; ``on_batch(batch)`` sees every batch scored (the
    worker's report sketches)."""

    def __init__(
        self,
        run: Run,
        limits: BatchLimits,
        *,
        on_batch: Callable[[Batch], None] = lambda batch: None,
        name: str = "batcher",
    ) -> None:
        self.run = run
        self.limits = limits
        self.on_batch = on_batch
        self._queue: deque[_Job] = deque()
        self._queued_rows = 0
        self._ready = threading.Condition()
        self._stopped = False
        self.batches = 0
        self.rows_scored = 0
        self.refused = 0
        self.timed_out = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, rows: npt.NDArray[np.float32]) -> Any:
        """Score ``rows`` in the next batch; their slice of ``run``'s result."""
        job = _Job(rows, time.monotonic())
        with self._ready:
            if self._stopped:
                raise RetiredError("this model was replaced")
            if self._queue and self._queued_rows + len(rows) > self.limits.max_queue_rows:
                self.refused += 1
                raise OverloadedError(
                    f"{self._queued_rows} rows are waiting to be scored, this worker's limit "
                    f"is {self.limits.max_queue_rows}: retry shortly",
                    retry_after=1,
                )
            self._queue.append(job)
            self._queued_rows += len(rows)
            self._ready.notify()
        if not job.done.wait(self.limits.timeout):
            with self._ready:
                if job in self._queue:  # still waiting: it will never be scored now
                    self._queue.remove(job)
                    self._queued_rows -= len(job.rows)
            if not job.done.is_set():
                self.timed_out += 1
                raise RequestTimeoutError(
                    f"not scored within the {self.limits.timeout:g} s request timeout"
                )
        if job.error is not None:
            raise job.error
        return job.result

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify()
        self._thread.join(timeout=30)

    def _take(self) -> list[_Job] | None:
        """Everything waiting, up to max_batch rows; None when stopped and drained."""
        with self._ready:
            while not self._queue:
                if self._stopped:
                    return None
                self._ready.wait()
            # An incomplete batch waits at most max_wait after its oldest row arrived (the
            # head of the queue: a request that timed out meanwhile has left it).
            while self._queue and self._queued_rows < self.limits.max_batch:
                left = self._queue[0].arrived + self.limits.max_wait - time.monotonic()
                if left <= 0 or self._stopped:
                    break
                self._ready.wait(left)
            jobs: list[_Job] = []
            rows = 0
            while self._queue and (
                not jobs or rows + len(self._queue[0].rows) <= self.limits.max_batch
            ):
                job = self._queue.popleft()
                jobs.append(job)
                rows += len(job.rows)
            self._queued_rows -= rows
            return jobs

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            if jobs:
                self._score(jobs)

    def _score(self, jobs: list[_Job]) -> None:
        rows = jobs[0].rows if len(jobs) == 1 else np.concatenate([j.rows for j in jobs])
        try:
            result = self.run(rows)
        except Exception as error:  # a bug or a runtime failure costs this batch, not the thread
            logger.exception("scoring a batch of %d rows failed", len(rows))
            for job in jobs:
                job.error = error
                job.done.set()
            return
        now = time.monotonic()
        start = 0
        for job in jobs:
            job.result = _slice(result, start, start + len(job.rows))
            start += len(job.rows)
            job.done.set()
        self.batches += 1
        self.rows_scored += len(rows)
        latencies = np.repeat([now - j.arrived for j in jobs], [len(j.rows) for j in jobs])
        try:
            self.on_batch(Batch(rows, result, latencies))
        except Exception:
            logger.exception("counting a batch failed")


def _slice(result: Any, start: int, end: int) -> Any:
    if isinstance(result, tuple):
        return tuple(part[start:end] for part in result)
    return result[start:end]
