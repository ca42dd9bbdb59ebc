"""Does a retrained candidate beat the running model? A paired bootstrap on the same rows.

Both models score the same held-out newest labelled rows; the rows are resampled with
replacement ``resamples`` times and, on each resample, the difference of the metric the rules
name is taken on *the same* rows for both models. The percentile interval of those
differences is the evidence: pairing removes the variation both models share (which rows
happen to be hard), so the interval is far narrower than two separate intervals would be.

The candidate *helps* when the interval's lower bound of its gain is above ``min_gain``
(AUROC: candidate - running; log loss: running - candidate, so that a gain is positive for
both), or, when a calibration alert asked for the new model, when it fixes the calibration gap
the running model shows on these rows (running gap at least ``calibration_gap``, the
candidate's below it) without ranking worse with confidence. Otherwise retraining does not
help: the loop escalates to a person (:mod:`edgefleet.central.monitor.escalation`).

>>> rng = np.random.default_rng(0)
>>> labels = rng.integers(0, 2, 2000)
>>> noise = rng.normal(0, 1, 2000)
>>> weak, strong = labels + 2.0 * noise, labels + 0.5 * noise
>>> judge_benefit(labels, running=weak, candidate=strong, scores_are_probabilities=False).helps
True
>>> judge_benefit(labels, running=strong, candidate=weak, scores_are_probabilities=False).helps
False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgefleet.errors import DataError, InputError

Metric = Literal["auroc", "log_loss", "rmse"]
METRICS: tuple[Metric, ...] = ("auroc", "log_loss", "rmse")
"""AUROC and log loss of a classifier (a multi-class one's scores are ``[N, K]``
probabilities, its labels class indices: log loss only); RMSE of a regressor (labels are
the true values). The loop judges each task by :func:`.task_measures.judging_metric`."""
_EPSILON = 1e-15

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided percentile interval."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class BenefitJudgement:
    """What the paired comparison found, and whether the candidate helps."""

    metric: Metric
    rows: int
    positives: int
    running: float
    candidate: float
    gain: Interval
    confidence: float
    resamples: int
    min_gain: float
    running_calibration_gap: float
    candidate_calibration_gap: float
    calibration_threshold: float
    calibration_alert: bool
    reason: str

    @property
    def better_with_confidence(self) -> bool:
        return self.gain.low > self.min_gain

    @property
    def fixes_calibration(self) -> bool:
        return (
            self.calibration_alert
            and abs(self.running_calibration_gap) >= self.calibration_threshold
            and abs(self.candidate_calibration_gap) < self.calibration_threshold
            and self.gain.high >= 0.0
        )

    @property
    def helps(self) -> bool:
        return self.better_with_confidence or self.fixes_calibration

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "rows": self.rows,
            "positives": self.positives,
            "running": self.running,
            "candidate": self.candidate,
            "gain": self.gain.to_dict(),
            "confidence": self.confidence,
            "resamples": self.resamples,
            "min_gain": self.min_gain,
            "calibration": {
                "running_gap": self.running_calibration_gap,
                "candidate_gap": self.candidate_calibration_gap,
                "threshold": self.calibration_threshold,
                "alert": self.calibration_alert,
            },
            "better_with_confidence": self.better_with_confidence,
            "fixes_calibration": self.fixes_calibration,
            "helps": self.helps,
            "reason": self.reason,
        }


def auroc(labels: npt.NDArray[Any], scores: npt.NDArray[Any]) -> float:
    """Exact AUROC (Mann-Whitney, ties counted half) of one resample."""
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _average_ranks(values: FloatArray) -> FloatArray:
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Ties share the mean of their ranks.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def log_loss(labels: npt.NDArray[Any], probabilities: npt.NDArray[Any]) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPSILON, 1 - _EPSILON)
    if p.ndim == 2:  # a multi-class model: the probability of each row's true class
        truth = np.asarray(labels).astype(np.int64)
        return float(-np.mean(np.log(p[np.arange(len(truth)), truth])))
    y = np.asarray(labels).astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def rmse(values: npt.NDArray[Any], predictions: npt.NDArray[Any]) -> float:
    errors = np.asarray(values, dtype=np.float64) - np.asarray(predictions, dtype=np.float64)
    return float(np.sqrt(np.mean(errors * errors)))


def metric_value(metric: Metric, labels: npt.NDArray[Any], scores: npt.NDArray[Any]) -> float:
    if metric == "rmse":
        return rmse(labels, scores)
    return auroc(labels, scores) if metric == "auroc" else log_loss(labels, scores)


def gain_of(metric: Metric, running: float, candidate: float) -> float:
    """Positive when the candidate is better, for every metric."""
    return candidate - running if metric == "auroc" else running - candidate


def _labels(metric: Metric, labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Class indices of a classifier's rows, or a regressor's true values."""
    return np.asarray(labels, dtype=np.float64 if metric == "rmse" else np.int64)


def calibration_gap(labels: npt.NDArray[Any], probabilities: npt.NDArray[Any]) -> float:
    """Share of positives minus the mean predicted probability (as the monitor's rule)."""
    return float(np.mean(labels) - np.mean(probabilities))


def paired_gain(
    labels: npt.NDArray[Any],
    running: npt.NDArray[Any],
    candidate: npt.NDArray[Any],
    *,
    metric: Metric = "auroc",
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The candidate's gain over the running model on these rows, with a paired percentile
    bootstrap interval (the same resampled rows for both models)."""
    labels = _labels(metric, labels)
    running = np.asarray(running, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    point = gain_of(
        metric, metric_value(metric, labels, running), metric_value(metric, labels, candidate)
    )
    rng = np.random.default_rng(seed)
    gains = np.empty(resamples, dtype=np.float64)
    for k in range(resamples):
        rows = rng.integers(0, len(labels), len(labels))
        gains[k] = gain_of(
            metric,
            metric_value(metric, labels[rows], running[rows]),
            metric_value(metric, labels[rows], candidate[rows]),
        )
    gains = gains[np.isfinite(gains)]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(gains, [tail, 100 - tail])
    return Interval(float(point), float(low), float(high))


def judge_benefit(
    labels: npt.NDArray[Any],
    *,
    running: npt.NDArray[Any],
    candidate: npt.NDArray[Any],
    metric: Metric = "auroc",
    min_gain: float = 0.0,
    confidence: float = 0.95,
    resamples: int = 1000,
    calibration_threshold: float = 0.05,
    calibration_alert: bool = True,
    seed: int = 0,
    scores_are_probabilities: bool = True,
) -> BenefitJudgement:
    """Does ``candidate`` help over ``running`` on these labelled rows? (module docstring)"""
    _check_inputs(labels, running, candidate, metric, confidence, resamples)
    labels = _labels(metric, labels)
    binary = metric != "rmse" and np.ndim(running) == 1
    gain = paired_gain(
        labels,
        running,
        candidate,
        metric=metric,
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )
    gaps = (
        (calibration_gap(labels, running), calibration_gap(labels, candidate))
        if scores_are_probabilities and binary
        else (0.0, 0.0)
    )
    judgement = BenefitJudgement(
        metric=metric,
        rows=len(labels),
        positives=int(labels.sum()) if binary else 0,
        running=metric_value(metric, labels, np.asarray(running, dtype=np.float64)),
        candidate=metric_value(metric, labels, np.asarray(candidate, dtype=np.float64)),
        gain=gain,
        confidence=confidence,
        resamples=resamples,
        min_gain=min_gain,
        running_calibration_gap=gaps[0],
        candidate_calibration_gap=gaps[1],
        calibration_threshold=calibration_threshold,
        calibration_alert=calibration_alert,
        reason="",
    )
    return _with_reason(judgement)


def _with_reason(judgement: BenefitJudgement) -> BenefitJudgement:
    gain = judgement.gain
    interval = (
        f"{judgement.metric} gain {gain.value:+.4f}, {judgement.confidence:.0%} interval "
        f"[{gain.low:+.4f}, {gain.high:+.4f}] on {judgement.rows:,} rows"
    )
    if judgement.better_with_confidence:
        reason = f"better with confidence: {interval} (above {judgement.min_gain})"
    elif judgement.fixes_calibration:
        reason = (
            f"fixes calibration: gap {judgement.running_calibration_gap:+.3f} -> "
            f"{judgement.candidate_calibration_gap:+.3f} (threshold "
            f"{judgement.calibration_threshold}); {interval}"
        )
    else:
        reason = f"retraining does not help: {interval}, not above {judgement.min_gain}"
    return BenefitJudgement(**{**judgement.__dict__, "reason": reason})


def _check_inputs(
    labels: npt.NDArray[Any],
    running: npt.NDArray[Any],
    candidate: npt.NDArray[Any],
    metric: str,
    confidence: float,
    resamples: int,
) -> None:
    if metric not in METRICS:
        raise InputError(f"benefit metric {metric!r}: choose one of {', '.join(METRICS)}")
    if not 0.5 <= confidence < 1:
        raise InputError(f"confidence must be in [0.5, 1), not {confidence!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise InputError(f"resamples must be a whole number >= 100, not {resamples!r}")
    if not len(labels) == len(running) == len(candidate):
        raise InputError("labels and both models' scores must have one value per row")
    if metric != "rmse" and len(set(np.asarray(labels).tolist())) < 2:
        raise DataError("the comparison rows hold only one class: cannot compare models")
