"""Batch scoring on this machine: chunks of the input scored by a pool of threads (one per
core by default), each with its own verified scorer.

Threads, not processes: the work of a chunk is Arrow compute, numpy and the runtime's
``run``, all of which release the GIL, so threads use every core without a process's
start-up (importing the runtime, verifying the bundle again) or the pickling of every chunk
and result between processes (measured: a pool of two processes scored slower than one
process; docs/architecture.md §11). Each thread has its own scorer because a LiteRT
interpreter runs one call at a time. The main thread reads the input, keeps at most two
chunks per thread in flight (memory stays bounded whatever the input's size), and writes
results in input order.
"""

from __future__ import annotations

import os
import queue
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from edgefleet.central.batch.encoding import required_columns
from edgefleet.central.batch.scoring import ChunkScorer
from edgefleet.central.batch.sinks import Sink
from edgefleet.central.batch.sources import DEFAULT_CHUNK_ROWS, Chunk, InputSource
from edgefleet.errors import InputError


@dataclass(frozen=True)
class Progress:
    rows: int  # rows done, scored or rejected
    scored: int
    rejected: int
    total: int  # expected rows (exact for Parquet, counted lines for CSV)
    seconds: float


@dataclass(frozen=True)
class BatchSummary:
    model: str
    version: str
    scored: int
    rejected: int
    malformed: tuple[str, ...]  # CSV lines skipped before scoring (wrong field count)
    seconds: float
    workers: int
    output: str

    @property
    def rows_per_second(self) -> float:
        return (self.scored + self.rejected) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class BatchJob:
    bundle: Path
    trusted_key: Path
    key_column: str | None = None
    workers: int = 0  # 0: one per core
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    format: str | None = None

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)


def score_source(
    job: BatchJob,
    source: InputSource,
    sink: Sink,
    rejects: Sink,
    progress: Callable[[Progress], None] = lambda _: None,
) -> BatchSummary:
    """Score every row of ``source`` into ``sink``; refused rows go to ``rejects``."""
    if job.chunk_rows < 1:
        raise InputError("the chunk size must be at least 1 row")
    scored_at = datetime.now(UTC)
    # Verify here first: a refused bundle is one clear error before any worker starts.
    local = ChunkScorer.load(job.bundle, job.trusted_key, job.key_column, scored_at, job.format)
    wanted = required_columns(local.scorer.manifest.schema, source.columns)
    if job.key_column is not None:
        if job.key_column not in source.columns:
            raise InputError(
                f"the key column {job.key_column!r} is not in the input; it has: "
                f"{', '.join(source.columns[:30])}"
            )
        wanted.append(job.key_column)
    started = time.perf_counter()
    scored = rejected = 0
    schema = local.scorer.manifest.schema
    categorical = [f.name for f in schema.features if f.kind == "categorical"]
    chunks = source.chunks(wanted, job.chunk_rows, categorical)
    workers = job.worker_count()
    try:
        results = (
            _inline(local, chunks)
            if workers == 1
            else _threaded(_scorers(job, local, workers), chunks)
        )
        for predictions, refused in results:
            sink.write(predictions)
            if refused.num_rows:
                rejects.write(refused)
            scored += predictions.num_rows
            rejected += refused.num_rows
            elapsed = time.perf_counter() - started
            progress(Progress(scored + rejected, scored, rejected, source.total_rows, elapsed))
    except BaseException:
        sink.abort()
        rejects.abort()
        raise
    sink.close()
    _write_malformed(source, rejects)
    rejects.close()
    manifest = local.scorer.manifest
    return BatchSummary(
        model=manifest.name,
        version=manifest.version,
        scored=scored,
        rejected=rejected,
        malformed=tuple(source.malformed),
        seconds=time.perf_counter() - started,
        workers=workers,
        output=sink.description,
    )


def _write_malformed(source: InputSource, rejects: Sink) -> None:
    if source.malformed:
        rejects.write(
            pa.table(
                {
                    "row": pa.nulls(len(source.malformed), pa.int64()),
                    "key": pa.nulls(len(source.malformed), pa.string()),
                    "reason": source.malformed,
                }
            )
        )


Result = tuple[pa.Table, pa.Table]


def _inline(scorer: ChunkScorer, chunks: Iterator[Chunk]) -> Iterator[Result]:
    for chunk in chunks:
        yield scorer.score(chunk.batch, chunk.offset)


def _scorers(job: BatchJob, first: ChunkScorer, count: int) -> queue.SimpleQueue[ChunkScorer]:
    """``count`` verified scorers sharing ``first``'s run time, ``first`` among them."""
    idle: queue.SimpleQueue[ChunkScorer] = queue.SimpleQueue()
    idle.put(first)
    for _ in range(count - 1):
        idle.put(
            ChunkScorer.load(
                job.bundle, job.trusted_key, job.key_column, first.scored_at, job.format
            )
        )
    return idle


def _threaded(idle: queue.SimpleQueue[ChunkScorer], chunks: Iterator[Chunk]) -> Iterator[Result]:
    workers = idle.qsize()

    def score(chunk: Chunk) -> Result:
        scorer = idle.get()
        try:
            return scorer.score(chunk.batch, chunk.offset)
        finally:
            idle.put(scorer)

    with ThreadPoolExecutor(workers, thread_name_prefix="edgefleet-batch") as pool:
        pending: deque[Future[Result]] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(score, chunk))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
