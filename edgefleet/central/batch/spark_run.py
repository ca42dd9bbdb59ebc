"""``edgefleet batch score --engine spark``: read the input with Spark, score it with
``score_dataframe`` (``spark.py``), and write what the local engine writes.

Spark writes ``--out`` as a folder of part files (Parquet or CSV by the name's suffix, as
Spark writes every output); ``--db`` is upserted by each partition in its own transaction
(``central/predictions.py``); the rejects, usually few, are gathered by the driver into one
CSV file.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from edgefleet.central.batch.local import BatchSummary
from edgefleet.central.batch.scoring import FILE_COLUMNS, REJECT_SCHEMA
from edgefleet.central.batch.sinks import rejects_file
from edgefleet.central.batch.sources import open_input
from edgefleet.central.batch.spark import score_dataframe, spark_session
from edgefleet.central.predictions import Prediction, PredictionStore


def read_input(spark: Any, path: Path) -> Any:
    """The input as a DataFrame: Parquet as typed, CSV with every column as text (the
    encoder parses numbers, so one bad value refuses its row, not the run)."""
    source = open_input(path)
    paths = [str(p) for p in source.files]
    if source.format == "parquet":
        return spark.read.parquet(*paths)
    return spark.read.option("header", "true").option("mode", "PERMISSIVE").csv(paths)


def run_spark_batch(args: argparse.Namespace, trusted: Path, rejects: Path) -> BatchSummary:
    from pyspark import StorageLevel

    started = time.perf_counter()
    spark = spark_session(args.master)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.chunk_rows))
    frame = read_input(spark, args.input)
    scored = score_dataframe(
        frame, args.bundle, trusted, key_column=args.key, format=args.format
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        good = scored.where("reason IS NULL")
        if args.db:
            url, table = args.db, args.table
            PredictionStore(url, table).close()  # create the table once, not per partition
            good.foreachPartition(lambda rows: upsert_partition(rows, url, table))
            output = f"table {table} of {PredictionStore(url, table, create=False).display}"
        else:
            _write_folder(good.select(*FILE_COLUMNS), args.out)
            output = str(args.out)
        refused = _write_rejects(scored.where("reason IS NOT NULL"), rejects)
        total = scored.count()
        manifest = scored.select("model", "version").first()
    finally:
        scored.unpersist()
    return BatchSummary(
        model=manifest["model"] if manifest else "",
        version=manifest["version"] if manifest else "",
        scored=total - refused,
        rejected=refused,
        malformed=(),
        seconds=time.perf_counter() - started,
        workers=spark.sparkContext.defaultParallelism,
        output=output,
    )


def _write_folder(frame: Any, out: Path) -> None:
    kind = "csv" if out.suffix.lower() == ".csv" else "parquet"
    writer = frame.write.mode("overwrite")
    (writer.option("header", "true").csv if kind == "csv" else writer.parquet)(str(out))


def _write_rejects(frame: Any, path: Path) -> int:
    import pyarrow as pa

    sink = rejects_file(path)
    count = 0
    batch: list[Any] = []
    for row in frame.select("key", "reason").toLocalIterator():
        batch.append(row)
        if len(batch) >= 10_000:
            count += _flush(sink, batch, pa)
    count += _flush(sink, batch, pa)
    sink.close()
    return count


def _flush(sink: Any, rows: list[Any], pa: Any) -> int:
    if not rows:
        return 0
    sink.write(
        pa.table(
            {
                "row": pa.nulls(len(rows), pa.int64()),
                "key": [r["key"] for r in rows],
                "reason": [r["reason"] for r in rows],
            },
            schema=REJECT_SCHEMA,
        )
    )
    written = len(rows)
    rows.clear()
    return written


def upsert_partition(rows: Any, url: str, table: str) -> None:
    """One partition's predictions, upserted in one transaction (runs on an executor)."""
    predictions = [
        Prediction(
            key=row["key"],
            model=row["model"],
            version=row["version"],
            label=row["label"],
            score=row["score"],
            probabilities=tuple(row["probabilities"]),
            # PySpark hands timestamps back naive, in this machine's local time.
            scored_at=row["scored_at"].astimezone(UTC),
        )
        for row in rows
    ]
    with PredictionStore(url, table) as store:
        store.upsert(predictions)
