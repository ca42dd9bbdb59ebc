"""Score one chunk of rows with a verified bundle: what each worker process (or Spark
executor) runs. The result is two Arrow tables: the predictions (key, model, version,
label, score, probabilities, scored_at) and the rejects (row, key, reason).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from edgefleet.central.batch.encoding import as_text, encode_batch, unset
from edgefleet.central.predictions import MAX_KEY_LENGTH
from edgefleet.edge.scorer import Scorer

RESULT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("label", pa.string()),
        ("score", pa.float64()),
        ("probabilities", pa.list_(pa.float64())),
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)
# What a file of predictions holds (CSV has no lists; the score is the positive class's).
FILE_COLUMNS = ("key", "model", "version", "label", "score", "scored_at")
REJECT_SCHEMA = pa.schema([("row", pa.int64()), ("key", pa.string()), ("reason", pa.string())])


class ChunkScorer:
    """A verified scorer and what every row of a run shares (model, version, time)."""

    def __init__(self, scorer: Scorer, key_column: str | None, scored_at: datetime):
        self.scorer = scorer
        self.key_column = key_column
        self.scored_at = scored_at
        self.classes = [str(c) for c in scorer.manifest.schema.classes]

    @classmethod
    def load(
        cls,
        bundle: Path,
        trusted_key: Path,
        key_column: str | None,
        scored_at: datetime,
        fmt: str | None = None,
    ) -> ChunkScorer:
        """Verify the bundle as a device does (signature, hashes, golden vectors)."""
        return cls(Scorer.from_bundle(bundle, trusted_key, format=fmt), key_column, scored_at)

    def score(self, batch: pa.RecordBatch | pa.Table, offset: int) -> tuple[pa.Table, pa.Table]:
        """Predictions and rejects of ``batch``, whose first row is row ``offset`` of the
        input (rows count from 0)."""
        keys, key_problem = self._keys(batch, offset)
        encoded = encode_batch(batch, self.scorer.manifest.schema)
        reasons = np.where(unset(key_problem), encoded.reasons, key_problem)
        ok = unset(reasons)
        probabilities = (
            np.asarray(self.scorer.score(encoded.inputs[ok]), dtype=np.float64)
            if ok.any()
            else np.empty((0, len(self.classes)))
        )
        scored = self._predictions(keys[ok], probabilities)
        bad = np.flatnonzero(~ok)
        rejects = pa.table(
            {
                "row": pa.array(bad + offset, pa.int64()),
                "key": pa.array(keys[bad], pa.string()),
                "reason": pa.array(reasons[bad], pa.string()),
            },
            schema=REJECT_SCHEMA,
        )
        return scored, rejects

    def _keys(
        self, batch: pa.RecordBatch | pa.Table, offset: int
    ) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.object_]]:
        rows = batch.num_rows
        problems: npt.NDArray[np.object_] = np.full(rows, None, dtype=object)
        if self.key_column is None:
            return np.array([str(offset + i) for i in range(rows)], dtype=object), problems
        text = pc.utf8_trim_whitespace(as_text(batch.column(self.key_column)))
        keys = np.array(text.to_numpy(zero_copy_only=False), dtype=object)
        lengths = np.asarray(pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False))
        problems[lengths > MAX_KEY_LENGTH] = (
            f"key {self.key_column!r}: longer than {MAX_KEY_LENGTH} characters"
        )
        problems[lengths == 0] = f"key {self.key_column!r}: the key is missing"
        return keys, problems

    def _predictions(self, keys: npt.NDArray[Any], probabilities: npt.NDArray[Any]) -> pa.Table:
        manifest = self.scorer.manifest
        rows = len(keys)
        labels = np.array(self.classes, dtype=object)[probabilities.argmax(axis=1)] if rows else []
        width = probabilities.shape[1] if rows else len(self.classes)
        flat = pa.array(probabilities.reshape(-1), pa.float64())
        offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
        return pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "model": pa.array([manifest.name] * rows, pa.string()),
                "version": pa.array([manifest.version] * rows, pa.string()),
                "label": pa.array(labels, pa.string()),
                "score": pa.array(probabilities[:, 1] if rows else [], pa.float64()),
                "probabilities": pa.ListArray.from_arrays(offsets, flat),
                "scored_at": pa.array([self.scored_at] * rows, pa.timestamp("us", tz="UTC")),
            },
            schema=RESULT_SCHEMA,
        )


# -- worker processes ----------------------------------------------------------------------

_worker: ChunkScorer | None = None


def init_worker(
    bundle: Path, trusted_key: Path, key_column: str | None, scored_at: datetime, fmt: str | None
) -> None:
    """Process pool initializer: load and verify the bundle once per process."""
    global _worker
    _worker = ChunkScorer.load(bundle, trusted_key, key_column, scored_at, fmt)


def score_in_worker(batch: pa.RecordBatch, offset: int) -> tuple[pa.Table, pa.Table]:
    if _worker is None:
        raise RuntimeError("score_in_worker runs in a process started with init_worker")
    return _worker.score(batch, offset)
