"""Score a Spark DataFrame with a signed bundle: ``mapInArrow`` over Arrow record batches
(no pandas between Spark and the encoder), each executor process verifying and loading the
bundle once.

    from edgefleet.central.batch.spark import score_dataframe, spark_session

    spark = spark_session("local[*]")
    customers = spark.read.parquet("customers.parquet")
    scored = score_dataframe(customers, "bundle/", "edgefleet.pub", key_column="customer_id")
    scored.where("reason IS NULL").select("key", "score").show()

The driver verifies the bundle first (a refused bundle fails before any task), then
broadcasts its bytes (manifest, signature, the chosen artifact, the trusted key): an
executor writes them to a private folder and runs the device's own checks on them
(``Scorer.from_bundle``: signature, artifact hash, golden vectors) before its first row, so
what scores on the cluster is exactly what was signed. The scorer is kept per Python worker
(Spark reuses them), keyed by the manifest's sha256.

Every input row comes out once: scored (``reason`` null) or refused (``reason`` says why,
the device's words), with the same encoding as the local engine (``encoding.py``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from edgefleet.central.batch.encoding import required_columns
from edgefleet.central.batch.scoring import RESULT_SCHEMA, ChunkScorer
from edgefleet.edge.backends.base import choose_format
from edgefleet.edge.bundle import MANIFEST_FILE, SIGNATURE_FILE, open_bundle
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.scorer import Scorer, trusted_keys_from
from edgefleet.errors import InputError

# The DataFrame score_dataframe returns (Spark DDL).
OUTPUT_SCHEMA = (
    "key string, model string, version string, label string, score double, "
    "probabilities array<double>, scored_at timestamp, reason string"
)
# The same as Arrow batches: Spark takes them as they are (strings, not large strings;
# timestamps in UTC, the session's time zone).
OUTPUT_ARROW = RESULT_SCHEMA.append(pa.field("reason", pa.string()))
KEY_FILE = "trusted.pub"


def spark_session(
    master: str = "local[*]", *, shuffle_partitions: int | None = None, app: str = "edgefleet"
) -> Any:
    """A SparkSession for batch scoring (UTC session time, Arrow on)."""
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName(app)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
    )
    if master.startswith("local"):
        # Local workers run this interpreter (its packages), not whatever python3 is first
        # on PATH; a cluster's Python is the cluster's configuration. PySpark reads the
        # variable when the context starts (its configuration key is not enough).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if shuffle_partitions is not None:
        builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    return builder.getOrCreate()


def bundle_payload(
    bundle: Path, trusted_key: Path, fmt: str | None = None
) -> tuple[dict[str, bytes], Manifest]:
    """What executors receive: the manifest, its signature, the artifact of the chosen
    format and the trusted key, by relative path; and the manifest. Verified here first."""
    Scorer.from_bundle(bundle, trusted_key, format=fmt)
    signed = open_bundle(Path(bundle), trusted_keys_from(trusted_key), formats=())
    chosen = choose_format(signed.manifest.formats(), fmt)
    artifact = signed.manifest.artifact(chosen)
    return {
        MANIFEST_FILE: (signed.root / MANIFEST_FILE).read_bytes(),
        SIGNATURE_FILE: (signed.root / SIGNATURE_FILE).read_bytes(),
        artifact.path: (signed.root / artifact.path).read_bytes(),
        KEY_FILE: Path(trusted_key).read_bytes(),
    }, signed.manifest


_scorers: dict[str, ChunkScorer] = {}


def executor_scorer(
    payload: dict[str, bytes], key_column: str, scored_at: datetime, fmt: str | None
) -> ChunkScorer:
    """The verified scorer of ``payload`` in this Python worker, loaded on first use."""
    digest = hashlib.sha256(payload[MANIFEST_FILE] + payload[SIGNATURE_FILE]).hexdigest()
    cache_key = f"{digest}/{key_column}/{scored_at.isoformat()}/{fmt}"
    if cache_key not in _scorers:
        folder = Path(tempfile.mkdtemp(prefix="edgefleet-bundle-"))
        for relative, data in payload.items():
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        _scorers[cache_key] = ChunkScorer.load(
            folder, folder / KEY_FILE, key_column, scored_at, fmt
        )
    return _scorers[cache_key]


def score_batches(
    batches: Iterator[pa.RecordBatch], scorer: ChunkScorer
) -> Iterator[pa.RecordBatch]:
    """Predictions and refusals of each Arrow batch, as batches of OUTPUT_ARROW."""
    for batch in batches:
        scored, refused = scorer.score(batch, 0)
        table = scored.append_column("reason", pa.nulls(scored.num_rows, pa.string()))
        if refused.num_rows:
            table = pa.concat_tables([table, _refusals(refused, scorer)])
        yield from table.to_batches()


def _refusals(refused: pa.Table, scorer: ChunkScorer) -> pa.Table:
    """Refused rows as OUTPUT_ARROW rows: key, model, version, when and the reason."""
    rows = refused.num_rows
    manifest = scorer.scorer.manifest
    return pa.table(
        {
            "key": refused.column("key"),
            "model": pa.array([manifest.name] * rows, pa.string()),
            "version": pa.array([manifest.version] * rows, pa.string()),
            "label": pa.nulls(rows, pa.string()),
            "score": pa.nulls(rows, pa.float64()),
            "probabilities": pa.nulls(rows, pa.list_(pa.float64())),
            "scored_at": pa.array([scorer.scored_at] * rows, pa.timestamp("us", tz="UTC")),
            "reason": refused.column("reason"),
        },
        schema=OUTPUT_ARROW,
    )


def score_dataframe(
    frame: Any,
    bundle: str | Path,
    trusted_key: str | Path,
    *,
    key_column: str,
    format: str | None = None,
    scored_at: datetime | None = None,
) -> Any:
    """``frame`` scored on the cluster: one output row per input row (OUTPUT_SCHEMA), keyed
    by ``key_column`` (a cluster has no row numbers to key by)."""
    payload, manifest = bundle_payload(Path(bundle), Path(trusted_key), format)
    wanted = required_columns(manifest.schema, list(frame.columns))
    if key_column not in frame.columns:
        raise InputError(
            f"the key column {key_column!r} is not in the DataFrame; it has: "
            f"{', '.join(frame.columns[:30])}"
        )
    wanted.append(key_column)
    shared = frame.sparkSession.sparkContext.broadcast(payload)
    when = scored_at or datetime.now(UTC)

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from score_batches(batches, executor_scorer(shared.value, key_column, when, format))

    return frame.select(*wanted).mapInArrow(score, OUTPUT_SCHEMA)
