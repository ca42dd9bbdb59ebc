"""The device's accumulator of the report window's sketches (docs/architecture.md §§5, 7).

:class:`SketchBuilder` counts every scored batch into the sketches of :mod:`edgefleet.edge.
sketch` (features, scores, outcomes, latency), plus segment and task sketches where the
schema asks for them; ``snapshot()`` freezes it into a :class:`~edgefleet.edge.sketch.
ReportBody`, which :class:`edgefleet.edge.report.Report` wraps with the identity of the
device.

Out of range with the ``clip`` policy: the builder only sees encoded values, and a clipped
value sits exactly at the bound, which is in range. Pass ``clipped={name: count}`` to
:meth:`SketchBuilder.add` for the values the encoder clipped if you know them; otherwise
clipped values count as in range.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.edge.manifest import Manifest
from edgefleet.edge.profile import (
    SCORE_BINS,
    CategoricalProfile,
    NumericProfile,
    ReferenceProfile,
    categorical_counts,
    numeric_bin_counts,
    score_bin_index,
)
from edgefleet.edge.schema import CategoricalFeature, FeatureSchema, NumericFeature
from edgefleet.edge.sketch import (
    LATENCY_BUCKETS,
    MAX_BINS,
    FeatureSketch,
    Histogram,
    LatencySketch,
    ReportBody,
    ScoreSketch,
    latency_bucket_index,
)
from edgefleet.edge.tasksketch import TaskCounter
from edgefleet.errors import InputError, ManifestError

__all__ = ["SketchBuilder"]


class SketchBuilder:
    """The device's accumulator for one model: feed it every scored batch, then take a
    :class:`ReportBody` per window.

    Thread-safe (scoring may run on several threads). Cost: one vectorised pass per feature,
    tens of microseconds per feature for 1000 rows.

    Rows whose probability is not finite are counted as failed and left out of every sketch,
    so that each feature sketch always totals exactly ``scored``.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        reference: ReferenceProfile,
        *,
        model_name: str,
        model_version: str,
        clock: Callable[[], float] = time.time,
    ):
        self.schema = schema
        self.model_name = model_name
        self.model_version = model_version
        self._clock = clock
        self._lock = threading.Lock()
        self._columns = _columns(schema, reference)
        # Imported here: segments builds on this module's histograms.
        from edgefleet.edge.segments import SegmentCounter

        self._segments = SegmentCounter(schema)
        self._task = _task_counter(schema, reference)
        self._window_start = clock()
        self._zero()

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, *, clock: Callable[[], float] = time.time
    ) -> SketchBuilder:
        return cls(
            manifest.schema,
            manifest.reference,
            model_name=manifest.name,
            model_version=manifest.version,
            clock=clock,
        )

    def _zero(self) -> None:
        self._bins = [np.zeros(c.bins, dtype=np.int64) for c in self._columns]
        self._missing = np.zeros(len(self._columns), dtype=np.int64)
        self._out_of_range = np.zeros(len(self._columns), dtype=np.int64)
        self._unknown = np.zeros(len(self._columns), dtype=np.int64)
        self._scores = np.zeros(SCORE_BINS, dtype=np.int64)
        self._outcomes = np.zeros((3, SCORE_BINS), dtype=np.int64)  # all, label 0, label 1
        self._latency = np.zeros(LATENCY_BUCKETS, dtype=np.int64)
        self._scored = 0
        self._failed = 0
        self._segments.zero()
        if self._task is not None:
            self._task.zero()

    def segment_levels(self, encoded_rows: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """``[N, S]``: each row's level of each segment feature (remember it with the
        prediction, and give it back with the outcome)."""
        rows = np.asarray(encoded_rows, dtype=np.float32).reshape(-1, len(self._columns))
        return self._segments.levels_of(rows)

    def add(
        self,
        encoded_rows: npt.ArrayLike,
        probabilities: npt.ArrayLike,
        latency_seconds: float | npt.ArrayLike | None = None,
        n_failed: int = 0,
        *,
        clipped: Mapping[str, int] | None = None,
    ) -> None:
        """Count one scoring call: the encoded ``[N, F]`` inputs (model contract order), the
        positive-class probabilities (``[N]``, or ``[N, 2]`` as a scorer returns them), the
        call's latency (or several calls' latencies, or None), and records that failed
        before scoring. ``clipped`` counts values the encoder clipped into range, by feature
        name, so that they still count as out of range."""
        rows = np.asarray(encoded_rows, dtype=np.float32)
        if rows.ndim == 1 and rows.size == 0:
            rows = rows.reshape(0, len(self._columns))
        if rows.ndim != 2 or rows.shape[1] != len(self._columns):
            raise InputError(
                f"encoded rows must have shape [N, {len(self._columns)}], not {list(rows.shape)}"
            )
        outputs = None
        if self._task is not None:  # a multi-class or regression model (tasksketch.py)
            outputs = self._task.outputs_of(probabilities, rows.shape[0])
            probabilities = self._task.base_scores(outputs)
        scores = np.asarray(probabilities, dtype=np.float64)
        if scores.ndim == 2 and scores.shape[1] == 2:
            scores = scores[:, 1]
        if scores.shape != (rows.shape[0],):
            raise InputError(
                f"probabilities must have shape [{rows.shape[0]}] (or [{rows.shape[0]}, 2]), "
                f"not {list(scores.shape)}"
            )
        if type(n_failed) is not int or n_failed < 0:
            raise InputError(f"n_failed must be a non-negative int, not {n_failed!r}")
        extra_out_of_range = self._clipped_counts(clipped, rows.shape[0])
        finite = np.isfinite(scores)
        bad_scores = int(rows.shape[0] - np.count_nonzero(finite))
        if bad_scores:
            rows, scores = rows[finite], scores[finite]
            outputs = None if outputs is None else outputs[finite]
        task = None if self._task is None or outputs is None else self._task.scored_counts(outputs)
        latency = (
            None
            if latency_seconds is None
            else np.bincount(
                latency_bucket_index(np.ravel(latency_seconds)), minlength=LATENCY_BUCKETS
            )
        )
        # Count outside the lock, then add under it: the lock is held for microseconds.
        counted = [column.count(rows[:, j]) for j, column in enumerate(self._columns)]
        score_counts = np.bincount(score_bin_index(scores), minlength=SCORE_BINS)
        levels = self._segments.levels_of(rows)
        with self._lock:
            self._segments.add_scores(levels, scores)
            for j, (bins, missing, out_of_range, unknown) in enumerate(counted):
                self._bins[j] += bins
                self._missing[j] += missing
                self._out_of_range[j] += out_of_range
                self._unknown[j] += unknown
            self._out_of_range += extra_out_of_range
            self._scores += score_counts
            if self._task is not None and task is not None:
                self._task.add(task)
            if latency is not None:
                self._latency += latency
            self._scored += rows.shape[0]
            self._failed += n_failed + bad_scores

    def _clipped_counts(
        self, clipped: Mapping[str, int] | None, rows: int
    ) -> npt.NDArray[np.int64]:
        extra = np.zeros(len(self._columns), dtype=np.int64)
        for name, count in (clipped or {}).items():
            j = next((j for j, c in enumerate(self._columns) if c.name == name), None)
            if j is None or not self._columns[j].numeric:
                raise InputError(f"clipped: {name!r} is not a numeric feature of the schema")
            if type(count) is not int or not 0 <= count <= rows:
                raise InputError(f"clipped[{name!r}] must be an int from 0 to {rows}")
            extra[j] = count
        return extra

    def add_outcome(self, score: float, label: int) -> None:
        """A label that came back for an earlier prediction of probability ``score``."""
        self.add_outcomes([score], [label])

    def add_outcomes(
        self,
        scores: npt.ArrayLike,
        labels: npt.ArrayLike,
        segment_levels: npt.ArrayLike | None = None,
    ) -> None:
        """Labels that came back for earlier predictions of these scores; with
        ``segment_levels`` (``[N, S]``, from :meth:`segment_levels`) they count in their
        segments too. A multi-class model's scores are ``[N, K]`` probabilities and its
        labels class indices; a regressor's, predictions and true values."""
        task: tuple[Any, list[float]] | None = None
        if self._task is not None:
            rows = len(np.asarray(labels).reshape(-1))
            outputs = self._task.outputs_of(scores, rows)
            counts, sums, right = self._task.outcome_counts(outputs, labels)
            task, scores, labels = (counts, sums), self._task.base_scores(outputs), right
        values = np.asarray(scores, dtype=np.float64).ravel()
        raw_labels = np.asarray(labels).ravel()
        if values.shape != raw_labels.shape:
            raise InputError(f"{values.size} outcome scores but {raw_labels.size} labels")
        if not np.isfinite(values).all():
            raise InputError("an outcome's score must be a finite probability")
        if raw_labels.size and not np.isin(raw_labels, (0, 1)).all():
            raise InputError("an outcome's label must be 0 or 1 (1 = the positive class)")
        index = score_bin_index(values)
        positive = raw_labels.astype(bool)
        counts = np.stack(
            (
                np.bincount(index, minlength=SCORE_BINS),
                np.bincount(index[~positive], minlength=SCORE_BINS),
                np.bincount(index[positive], minlength=SCORE_BINS),
            )
        )
        levels = None
        if segment_levels is not None and self._segments.features:
            levels = np.asarray(segment_levels, dtype=np.int64).reshape(values.size, -1)
        with self._lock:
            self._outcomes += counts
            if self._task is not None and task is not None:
                self._task.add(*task)
            if levels is not None:
                self._segments.add_outcomes(levels, values, raw_labels.astype(np.int64))

    def merge(self, body: ReportBody) -> None:
        """Add the counts of ``body``, a window of the same model measured elsewhere (a
        worker process of the scoring service): sketches merge by adding counts."""
        if (body.model_name, body.model_version) != (self.model_name, self.model_version):
            raise InputError(
                f"cannot merge counts of {body.model_name} {body.model_version} into "
                f"{self.model_name} {self.model_version}"
            )
        layout = [(f.name, f.bins.bins) for f in body.features]
        if layout != [(c.name, c.bins) for c in self._columns]:
            raise InputError("the counts to merge have another feature layout")
        with self._lock:
            for j, feature in enumerate(body.features):
                self._bins[j] += np.asarray(feature.bins.counts, dtype=np.int64)
                self._missing[j] += feature.missing
                self._out_of_range[j] += feature.out_of_range
                self._unknown[j] += feature.unknown
            self._scores += np.asarray(body.scores.counts.counts, dtype=np.int64)
            self._outcomes[0] += np.asarray(body.outcomes.counts.counts, dtype=np.int64)
            self._outcomes[1] += np.asarray(body.outcomes.by_label[0].counts, dtype=np.int64)
            self._outcomes[2] += np.asarray(body.outcomes.by_label[1].counts, dtype=np.int64)
            self._latency += np.asarray(body.latency.counts.counts, dtype=np.int64)
            self._scored += body.scored
            self._failed += body.failed
            if self._task is not None and body.task is not None:
                self._task.merge(body.task)

    def snapshot(self) -> ReportBody:
        """The counts so far, from the window's start to now."""
        with self._lock:
            return self._body(self._clock())

    def reset(self) -> None:
        """Start a new window now."""
        with self._lock:
            self._window_start = self._clock()
            self._zero()

    def roll(self) -> ReportBody:
        """Snapshot and reset in one step, so that windows tile time and no row added
        between the two is lost."""
        with self._lock:
            now = self._clock()
            body = self._body(now)
            self._window_start = now
            self._zero()
            return body

    def _body(self, now: float) -> ReportBody:
        features = tuple(
            FeatureSketch(
                name=column.name,
                kind="numeric" if column.numeric else "categorical",
                bins=Histogram.from_array(self._bins[j]),
                missing=int(self._missing[j]),
                out_of_range=int(self._out_of_range[j]),
                unknown=int(self._unknown[j]),
            )
            for j, column in enumerate(self._columns)
        )
        return ReportBody(
            model_name=self.model_name,
            model_version=self.model_version,
            window_start=self._window_start,
            window_end=max(now, self._window_start),
            scored=self._scored,
            failed=self._failed,
            features=features,
            scores=ScoreSketch(
                counts=Histogram.from_array(self._scores),
                by_label=(Histogram.empty(SCORE_BINS), Histogram.empty(SCORE_BINS)),
            ),
            outcomes=ScoreSketch(
                counts=Histogram.from_array(self._outcomes[0]),
                by_label=(
                    Histogram.from_array(self._outcomes[1]),
                    Histogram.from_array(self._outcomes[2]),
                ),
            ),
            latency=LatencySketch(Histogram.from_array(self._latency)),
            segments=self._segments.sketches(),
            task=None if self._task is None else self._task.sketch(),
        )


def _task_counter(schema: FeatureSchema, reference: ReferenceProfile) -> TaskCounter | None:
    """The counter of a multi-class or regression model's task sketch (a regressor's
    predictions in the bins of the reference's); None for binary."""
    if schema.task == "binary":
        return None
    prediction = reference.prediction
    edges = prediction.edges if isinstance(prediction, NumericProfile) else None
    return TaskCounter(schema.task, len(schema.classes), edges)


@dataclass(frozen=True)
class _Column:
    """How one feature of the encoded matrix is counted."""

    name: str
    numeric: bool
    bins: int
    edges: npt.NDArray[np.float64]
    low: np.float32
    high: np.float32

    def count(self, values: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int64], int, int, int]:
        """(bin counts, missing, out of range, unknown) of one column."""
        if self.numeric:
            bins, missing = numeric_bin_counts(values, self.edges)
            # Compared in float32, the precision of the model input: a value the encoder
            # clipped to a bound must compare equal to that bound.
            out_of_range = int(np.count_nonzero((values < self.low) | (values > self.high)))
            return bins, missing, out_of_range, 0
        nan = int(np.count_nonzero(np.isnan(values)))
        bins, unknown = categorical_counts(values, self.bins)
        return bins, nan, 0, unknown - nan


def _columns(schema: FeatureSchema, reference: ReferenceProfile) -> list[_Column]:
    if len(reference.features) != schema.n_features:
        raise ManifestError(
            f"the reference profile has {len(reference.features)} features, "
            f"the schema {schema.n_features}"
        )
    columns: list[_Column] = []
    for feature, profile in zip(schema.features, reference.features, strict=True):
        if feature.name != profile.name:
            raise ManifestError(
                f"reference profile feature {profile.name!r} is where the schema has "
                f"{feature.name!r}"
            )
        if isinstance(feature, NumericFeature) and isinstance(profile, NumericProfile):
            edges = np.asarray(profile.edges, dtype=np.float64)
            if len(edges) + 1 > MAX_BINS:
                raise ManifestError(f"feature {feature.name!r} has more than {MAX_BINS} bins")
            columns.append(
                _Column(
                    name=feature.name,
                    numeric=True,
                    bins=len(edges) + 1,
                    edges=edges,
                    low=np.float32(-np.inf if feature.minimum is None else feature.minimum),
                    high=np.float32(np.inf if feature.maximum is None else feature.maximum),
                )
            )
        elif isinstance(feature, CategoricalFeature) and isinstance(profile, CategoricalProfile):
            if len(profile.counts) != len(feature.vocabulary):
                raise ManifestError(
                    f"feature {feature.name!r}: the reference profile has "
                    f"{len(profile.counts)} categories, the vocabulary {len(feature.vocabulary)}"
                )
            if len(feature.vocabulary) > MAX_BINS:
                raise ManifestError(f"feature {feature.name!r} has more than {MAX_BINS} categories")
            columns.append(
                _Column(
                    name=feature.name,
                    numeric=False,
                    bins=len(feature.vocabulary),
                    edges=np.empty(0),
                    low=np.float32(0),
                    high=np.float32(0),
                )
            )
        else:
            raise ManifestError(
                f"feature {feature.name!r} is {feature.kind} in the schema but not in the "
                "reference profile"
            )
    return columns
