"""Everything the monitor measures about one aggregate, against the model's manifest.

:func:`measure` turns an :class:`~edgefleet.edge.aggregate.Aggregate` (the merged sketches of
some reports of one model version) into :class:`Measures`: drift of every input feature and
of the score distribution against the manifest's reference profile, AUROC and average
precision from the labelled score histograms, the label-free expected performance, the
error rate and the scoring latency. Nothing here sees a row: the same call measures the
fleet, a cohort, a device group or one device, depending only on which reports were merged
(:func:`scopes` yields them all from a store).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edgefleet.central.monitor.drift import DriftDetector, FeatureDrift
from edgefleet.central.monitor.fairness import FeatureFairness, fairness_of
from edgefleet.central.monitor.quality import (
    ExpectedPerformance,
    Rate,
    auroc_error_bound,
    average_precision_bounds,
    binned_auroc,
    binned_average_precision,
    expected_performance,
    rate,
    score_drift,
)
from edgefleet.central.monitor.task_measures import TaskMeasures, task_measures
from edgefleet.edge.aggregate import Aggregate
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.profile import NumericProfile
from edgefleet.errors import InputError

MIN_LABELS = 100
"""Labelled records below which :func:`measure` reports no AUROC or average precision.

Only a display floor: with 100 labels (about 23 positives at the churn base rate) the
sampling error of AUROC is near 0.06, so alert rules ask for far more
(:attr:`edgefleet.central.monitor.alerts.AlertRules.min_labels`)."""

SCOPE_LEVELS = ("fleet", "cohort", "group", "device")
"""Levels :func:`scopes` can yield, widest first."""


@dataclass(frozen=True)
class LabelledPerformance:
    """AUROC and average precision of the records whose label came back.

    Computed on the binned scores (:func:`~edgefleet.central.monitor.quality.binned_auroc`);
    the AUROC of the raw scores lies within ``auroc +- auroc_bound`` and their average
    precision within ``[average_precision_low, average_precision_high]``, whatever the raw
    scores were. Sampling error (a few hundred labels) is usually the larger one.

    ``positive_rate`` is the share of positives among them and ``mean_score`` the mean
    predicted probability of the same records (bin midpoints: within 0.005 of the raw
    mean). A calibrated model has them equal; when the same inputs start to mean another
    outcome (concept drift), they part while the scores, and so every input and score
    drift measure, stay put.
    """

    labelled: int
    positives: int
    positive_rate: float
    mean_score: float
    auroc: float
    auroc_bound: float
    average_precision: float
    average_precision_low: float
    average_precision_high: float

    @property
    def calibration_gap(self) -> float:
        """Share of positives minus mean predicted probability."""
        return self.positive_rate - self.mean_score


@dataclass(frozen=True)
class Latency:
    """Scoring latency per call from the latency sketch (5 % relative error); NaN when no
    call was timed."""

    calls: int
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True)
class Measures:
    """The measures of one aggregate (see :func:`measure`).

    ``score`` is None when nothing was scored; ``performance`` is None below ``MIN_LABELS``
    labels or while one class has none; ``expected`` is None when nothing was scored.
    ``reference_auroc`` and ``reference_average_precision`` are the manifest's holdout
    metrics (NaN when absent); ``reference_performance`` the same measures taken on the
    holdout's labelled score histograms (its calibration is the baseline of
    ``performance``'s); ``reference_expected`` is the label-free estimate on the
    holdout's score histogram, the baseline for ``expected`` (the estimate's own bias, from
    miscalibration, is then on both sides).
    """

    fleet: str
    model_name: str
    model_version: str
    window_start: float
    window_end: float
    reports: int
    devices: int
    scored: int
    failed: int
    labelled: int
    features: tuple[FeatureDrift, ...]
    score: FeatureDrift | None
    performance: LabelledPerformance | None
    reference_auroc: float
    reference_average_precision: float
    reference_performance: LabelledPerformance | None
    expected: ExpectedPerformance | None
    reference_expected: ExpectedPerformance | None
    errors: Rate
    latency: Latency
    fairness: tuple[FeatureFairness, ...] = ()
    """Per segment feature of the schema (none without), at the default threshold:
    :mod:`edgefleet.central.monitor.fairness`."""
    task: TaskMeasures | None = None
    """A multi-class or regression model's measures (:mod:`.task_measures`); None for a
    binary one. Such a model has no binary ``performance`` or ``expected``; its ``score``
    drift is that of its confidence (multi-class) or None (regression)."""

    @property
    def task_kind(self) -> str:
        return "binary" if self.task is None else self.task.task

    def metrics(self) -> dict[str, float]:
        """The task's quality metrics by name (``TASK_METRICS``): AUROC and average
        precision, accuracy, log loss and OvR AUROC, or MAE, RMSE and R²; NaN without
        enough labels."""
        if self.task is not None:
            return self.task.metrics()
        performance = self.performance
        return {
            "auroc": math.nan if performance is None else performance.auroc,
            "average_precision": math.nan if performance is None else performance.average_precision,
        }

    @property
    def drifted_features(self) -> tuple[FeatureDrift, ...]:
        return tuple(f for f in self.features if f.drifted)

    def feature(self, name: str) -> FeatureDrift:
        for feature in self.features:
            if feature.feature == name:
                return feature
        raise InputError(f"the measures have no feature {name!r}")

    def max_feature_js(self) -> float:
        """The largest JS distance of a feature with a verdict (0 when none has one)."""
        values = [f.js for f in self.features if f.verdict != "insufficient_data"]
        return max(values, default=0.0)

    def summary(self) -> dict[str, Any]:
        """The few numbers a decision or a log line needs (JSON-able)."""
        return _clean_dict(
            {
                "model_version": self.model_version,
                "window": [self.window_start, self.window_end],
                "reports": self.reports,
                "devices": self.devices,
                "scored": self.scored,
                "failed": self.failed,
                "labelled": self.labelled,
                "error_rate": self.errors.value,
                "drifted_features": {
                    f.feature: {"psi": f.psi, "js": f.js} for f in self.drifted_features
                },
                "max_feature_js": self.max_feature_js(),
                "score_drift": None
                if self.score is None
                else {"psi": self.score.psi, "js": self.score.js, "verdict": self.score.verdict},
                "auroc": None if self.performance is None else self.performance.auroc,
                "average_precision": None
                if self.performance is None
                else self.performance.average_precision,
                "expected_auroc": None if self.expected is None else self.expected.auroc,
                "latency_p95_ms": self.latency.p95_ms,
                **_task_summary(self.task),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able: NaN becomes None."""
        return _clean_dict(
            {
                "fleet": self.fleet,
                "model_name": self.model_name,
                "model_version": self.model_version,
                "window_start": self.window_start,
                "window_end": self.window_end,
                "reports": self.reports,
                "devices": self.devices,
                "scored": self.scored,
                "failed": self.failed,
                "labelled": self.labelled,
                "features": [f.to_dict() for f in self.features],
                "score": None if self.score is None else self.score.to_dict(),
                "performance": _performance_dict(self.performance),
                "reference_performance": _performance_dict(self.reference_performance),
                "reference_auroc": self.reference_auroc,
                "reference_average_precision": self.reference_average_precision,
                "expected": _expected_dict(self.expected),
                "reference_expected": _expected_dict(self.reference_expected),
                "errors": {
                    "failed": self.errors.numerator,
                    "records": self.errors.denominator,
                    "rate": self.errors.value,
                    "low": self.errors.low,
                    "high": self.errors.high,
                    "confidence": self.errors.confidence,
                },
                "latency": {
                    "calls": self.latency.calls,
                    "p50_ms": self.latency.p50_ms,
                    "p95_ms": self.latency.p95_ms,
                },
                "task": None if self.task is None else self.task.to_dict(),
            }
        )


def measure(
    aggregate: Aggregate,
    manifest: Manifest,
    *,
    detector: DriftDetector | None = None,
    min_labels: int = MIN_LABELS,
) -> Measures:
    """Measure ``aggregate`` against the reference profile and metrics of ``manifest``.

    Per feature, the reference counts of the manifest are compared with the aggregate's
    counts in the same bins; values without a bin (missing numbers, unknown or missing
    categories) are the extra bin :class:`DriftDetector` compares alongside, and values out
    of the allowed range are reported in each verdict's ``extra``. The score histogram is
    compared with the holdout's. ``detector`` sets the thresholds and the minimum count of
    every verdict (default :class:`DriftDetector()`).

    Labelled counts are the outcome histograms (labels that came back after scoring) plus
    any labels known at scoring time: the two count different records.
    """
    if (aggregate.model_name, aggregate.model_version) != (manifest.name, manifest.version):
        raise InputError(
            f"the aggregate is of {aggregate.model_name} {aggregate.model_version}, the "
            f"manifest of {manifest.label}: measure reports against their own model's reference"
        )
    detector = detector or DriftDetector()
    reference = manifest.reference
    sketches = {f.name: f for f in aggregate.features}
    features: list[FeatureDrift] = []
    for profile in reference.features:
        sketch = sketches.get(profile.name)
        if sketch is None:
            raise InputError(
                f"the aggregate lacks the feature {profile.name!r} of {manifest.label}"
            )
        reference_extra = (
            profile.missing if isinstance(profile, NumericProfile) else profile.unknown
        )
        features.append(
            detector.assess(
                profile.name,
                list(profile.counts),
                list(sketch.bins.counts),
                reference_extra=reference_extra,
                current_extra=sketch.missing + sketch.unknown,
                current_out_of_range=sketch.out_of_range,
            )
        )
    scores = aggregate.scores.counts.counts
    scored = sum(scores) > 0
    negatives, positives = labelled_counts(aggregate)
    calls = aggregate.latency.count
    task = None
    if aggregate.task is not None:
        task = task_measures(
            aggregate.task,
            reference.prediction,
            dict(manifest.metrics),
            detector=detector,
            min_labels=min_labels,
        )
    binary = task is None
    return Measures(
        fleet=aggregate.fleet,
        model_name=aggregate.model_name,
        model_version=aggregate.model_version,
        window_start=aggregate.window_start,
        window_end=aggregate.window_end,
        reports=aggregate.reports,
        devices=aggregate.n_devices,
        scored=aggregate.scored,
        failed=aggregate.failed,
        labelled=sum(negatives) + sum(positives),
        features=tuple(features),
        score=score_drift(reference.scores.counts, scores, detector=detector)
        if scored and (binary or _confidence_reference(task, reference.scores.counts))
        else None,
        performance=labelled_performance(negatives, positives, min_labels=min_labels)
        if binary
        else None,
        reference_auroc=float(manifest.metrics.get("auroc", math.nan)),
        reference_average_precision=float(manifest.metrics.get("average_precision", math.nan)),
        reference_performance=labelled_performance(
            reference.scores.by_label[0], reference.scores.by_label[1], min_labels=1
        )
        if binary
        else None,
        expected=expected_performance(scores) if scored and binary else None,
        reference_expected=expected_performance(reference.scores.counts)
        if sum(reference.scores.counts) > 0 and binary
        else None,
        errors=rate(aggregate.failed, aggregate.scored + aggregate.failed),
        latency=Latency(
            calls=calls,
            p50_ms=aggregate.latency.quantile(0.5) * 1000.0 if calls else math.nan,
            p95_ms=aggregate.latency.quantile(0.95) * 1000.0 if calls else math.nan,
        ),
        fairness=fairness_of(aggregate, manifest.schema) if aggregate.segments and binary else (),
        task=task,
    )


def _confidence_reference(task: TaskMeasures | None, reference: Sequence[int]) -> bool:
    """Whether a multi-class model's confidence histogram has a reference to drift from."""
    return task is not None and task.task == "multiclass" and sum(reference) > 0


def _task_summary(task: TaskMeasures | None) -> dict[str, Any]:
    """The task's metrics and prediction drift for :meth:`Measures.summary` (nothing for a
    binary model, whose summary is as it was)."""
    if task is None:
        return {}
    drift = task.prediction_drift
    return {
        "task": task.task,
        **task.metrics(),
        "prediction_drift": None
        if drift is None
        else {"psi": drift.psi, "js": drift.js, "verdict": drift.verdict},
    }


def labelled_performance(
    negatives: Sequence[int], positives: Sequence[int], *, min_labels: int = MIN_LABELS
) -> LabelledPerformance | None:
    """AUROC and AP (with their binning error) of labelled score histograms, or None below
    ``min_labels`` labels or without both classes."""
    n_neg, n_pos = sum(negatives), sum(positives)
    if n_neg + n_pos < min_labels or n_neg == 0 or n_pos == 0:
        return None
    low, high = average_precision_bounds(negatives, positives)
    bins = len(negatives)
    midpoints = [(b + 0.5) / bins for b in range(bins)]
    labelled = n_neg + n_pos
    return LabelledPerformance(
        labelled=labelled,
        positives=n_pos,
        positive_rate=n_pos / labelled,
        mean_score=sum(m * (a + b) for m, a, b in zip(midpoints, negatives, positives, strict=True))
        / labelled,
        auroc=binned_auroc(negatives, positives),
        auroc_bound=auroc_error_bound(negatives, positives),
        average_precision=binned_average_precision(negatives, positives),
        average_precision_low=low,
        average_precision_high=high,
    )


class AggregateSource(Protocol):
    """What :func:`scopes` needs of a store (:class:`~edgefleet.central.monitor.store.MonitorStore`
    has it)."""

    def aggregate(
        self,
        fleet: str,
        *,
        model_version: str | None = None,
        cohort: str | None = None,
        device_group: str | None = None,
        device_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Aggregate | None: ...

    def device_ids(
        self,
        fleet: str,
        *,
        model_version: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[str]: ...


def scopes(
    store: AggregateSource,
    fleet: str,
    model_version: str,
    since: float | None = None,
    until: float | None = None,
    *,
    levels: Sequence[str] = SCOPE_LEVELS,
) -> Iterator[tuple[str, Aggregate]]:
    """``(scope, aggregate)`` for the fleet (``"fleet"``), each cohort (``"cohort:canary"``),
    each device group (``"group:NAME"``) and each device (``"device:ID"``) that reported on
    ``model_version`` with a window ending in ``[since, until)``; only the ``levels`` asked
    for. Nothing when no report matched.

    Every scope is one merge of the same sketches, so the fleet is exactly the sum of its
    devices, and a device's verdict is as trustworthy as its count allows (the minimum
    count turns small scopes into ``insufficient_data``)."""
    unknown = set(levels) - set(SCOPE_LEVELS)
    if unknown:
        raise InputError(
            f"unknown scope level(s) {', '.join(sorted(unknown))}; use {', '.join(SCOPE_LEVELS)}"
        )
    whole = store.aggregate(fleet, model_version=model_version, since=since, until=until)
    if whole is None:
        return
    if "fleet" in levels:
        yield "fleet", whole
    parts: list[tuple[str, str, Callable[[], Iterable[str]]]] = [
        ("cohort", "cohort", lambda: whole.cohorts),
        ("group", "device_group", lambda: whole.device_groups),
        # From the raw reports: a merge read from rollups counts its devices, past a few
        # hundred without listing them (edge/distinct.py).
        (
            "device",
            "device_id",
            lambda: store.device_ids(fleet, model_version=model_version, since=since, until=until),
        ),
    ]
    for level, keyword, members in parts:
        if level not in levels:
            continue
        for member in sorted(members()):
            filters: dict[str, Any] = {
                "model_version": model_version,
                "since": since,
                "until": until,
                keyword: member,
            }
            part = store.aggregate(fleet, **filters)
            if part is not None:
                yield f"{level}:{member}", part


def _performance_dict(performance: LabelledPerformance | None) -> dict[str, Any] | None:
    if performance is None:
        return None
    return {
        "labelled": performance.labelled,
        "positives": performance.positives,
        "positive_rate": performance.positive_rate,
        "mean_score": performance.mean_score,
        "calibration_gap": performance.calibration_gap,
        "auroc": performance.auroc,
        "auroc_bound": performance.auroc_bound,
        "average_precision": performance.average_precision,
        "average_precision_low": performance.average_precision_low,
        "average_precision_high": performance.average_precision_high,
    }


def _expected_dict(expected: ExpectedPerformance | None) -> dict[str, Any] | None:
    if expected is None:
        return None
    return {
        "n": expected.n,
        "positive_rate": expected.positive_rate,
        "auroc": expected.auroc,
        "average_precision": expected.average_precision,
    }


def _clean_dict(value: dict[str, Any]) -> dict[str, Any]:
    cleaned: dict[str, Any] = _clean(value)
    return cleaned


def _clean(value: Any) -> Any:
    """JSON-able: NaN and infinities become None (JSON has no NaN), tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def labelled_counts(aggregate: Aggregate) -> tuple[list[int], list[int]]:
    """Negatives and positives per score bin: outcomes that came back in a later window
    plus labels known at scoring time."""
    outcomes, scores = aggregate.outcomes.by_label, aggregate.scores.by_label
    return (
        [a + b for a, b in zip(outcomes[0].counts, scores[0].counts, strict=True)],
        [a + b for a, b in zip(outcomes[1].counts, scores[1].counts, strict=True)],
    )
