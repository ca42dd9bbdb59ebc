"""Mergeable sketches: what a device measures over a report window (docs/architecture.md §§5, 7).

Every sketch is a frozen value of plain integer counts. ``merge`` adds counts elementwise, so
merging is exactly associative and commutative, and the empty sketch is its identity: the
fleet, a cohort and a single device are all summarised by the same sums.

- :class:`Histogram`: a fixed number of integer counts.
- :class:`FeatureSketch`: one input feature. Numeric: counts in the reference profile's bins
  (the same left-closed bins as :func:`edgefleet.edge.profile.numeric_bin_counts`), plus
  ``missing`` (NaN) and ``out_of_range`` (outside the schema's allowed range; such values are
  *also* counted in their bin, since they were scored). Categorical: counts per vocabulary
  code, plus ``unknown`` (any other code, which is how the record encoder writes both an unseen
  and a missing category) and ``missing`` (NaN codes, which only a caller passing pre-encoded
  arrays can produce). Bins + missing + unknown always add up to the rows seen.
- :class:`ScoreSketch`: the positive-class probability in :data:`SCORE_BINS` equal-width bins,
  overall and per label (``by_label[0]`` negative, ``by_label[1]`` positive). The labelled
  histograms are a subset of the overall one.
- :class:`LatencySketch`: scoring latency in fixed log-spaced buckets (see its docstring for
  the error bound).

:class:`SketchBuilder` is the device's mutable accumulator; ``snapshot()`` freezes it into a
:class:`ReportBody`, which :class:`edgefleet.edge.report.Report` wraps with the identity of
the device.

Out of range with the ``clip`` policy: the builder only sees encoded values, and a clipped
value sits exactly at the bound, which is in range. Pass ``clipped={name: count}`` to
:meth:`SketchBuilder.add` for the values the encoder clipped if you know them; otherwise
clipped values count as in range.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

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
from edgefleet.errors import InputError, ManifestError

__all__ = [
    "LATENCY_BUCKETS",
    "LATENCY_MAX_SECONDS",
    "LATENCY_MIN_SECONDS",
    "LATENCY_RELATIVE_ERROR",
    "MAX_BINS",
    "MAX_COUNT",
    "MAX_NAME_LENGTH",
    "SCORE_BINS",
    "FeatureSketch",
    "Histogram",
    "LatencySketch",
    "ReportBody",
    "ScoreSketch",
    "SketchBuilder",
    "check_count",
    "check_name",
]

MAX_COUNT = 2**63 - 1
"""Largest count a sketch holds: what a signed 64-bit column on the central side can store."""

MAX_BINS = 1000
"""Most bins a histogram may have (a bound on what a hostile report can make us allocate)."""

MAX_NAME_LENGTH = 128
"""Longest feature name a sketch accepts."""

LATENCY_MIN_SECONDS = 1e-6
LATENCY_MAX_SECONDS = 10.0
LATENCY_RELATIVE_ERROR = 0.05
"""For a latency in [LATENCY_MIN_SECONDS, LATENCY_MAX_SECONDS), a quantile is within this
relative error of the exact sample quantile."""

_GAMMA = (1 + LATENCY_RELATIVE_ERROR) / (1 - LATENCY_RELATIVE_ERROR)
_LOG_GAMMA = math.log(_GAMMA)
_LOG_BUCKETS = math.ceil(math.log(LATENCY_MAX_SECONDS / LATENCY_MIN_SECONDS) / _LOG_GAMMA)
LATENCY_BUCKETS = _LOG_BUCKETS + 2
"""Underflow bucket, the log-spaced buckets, overflow bucket."""

# The value a log bucket stands for: the point whose relative distance to both ends of the
# bucket [a, a*gamma] is the same, (gamma - 1) / (gamma + 1) = LATENCY_RELATIVE_ERROR.
_LATENCY_VALUES = np.concatenate(
    (
        [LATENCY_MIN_SECONDS],
        LATENCY_MIN_SECONDS * _GAMMA ** np.arange(_LOG_BUCKETS) * 2 * _GAMMA / (1 + _GAMMA),
        [LATENCY_MAX_SECONDS],
    )
)


def check_count(value: Any, field: str) -> int:
    """``value`` if it is an int in [0, MAX_COUNT]; :class:`InputError` naming ``field``
    otherwise. bool is refused although Python counts it as an int: ``true`` is no count."""
    if type(value) is not int:
        raise InputError(f"{field} must be an integer count, not {_describe(value)}")
    if not 0 <= value <= MAX_COUNT:
        raise InputError(f"{field} must be between 0 and 2**63 - 1, not {value}")
    return value


def check_name(value: Any, field: str) -> str:
    """A feature name: printable text of 1 to MAX_NAME_LENGTH characters, no edge spaces
    (the schema's own rule)."""
    if not isinstance(value, str):
        raise InputError(f"{field} must be text, not {_describe(value)}")
    if not 0 < len(value) <= MAX_NAME_LENGTH:
        raise InputError(f"{field} must have 1 to {MAX_NAME_LENGTH} characters")
    if not value.isprintable() or value != value.strip():
        raise InputError(f"{field} has control characters or edge spaces: {value[:40]!r}")
    return value


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


@dataclass(frozen=True)
class Histogram:
    """A fixed number of non-negative integer counts."""

    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.counts, tuple):
            raise InputError(f"histogram counts must be a tuple, not {_describe(self.counts)}")
        if not 0 < len(self.counts) <= MAX_BINS:
            raise InputError(f"a histogram has 1 to {MAX_BINS} bins, not {len(self.counts)}")
        # One pass for the common case; the slow loop only runs to name the bad bin.
        if not all(type(c) is int and 0 <= c <= MAX_COUNT for c in self.counts):
            for i, c in enumerate(self.counts):
                check_count(c, f"bin {i}")

    @classmethod
    def empty(cls, bins: int) -> Histogram:
        return cls((0,) * bins)

    @classmethod
    def from_array(cls, counts: npt.ArrayLike) -> Histogram:
        # tolist() gives Python ints, which JSON and the int check above want.
        return cls(tuple(np.asarray(counts, dtype=np.int64).tolist()))

    @property
    def bins(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def merge(self, other: Histogram) -> Histogram:
        if len(other.counts) != len(self.counts):
            raise InputError(
                f"cannot merge histograms of {len(self.counts)} and {len(other.counts)} bins: "
                "they were binned differently (another model version or schema?)"
            )
        return Histogram(tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)))

    def to_list(self) -> list[int]:
        return list(self.counts)


FeatureKind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class FeatureSketch:
    """Counts of one feature over a window (see the module docstring for the fields).

    Numeric sketches have ``unknown == 0``; categorical ones ``out_of_range == 0``."""

    name: str
    kind: FeatureKind
    bins: Histogram
    missing: int = 0
    out_of_range: int = 0
    unknown: int = 0

    def __post_init__(self) -> None:
        check_name(self.name, "feature name")
        where = f"feature {self.name!r}"
        if self.kind not in ("numeric", "categorical"):
            raise InputError(f"{where}: kind must be 'numeric' or 'categorical'")
        if not isinstance(self.bins, Histogram):
            raise InputError(f"{where}: bins must be a Histogram")
        check_count(self.missing, f"{where}: missing")
        check_count(self.out_of_range, f"{where}: out_of_range")
        check_count(self.unknown, f"{where}: unknown")
        if self.kind == "numeric" and self.unknown:
            raise InputError(f"{where}: a numeric feature has no unknown count")
        if self.kind == "categorical" and self.out_of_range:
            raise InputError(f"{where}: a categorical feature has no out_of_range count")
        if self.out_of_range > self.bins.total:
            raise InputError(
                f"{where}: out_of_range {self.out_of_range} exceeds the values in its bins"
            )

    @classmethod
    def empty(cls, name: str, kind: FeatureKind, bins: int) -> FeatureSketch:
        return cls(name=name, kind=kind, bins=Histogram.empty(bins))

    @property
    def total(self) -> int:
        """Rows seen: every row lands in exactly one of bins, missing, unknown."""
        return self.bins.total + self.missing + self.unknown

    def merge(self, other: FeatureSketch) -> FeatureSketch:
        if (other.name, other.kind) != (self.name, self.kind):
            raise InputError(
                f"cannot merge sketches of {self.kind} feature {self.name!r} and "
                f"{other.kind} feature {other.name!r}"
            )
        if other.bins.bins != self.bins.bins:
            raise InputError(
                f"cannot merge feature {self.name!r}: {self.bins.bins} bins against "
                f"{other.bins.bins} (reports of another model version or schema?)"
            )
        return FeatureSketch(
            name=self.name,
            kind=self.kind,
            bins=self.bins.merge(other.bins),
            missing=self.missing + other.missing,
            out_of_range=self.out_of_range + other.out_of_range,
            unknown=self.unknown + other.unknown,
        )

    def to_dict(self) -> dict[str, Any]:
        extra = (
            {"out_of_range": self.out_of_range}
            if self.kind == "numeric"
            else {"unknown": self.unknown}
        )
        return {
            "name": self.name,
            "kind": self.kind,
            "bins": self.bins.to_list(),
            "missing": self.missing,
            **extra,
        }


@dataclass(frozen=True)
class ScoreSketch:
    """Histograms of the positive-class probability: ``counts`` of every score, and
    ``by_label`` of the scores whose true label is known (a subset of ``counts``)."""

    counts: Histogram
    by_label: tuple[Histogram, Histogram]

    def __post_init__(self) -> None:
        if not isinstance(self.by_label, tuple) or len(self.by_label) != 2:
            raise InputError("score sketch: by_label must hold two histograms (labels 0 and 1)")
        for name, histogram in (
            ("counts", self.counts),
            ("by_label[0]", self.by_label[0]),
            ("by_label[1]", self.by_label[1]),
        ):
            if not isinstance(histogram, Histogram) or histogram.bins != SCORE_BINS:
                raise InputError(f"score sketch: {name} must be a histogram of {SCORE_BINS} bins")
        negative, positive = self.by_label
        if any(
            n + p > c
            for n, p, c in zip(negative.counts, positive.counts, self.counts.counts, strict=True)
        ):
            raise InputError("score sketch: a bin has more labelled scores than scores")

    @classmethod
    def empty(cls) -> ScoreSketch:
        empty = Histogram.empty(SCORE_BINS)
        return cls(counts=empty, by_label=(empty, empty))

    @property
    def total(self) -> int:
        return self.counts.total

    @property
    def labelled(self) -> int:
        return self.by_label[0].total + self.by_label[1].total

    def merge(self, other: ScoreSketch) -> ScoreSketch:
        return ScoreSketch(
            counts=self.counts.merge(other.counts),
            by_label=(
                self.by_label[0].merge(other.by_label[0]),
                self.by_label[1].merge(other.by_label[1]),
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts.to_list(),
            "by_label": [self.by_label[0].to_list(), self.by_label[1].to_list()],
        }


def latency_bucket_index(seconds: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The bucket of each latency. Below LATENCY_MIN_SECONDS (also negative and NaN, a clock
    that stepped back) is bucket 0; LATENCY_MAX_SECONDS and above the last bucket."""
    values = np.nan_to_num(np.asarray(seconds, dtype=np.float64), nan=0.0, posinf=math.inf)
    index = np.empty(values.shape, dtype=np.int64)
    low = values < LATENCY_MIN_SECONDS
    high = values >= LATENCY_MAX_SECONDS
    middle = ~(low | high)
    logs = np.floor(np.log(values[middle] / LATENCY_MIN_SECONDS) / _LOG_GAMMA)
    # Rounding can put a value a hair below a bucket edge into the next bucket (or a value
    # just below the maximum one past the last): the representative of either neighbour
    # is still within the error bound of a value on their common edge.
    index[middle] = np.clip(logs, 0, _LOG_BUCKETS - 1).astype(np.int64) + 1
    index[low] = 0
    index[high] = LATENCY_BUCKETS - 1
    return index


@dataclass(frozen=True)
class LatencySketch:
    """Scoring latency (seconds per call) in fixed log-spaced buckets.

    Bucket 0 holds latencies below 1 us, bucket ``LATENCY_BUCKETS - 1`` those of 10 s and
    more; in between, bucket i covers ``[1 us * g**(i-1), 1 us * g**i)`` with
    ``g = 1.05 / 0.95``, 162 buckets. ``quantile(q)`` returns the value standing for the
    bucket holding the exact sample quantile (the element of rank ``floor(q * (n - 1))`` in
    sorted order), so for a quantile in [1 us, 10 s) the relative error is at most
    :data:`LATENCY_RELATIVE_ERROR` (5 %). Below the range it returns 1 us (an absolute error
    under 1 us); at 10 s and beyond it returns 10 s (a lower bound). The buckets are fixed, so
    merging is an exact sum, unlike t-digest or the adaptive DDSketch.
    """

    counts: Histogram

    def __post_init__(self) -> None:
        if not isinstance(self.counts, Histogram) or self.counts.bins != LATENCY_BUCKETS:
            raise InputError(f"latency sketch: counts must be a histogram of {LATENCY_BUCKETS}")

    @classmethod
    def empty(cls) -> LatencySketch:
        return cls(Histogram.empty(LATENCY_BUCKETS))

    @classmethod
    def of(cls, seconds: npt.ArrayLike) -> LatencySketch:
        index = latency_bucket_index(np.ravel(np.asarray(seconds, dtype=np.float64)))
        return cls(Histogram.from_array(np.bincount(index, minlength=LATENCY_BUCKETS)))

    @property
    def count(self) -> int:
        return self.counts.total

    def merge(self, other: LatencySketch) -> LatencySketch:
        return LatencySketch(self.counts.merge(other.counts))

    def quantile(self, q: float) -> float:
        """The q-quantile (0 <= q <= 1) in seconds; NaN for an empty sketch."""
        if not 0.0 <= q <= 1.0:
            raise InputError(f"a quantile is between 0 and 1, not {q!r}")
        counts = np.asarray(self.counts.counts, dtype=np.int64)
        n = int(counts.sum())
        if n == 0:
            return math.nan
        rank = math.floor(q * (n - 1))
        bucket = int(np.searchsorted(np.cumsum(counts), rank, side="right"))
        return float(_LATENCY_VALUES[bucket])

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.to_list()}


@dataclass(frozen=True)
class ReportBody:
    """What a device measured over one window, without the device's identity (that is
    :class:`edgefleet.edge.report.Report`'s job). Times are Unix epoch seconds."""

    model_name: str
    model_version: str
    window_start: float
    window_end: float
    scored: int
    failed: int
    features: tuple[FeatureSketch, ...]
    scores: ScoreSketch
    outcomes: ScoreSketch
    latency: LatencySketch
    segments: tuple[Any, ...] = ()
    """:class:`edgefleet.edge.segments.SegmentSketch` per segment feature of the schema."""
    shadow: Any = None
    """:class:`edgefleet.edge.shadow.ShadowSketch` of a shadow device's challenger, or None."""
    task: Any = None
    """:class:`edgefleet.edge.tasksketch.TaskSketch` of a multi-class or regression model."""


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


def _task_counter(schema: FeatureSchema, reference: ReferenceProfile) -> Any:
    """The counter of a multi-class or regression model's task sketch (a regressor's
    predictions in the bins of the reference's); None for binary."""
    if schema.task == "binary":
        return None
    from edgefleet.edge.tasksketch import TaskCounter  # builds on this module's histograms

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
