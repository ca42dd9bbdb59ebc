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

:class:`~edgefleet.edge.sketch_builder.SketchBuilder` is the device's mutable accumulator;
``snapshot()`` freezes it into a :class:`ReportBody`, which
:class:`edgefleet.edge.report.Report` wraps with the identity of the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgefleet.edge.profile import (
    SCORE_BINS,
)
from edgefleet.errors import InputError

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
