"""Batch scoring on this machine: chunks of the input scored in a pool of worker processes
(one per core by default), each of which verified and loaded the bundle once.

The parent reads the input (Arrow record batches: cheap to hand to a process), keeps at
most two chunks per worker in flight (memory stays bounded whatever the input's size),
and writes results in input order. Workers are started with ``spawn``: a forked copy of a
parent holding threads (onnxruntime's, a JVM's) can deadlock.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from edgefleet.central.batch.encoding import required_columns
from edgefleet.central.batch.scoring import ChunkScorer, Parts, init_worker, score_in_worker
from edgefleet.central.batch.sinks import Sink
from edgefleet.central.batch.sources import DEFAULT_CHUNK_ROWS, Chunk, InputSource
from edgefleet.errors import EdgefleetError, InputError


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
            else map(local.finish, _pooled(job, scored_at, chunks, workers))
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


def _pooled(
    job: BatchJob, scored_at: datetime, chunks: Iterator[Chunk], workers: int
) -> Iterator[Parts]:
    context = multiprocessing.get_context("spawn")
    arguments = (job.bundle, job.trusted_key, job.key_column, scored_at, job.format)
    with ProcessPoolExecutor(workers, context, initializer=init_worker, initargs=arguments) as pool:
        pending: deque[Future[Parts]] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(score_in_worker, chunk.batch, chunk.offset))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise EdgefleetError(
                "a scoring worker died (out of memory, or killed); nothing was written. "
                "Try fewer --workers or a smaller --chunk-rows"
            ) from None
        finally:
            for future in pending:
                future.cancel()
