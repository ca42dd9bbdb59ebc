"""Fairness across segments, from aggregates alone (docs/architecture.md §15).

A report of a model whose schema marks segment features carries, per feature and level, the
histogram of the scores and of the outcomes' scores by label (:mod:`edgefleet.edge.segments`).
Merged, they give per level, at the decision ``threshold`` (a multiple of the 0.01 bin
width, so the counts are exact, not estimated):

- ``positive_rate``: the share of scored records at or above the threshold (selection rate);
- ``tpr`` and ``fpr``: among labelled records, the share of positives, resp. negatives, at
  or above it;
- ``calibration_gap``: the share of positives among labelled records minus their mean score
  (bin midpoints: within 0.005 of the exact mean).

And per feature, over the levels with at least ``min_count`` records (labels, for the
label-based measures): the demographic-parity difference (largest minus smallest positive
rate) and the equalized-odds difference (the larger of the TPR and FPR spreads), as
fairlearn defines them (``tests/monitor/test_fairness.py`` holds the two within 0.01 on the
same rows). The alert rules ``demographic_parity`` and ``equalized_odds`` compare them with
``fairness.dp_difference`` and ``fairness.eo_difference``: a person's call, not a retrain's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.edge.aggregate import Aggregate
from edgefleet.edge.profile import SCORE_BINS
from edgefleet.edge.schema import FeatureSchema
from edgefleet.edge.segments import SegmentSketch, segment_features
from edgefleet.errors import InputError

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class SegmentMeasures:
    """One level of one segment feature."""

    level: str
    scored: int
    labelled: int
    positives: int
    positive_rate: float
    tpr: float
    fpr: float
    calibration_gap: float

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class FeatureFairness:
    """One segment feature: its levels' measures and the differences between them."""

    feature: str
    threshold: float
    min_count: int
    levels: tuple[SegmentMeasures, ...]
    demographic_parity_difference: float
    equalized_odds_difference: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "threshold": self.threshold,
            "min_count": self.min_count,
            "levels": [level.to_dict() for level in self.levels],
            "demographic_parity_difference": _finite(self.demographic_parity_difference),
            "equalized_odds_difference": _finite(self.equalized_odds_difference),
        }


def threshold_bin(threshold: float) -> int:
    """The first score bin at or above ``threshold``; :class:`InputError` unless it is a
    bin edge (counts from histograms are exact only there)."""
    position = threshold * SCORE_BINS
    if not 0 < threshold < 1 or abs(position - round(position)) > 1e-9:
        raise InputError(
            f"fairness threshold {threshold!r}: a multiple of {1 / SCORE_BINS} between 0 and 1"
        )
    return round(position)


def segment_measures(
    sketch: SegmentSketch, labels: Sequence[str], threshold: float = DEFAULT_THRESHOLD
) -> tuple[SegmentMeasures, ...]:
    """Every level's measures (module docstring)."""
    cut = threshold_bin(threshold)
    midpoints = [(b + 0.5) / SCORE_BINS for b in range(SCORE_BINS)]
    out = []
    for label, scores, negatives, positives in zip(
        labels, sketch.scores, sketch.negatives, sketch.positives, strict=True
    ):
        neg, pos = negatives.counts, positives.counts
        scored, n_neg, n_pos = scores.total, sum(neg), sum(pos)
        labelled = n_neg + n_pos
        mean = sum(m * (a + b) for m, a, b in zip(midpoints, neg, pos, strict=True))
        out.append(
            SegmentMeasures(
                level=label,
                scored=scored,
                labelled=labelled,
                positives=n_pos,
                positive_rate=_share(sum(scores.counts[cut:]), scored),
                tpr=_share(sum(pos[cut:]), n_pos),
                fpr=_share(sum(neg[cut:]), n_neg),
                calibration_gap=_share(n_pos, labelled) - _share(mean, labelled),
            )
        )
    return tuple(out)


def feature_fairness(
    sketch: SegmentSketch,
    labels: Sequence[str],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_count: int = 200,
) -> FeatureFairness:
    levels = segment_measures(sketch, labels, threshold)
    dp, eo = differences(levels, min_count)
    return FeatureFairness(sketch.feature, threshold, min_count, levels, dp, eo)


def differences(levels: Sequence[SegmentMeasures], min_count: int) -> tuple[float, float]:
    """(demographic-parity difference, equalized-odds difference) over the levels with at
    least ``min_count`` records (labels, for equalized odds); NaN with fewer than two."""
    selected = [m.positive_rate for m in levels if m.scored >= min_count]
    labelled = [m for m in levels if m.labelled >= min_count]
    tprs = [m.tpr for m in labelled if math.isfinite(m.tpr)]
    fprs = [m.fpr for m in labelled if math.isfinite(m.fpr)]
    eo = max(_spread(tprs), _spread(fprs)) if len(tprs) > 1 and len(fprs) > 1 else math.nan
    return _spread(selected), eo


def fairness_of(
    aggregate: Aggregate,
    schema: FeatureSchema,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_count: int = 200,
) -> tuple[FeatureFairness, ...]:
    """Every segment feature of ``aggregate`` (none for a schema without segments)."""
    levels = {f.name: f.levels for f in segment_features(schema)}
    return tuple(
        feature_fairness(s, levels[s.feature], threshold=threshold, min_count=min_count)
        for s in aggregate.segments
        if s.feature in levels and len(levels[s.feature]) == s.levels
    )


def _share(part: float, whole: float) -> float:
    return part / whole if whole else math.nan


def _spread(values: Sequence[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else math.nan


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
