"""``edgefleet stream spark``: the stream for Spark users, through Spark Structured
Streaming. The source is a folder that new files (JSON lines or CSV with a header) land in;
each micro-batch is scored with batch scoring's ``score_dataframe`` (``mapInArrow``, the
bundle verified on the driver and again on every executor) and written in ``foreachBatch``
through the prediction table's upsert (``central/predictions.py``), refusals into
``{table}_rejected`` (``sink.py``).

Nothing lost, nothing doubled, as in the MQTT stream (docs/architecture.md §13): Spark
records in its checkpoint which files a batch took before it runs and that it ran after,
so a driver killed mid-batch runs that batch again on restart, and the upsert by key and
the digest-keyed rejected log make the repetition harmless.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.central.batch.spark import bundle_payload, score_dataframe
from edgefleet.central.batch.spark_run import upsert_partition as upsert_rows
from edgefleet.central.stream.sink import Rejected, StreamTable
from edgefleet.edge.manifest import Manifest
from edgefleet.errors import InputError

FORMATS = ("json", "csv")


@dataclass(frozen=True)
class SparkStream:
    source: Path
    file_format: str
    bundle: Path
    trusted_key: Path
    key: str
    db: str
    table: str
    checkpoint: Path
    format: str | None = None

    def __post_init__(self) -> None:
        if self.file_format not in FORMATS:
            raise InputError(f"--format must be json or csv, not {self.file_format!r}")
        if not self.source.is_dir():
            raise InputError(f"--source {self.source} is not a folder: new files land in one")


def input_schema(manifest: Manifest, key: str, file_format: str) -> str:
    """The source's schema (Spark DDL): a streaming file source needs one up front. CSV
    columns are text (the encoder parses numbers, so a bad value refuses its row, not the
    batch); JSON numbers are doubles."""
    columns = {key: "string"}
    for feature in manifest.schema.features:
        numeric = feature.kind == "numeric" and file_format == "json"
        columns.setdefault(feature.name, "double" if numeric else "string")
    return ", ".join(f"`{name}` {kind}" for name, kind in columns.items())


def start(spark: Any, stream: SparkStream, *, once: bool, trigger_seconds: float = 5.0) -> Any:
    """Start the query (``once``: what is in the folder now, then stop); its handle."""
    _, manifest = bundle_payload(stream.bundle, stream.trusted_key, stream.format)
    StreamTable(stream.db, stream.table).close()  # the tables exist before any executor writes
    reader = spark.readStream.schema(input_schema(manifest, stream.key, stream.file_format))
    if stream.file_format == "csv":
        frame = reader.option("header", "true").csv(str(stream.source))
    else:
        frame = reader.json(str(stream.source))
    writer = (
        frame.writeStream.foreachBatch(lambda batch, batch_id: write_batch(stream, batch, batch_id))
        .option("checkpointLocation", str(stream.checkpoint))
        .queryName(f"edgefleet-{stream.table}")
    )
    trigger = {"availableNow": True} if once else {"processingTime": f"{trigger_seconds:g} seconds"}
    return writer.trigger(**trigger).start()


def write_batch(stream: SparkStream, batch: Any, batch_id: int) -> None:
    """One micro-batch: scored by batch scoring, upserted by each partition, refusals logged."""
    from pyspark import StorageLevel

    scored = score_dataframe(
        batch, stream.bundle, stream.trusted_key, key_column=stream.key, format=stream.format
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        url, table = stream.db, stream.table
        scored.where("reason IS NULL").foreachPartition(lambda rows: upsert_rows(rows, url, table))
        refused = scored.where("reason IS NOT NULL").select("key", "reason").collect()
        if refused:
            _log_refused(stream, refused)
    finally:
        scored.unpersist()


def _log_refused(stream: SparkStream, rows: Iterable[Any]) -> None:
    sink = StreamTable(stream.db, stream.table)
    try:
        sink.write(
            [],
            [
                Rejected(f"spark:{stream.source.name}", str(r["key"]).encode(), r["reason"])
                for r in rows
            ],
        )
    finally:
        sink.close()
