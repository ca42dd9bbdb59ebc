"""Score a Spark DataFrame with a signed bundle: ``mapInPandas`` over Arrow batches, each
executor process verifying and loading the bundle once.

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

import pandas as pd
import pyarrow as pa

from edgefleet.central.batch.encoding import required_columns
from edgefleet.central.batch.scoring import ChunkScorer
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
KEY_FILE = "trusted.pub"
TEXT_COLUMNS = ("key", "model", "version", "label", "reason")


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


def score_frames(frames: Iterator[pd.DataFrame], scorer: ChunkScorer) -> Iterator[pd.DataFrame]:
    """Predictions and refusals of each pandas batch, as one frame of OUTPUT_SCHEMA."""
    for frame in frames:
        batch = pa.Table.from_pandas(frame, preserve_index=False)
        scored, refused = scorer.score(batch, 0)
        out = scored.to_pandas()
        out["reason"] = None
        rejected = pd.DataFrame(
            {
                "key": refused.column("key").to_pylist(),
                "model": scorer.scorer.manifest.name,
                "version": scorer.scorer.manifest.version,
                "label": None,
                "score": float("nan"),
                "probabilities": None,
                "scored_at": scorer.scored_at,
                "reason": refused.column("reason").to_pylist(),
            }
        )
        result = pd.concat([out, rejected], ignore_index=True) if len(rejected) else out
        # pandas 3 keeps text in Arrow-backed columns, which PySpark's converter cannot
        # take back; plain object columns it can.
        yield result.astype({c: object for c in TEXT_COLUMNS})


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

    def score(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from score_frames(frames, executor_scorer(shared.value, key_column, when, format))

    return frame.select(*wanted).mapInPandas(score, OUTPUT_SCHEMA)
