"""Segments: per-group score and labelled histograms, for fairness from aggregates.

A schema may mark *segment features* (``FeatureSchema.segments``, e.g. ``senior_citizen``,
``region``): the groups across which a model's errors and decisions should be compared.
Each segment feature has a fixed list of *levels*, known from the schema alone, so devices
and monitor agree without talking:

- categorical: the vocabulary, then ``"unknown"`` (a value not in it, or missing);
- numeric: the whole numbers ``0 .. maximum`` (the schema's maximum, at most
  :data:`MAX_NUMERIC_LEVELS` - 1; the minimum must be 0), then ``"other"`` (missing, not
  whole, or out of that range). For flags and small codes such as ``senior_citizen``.

A device counts, per segment feature and level, the histogram of the scores it produced
(100 bins, as the report's) and the histograms of the outcomes that came back, by label.
The report carries them (:class:`SegmentSketch`, report ``schema_version`` 2): dense over
the levels, so a version's reports all have the same layout. Per level and bin the scores
of one segment feature sum to the report's scores (each scored row is in exactly one
level), and its outcomes never exceed the report's (an outcome whose record's level the
device no longer knows counts only fleet-wide). Sums merge exactly, so the monitor computes
group metrics (positive rate, TPR, FPR, calibration; :mod:`edgefleet.central.monitor.fairness`)
for any merge of reports, never seeing a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.edge.profile import SCORE_BINS, score_bin_index
from edgefleet.edge.schema import CategoricalFeature, FeatureSchema, NumericFeature
from edgefleet.edge.sketch import Histogram, check_name
from edgefleet.edge.wirejson import exact_keys, json_type
from edgefleet.errors import InputError

MAX_SEGMENT_FEATURES = 4
MAX_NUMERIC_LEVELS = 16
UNKNOWN_LEVEL = "unknown"
OTHER_LEVEL = "other"
SEGMENT_KEYS = ("feature", "scores", "negatives", "positives")

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SegmentFeature:
    """One segment feature: its column in the model input and its levels."""

    name: str
    column: int
    levels: tuple[str, ...]
    numeric: bool

    def level_index(self, values: npt.NDArray[Any]) -> IntArray:
        """The level of each encoded value (model-contract encoding, float32)."""
        values = np.asarray(values, dtype=np.float64)
        last = len(self.levels) - 1
        whole = np.isfinite(values) & (values == np.floor(values))
        inside = whole & (values >= 0) & (values < last)
        return np.where(inside, np.nan_to_num(values), last).astype(np.int64)


def segment_levels(feature: CategoricalFeature | NumericFeature) -> tuple[str, ...]:
    """The levels of one segment feature (module docstring); :class:`InputError` if the
    feature cannot be a segment."""
    if isinstance(feature, CategoricalFeature):
        return (*feature.vocabulary, UNKNOWN_LEVEL)
    maximum = feature.maximum
    if feature.minimum != 0 or maximum is None or maximum != int(maximum):
        raise InputError(
            f"segment feature {feature.name!r} is numeric: it needs minimum 0 and a whole "
            f"maximum below {MAX_NUMERIC_LEVELS} (a flag or a small code), not bounds "
            f"{feature.minimum}..{maximum}; segment a categorical feature, or bin this one"
        )
    if not 0 < maximum < MAX_NUMERIC_LEVELS:
        raise InputError(
            f"segment feature {feature.name!r}: at most {MAX_NUMERIC_LEVELS} whole values "
            f"(maximum {MAX_NUMERIC_LEVELS - 1}), not a maximum of {maximum}"
        )
    return (*(str(v) for v in range(int(maximum) + 1)), OTHER_LEVEL)


def check_segments(schema_features: Sequence[Any], segments: Sequence[str]) -> tuple[str, ...]:
    """The segment names, checked against the schema's features."""
    if isinstance(segments, str) or not all(isinstance(s, str) for s in segments):
        raise InputError("schema 'segments' must be a list of feature names")
    if len(segments) > MAX_SEGMENT_FEATURES or len(set(segments)) != len(segments):
        raise InputError(
            f"schema 'segments': at most {MAX_SEGMENT_FEATURES} distinct feature names"
        )
    by_name = {f.name: f for f in schema_features}
    for name in segments:
        if name not in by_name:
            raise InputError(f"segment {name!r} is not a feature of the schema")
        segment_levels(by_name[name])
    return tuple(segments)


def segment_features(schema: FeatureSchema) -> tuple[SegmentFeature, ...]:
    """The schema's segment features, in the order the schema names them."""
    found = []
    for name in schema.segments:
        column = schema.names.index(name)
        feature = schema.features[column]
        found.append(
            SegmentFeature(
                name, column, segment_levels(feature), isinstance(feature, NumericFeature)
            )
        )
    return tuple(found)


@dataclass(frozen=True)
class SegmentSketch:
    """One segment feature's histograms per level: the scores, and the outcomes' scores by
    label (negatives, positives)."""

    feature: str
    scores: tuple[Histogram, ...]
    negatives: tuple[Histogram, ...]
    positives: tuple[Histogram, ...]

    def __post_init__(self) -> None:
        check_name(self.feature, "segment feature")
        levels = len(self.scores)
        if not 0 < levels <= 1024 or not levels == len(self.negatives) == len(self.positives):
            raise InputError(f"segment {self.feature!r}: one histogram of each kind per level")
        for histogram in (*self.scores, *self.negatives, *self.positives):
            if not isinstance(histogram, Histogram) or histogram.bins != SCORE_BINS:
                raise InputError(
                    f"segment {self.feature!r}: histograms must have {SCORE_BINS} bins"
                )

    @property
    def levels(self) -> int:
        return len(self.scores)

    def score_totals(self) -> list[int]:
        """Scores per bin over every level: the report's score histogram."""
        return _column_sums(self.scores)

    def outcome_totals(self) -> tuple[list[int], list[int]]:
        return _column_sums(self.negatives), _column_sums(self.positives)

    def merge(self, other: SegmentSketch) -> SegmentSketch:
        if (other.feature, other.levels) != (self.feature, self.levels):
            raise InputError(f"segment {self.feature!r}: cannot merge other levels")
        return SegmentSketch(
            self.feature,
            tuple(a.merge(b) for a, b in zip(self.scores, other.scores, strict=True)),
            tuple(a.merge(b) for a, b in zip(self.negatives, other.negatives, strict=True)),
            tuple(a.merge(b) for a, b in zip(self.positives, other.positives, strict=True)),
        )

    def flat(self) -> list[int]:
        """Every count in one list (scores, negatives, positives, level by level): the
        form merges sum."""
        return [c for h in (*self.scores, *self.negatives, *self.positives) for c in h.counts]

    @classmethod
    def from_flat(cls, feature: str, levels: int, counts: Sequence[int]) -> SegmentSketch:
        histograms = [
            Histogram(tuple(counts[i * SCORE_BINS : (i + 1) * SCORE_BINS]))
            for i in range(3 * levels)
        ]
        return cls(
            feature,
            tuple(histograms[:levels]),
            tuple(histograms[levels : 2 * levels]),
            tuple(histograms[2 * levels :]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "scores": [h.to_list() for h in self.scores],
            "negatives": [h.to_list() for h in self.negatives],
            "positives": [h.to_list() for h in self.positives],
        }

    @classmethod
    def from_json(cls, raw: Any, where: str) -> SegmentSketch:
        if not isinstance(raw, dict):
            raise InputError(f"report field {where!r} must be an object, not {json_type(raw)}")
        exact_keys(raw, SEGMENT_KEYS, f"report field {where!r}")
        lists = [_histograms(raw[key], f"{where}.{key}") for key in SEGMENT_KEYS[1:]]
        return cls(check_name(raw["feature"], f"report field '{where}.feature'"), *lists)


def _histograms(raw: Any, where: str) -> tuple[Histogram, ...]:
    if not isinstance(raw, list) or not raw:
        raise InputError(f"report field {where!r} must be an array of histograms")
    out = []
    for i, values in enumerate(raw):
        if not isinstance(values, list) or len(values) != SCORE_BINS:
            raise InputError(f"report field '{where}[{i}]' must have {SCORE_BINS} counts")
        for value in values:
            if type(value) is not int or value < 0:
                raise InputError(f"report field '{where}[{i}]' must hold counts")
        out.append(Histogram(tuple(values)))
    return tuple(out)


def _column_sums(histograms: Sequence[Histogram]) -> list[int]:
    return [sum(column) for column in zip(*(h.counts for h in histograms), strict=True)]


def levels_of(features: Sequence[SegmentFeature], rows: npt.NDArray[Any]) -> IntArray:
    """``[N, S]``: each encoded row's level of each segment feature."""
    rows = np.asarray(rows, dtype=np.float32)
    if not features:
        return np.zeros((len(rows), 0), dtype=np.int64)
    return np.stack([f.level_index(rows[:, f.column]) for f in features], axis=1)


class SegmentCounter:
    """The device's per-level counts for every segment feature of a schema (used by
    :class:`~edgefleet.edge.sketch_builder.SketchBuilder`, under its lock)."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.features = segment_features(schema)
        self.zero()

    def zero(self) -> None:
        self._counts = [np.zeros((3, len(f.levels), SCORE_BINS), np.int64) for f in self.features]

    def levels_of(self, rows: npt.NDArray[Any]) -> IntArray:
        """``[N, S]``: each row's level of each segment feature."""
        return levels_of(self.features, rows)

    def add_scores(self, levels: IntArray, scores: npt.NDArray[Any]) -> None:
        self._add(0, levels, score_bin_index(scores))

    def add_outcomes(self, levels: IntArray, scores: npt.NDArray[Any], labels: IntArray) -> None:
        bins = score_bin_index(scores)
        positive = labels.astype(bool)
        self._add(1, levels[~positive], bins[~positive])
        self._add(2, levels[positive], bins[positive])

    def _add(self, kind: int, levels: IntArray, bins: IntArray) -> None:
        for j, counts in enumerate(self._counts):
            np.add.at(counts[kind], (levels[:, j], bins), 1)

    def sketches(self) -> tuple[SegmentSketch, ...]:
        return tuple(
            SegmentSketch(
                f.name,
                *(
                    tuple(Histogram.from_array(level) for level in counts[kind])
                    for kind in range(3)
                ),
            )
            for f, counts in zip(self.features, self._counts, strict=True)
        )
