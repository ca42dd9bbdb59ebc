"""Score one chunk of rows with a verified bundle: what each scoring thread (or Spark
executor) runs. The result is two Arrow tables: the predictions (key, model, version,
label, score, probabilities, scored_at) and the rejects (row, key, reason).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from edgefleet.central.batch.encoding import Reasons, as_text, encode_batch, unset
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
# What a file of predictions holds (CSV has no lists). The score is P(positive class) for a
# binary model, the predicted class's probability for a multi-class one, the value for a
# regressor (whose label is empty).
FILE_COLUMNS = ("key", "model", "version", "label", "score", "scored_at")
REJECT_SCHEMA = pa.schema([("row", pa.int64()), ("key", pa.string()), ("reason", pa.string())])
# Keys of the scored rows, their probabilities [N, n_classes] float32, the rejects.
Parts = tuple[pa.Array, npt.NDArray[np.float32], pa.Table]


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
        return self.finish(self.score_parts(batch, offset))

    def finish(self, parts: Parts) -> tuple[pa.Table, pa.Table]:
        keys, probabilities, rejects = parts
        return self._predictions(keys, np.asarray(probabilities, dtype=np.float64)), rejects

    def score_parts(self, batch: pa.RecordBatch | pa.Table, offset: int) -> Parts:
        """The scored rows' keys and float32 probabilities, and the rejects (the columns
        every row shares are added by :meth:`finish`). Arrow and numpy throughout: no
        Python object per row."""
        keys = self._keys(batch, offset)
        encoded = encode_batch(batch, self.scorer.manifest.schema)
        reasons = self._key_problems(keys, encoded.reasons)
        ok = unset(reasons)
        probabilities = (
            self.scorer.score(encoded.inputs[ok])
            if ok.any()
            else np.empty((0, len(self.classes)), dtype=np.float32)
        )
        bad = np.flatnonzero(~ok)
        rejects = pa.table(
            {
                "row": pa.array(bad + offset, pa.int64()),
                "key": keys.take(pa.array(bad, pa.int64())),
                "reason": pa.array(reasons[bad], pa.string()),
            },
            schema=REJECT_SCHEMA,
        )
        return keys.filter(pa.array(ok)), probabilities, rejects

    def _keys(self, batch: pa.RecordBatch | pa.Table, offset: int) -> pa.Array:
        if self.key_column is None:
            rows = np.arange(offset, offset + batch.num_rows, dtype=np.int64)
            return pc.cast(pa.array(rows), pa.string())
        column = batch.column(self.key_column)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        return pc.cast(pc.utf8_trim_whitespace(as_text(column)), pa.string())

    def _key_problems(self, keys: pa.Array, reasons: Reasons) -> Reasons:
        """``reasons`` with a key problem first where a row has one."""
        if self.key_column is None:
            return reasons
        lengths = np.asarray(pc.fill_null(pc.utf8_length(keys), 0).to_numpy(zero_copy_only=False))
        if not ((lengths == 0) | (lengths > MAX_KEY_LENGTH)).any():
            return reasons
        reasons = reasons.copy()
        name = self.key_column
        reasons[lengths > MAX_KEY_LENGTH] = f"key {name!r}: longer than {MAX_KEY_LENGTH} characters"
        reasons[lengths == 0] = f"key {name!r}: the key is missing"
        return reasons

    def _predictions(self, keys: pa.Array, probabilities: npt.NDArray[Any]) -> pa.Table:
        manifest = self.scorer.manifest
        rows = len(keys)
        width = manifest.schema.n_outputs
        labels, scores = self._labels_and_scores(probabilities)
        zeros = pa.array(np.zeros(rows, dtype=np.int32))
        flat = pa.array(probabilities.reshape(-1), pa.float64())
        offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
        when = np.full(
            rows, np.datetime64(self.scored_at.astimezone(UTC).replace(tzinfo=None), "us")
        )
        return pa.table(
            {
                "key": keys,
                "model": pa.array([manifest.name], pa.string()).take(zeros),
                "version": pa.array([manifest.version], pa.string()).take(zeros),
                "label": labels,
                "score": pa.array(scores, pa.float64()),
                "probabilities": pa.ListArray.from_arrays(offsets, flat),
                "scored_at": pa.array(when, pa.timestamp("us", tz="UTC")),
            },
            schema=RESULT_SCHEMA,
        )

    def _labels_and_scores(self, outputs: npt.NDArray[Any]) -> tuple[pa.Array, npt.NDArray[Any]]:
        """Per task: binary, the predicted class and P(positive class); multi-class, the
        predicted class and its probability; regression, no label and the predicted value."""
        task = self.scorer.manifest.schema.task
        if task == "regression":
            return pa.nulls(len(outputs), pa.string()), outputs[:, 0]
        best = outputs.argmax(axis=1) if len(outputs) else np.empty(0, dtype=np.int64)
        labels = pa.array(self.classes, pa.string()).take(pa.array(best))
        if task == "multiclass":
            return labels, outputs.max(axis=1, initial=0.0)
        return labels, outputs[:, 1] if len(outputs) else np.empty(0)
