"""The measures of a multi-class or regression model, from the merged task sketches
(docs/architecture.md §7c): what :func:`edgefleet.central.monitor.measures.measure` adds for a
model that is not a binary classifier.

Multi-class (:class:`ClassPerformance`), from a
:class:`~edgefleet.edge.tasksketch.MulticlassSketch`:

- accuracy (the confusion counts' trace over their total) and log loss (the exact sum of
  ``-log p(true)`` over the labelled rows): exact, equal to scikit-learn's ``accuracy_score``
  and ``log_loss`` on the same rows up to float rounding of the sum (relative 1e-12 at most);
- macro and prevalence-weighted one-vs-rest AUROC, scikit-learn's
  ``roc_auc_score(multi_class="ovr", average="macro" | "weighted")``, from each class's
  binned P(k) histograms: each class's AUROC is within
  :func:`~edgefleet.central.monitor.quality.auroc_error_bound` of the raw scores' value, so
  the macro one within the mean of those bounds and the weighted one within their
  prevalence-weighted mean (``auroc_bound`` and ``auroc_weighted_bound``). Classes with no
  labelled row, or nothing but, have no AUROC and are left out of both averages (scikit-learn
  refuses such a set).

Regression (:class:`RegressionPerformance`), from a
:class:`~edgefleet.edge.tasksketch.RegressionSketch`'s exact sums over the labelled rows:
``MAE = sum|r| / n``, ``RMSE = sqrt(sum r^2 / n)``, ``mean error = sum r / n`` and ``R^2 = 1 -
sum r^2 / (sum y^2 - (sum y)^2 / n)`` (scikit-learn's ``r2_score``, including its 1.0 / 0.0
for a constant target). Float sums, so equal to scikit-learn up to rounding: relative 1e-12
for MAE and RMSE; for R^2 the cancellation in ``sum y^2 - (sum y)^2 / n`` adds about
``1e-16 * mean(y)^2 / var(y)`` (a target far from zero relative to its spread loses digits).

Prediction drift, the label-free proxy (:func:`prediction_drift`): the class mix (counts of
each predicted class) or the prediction histogram (in the bins of the reference's, the
holdout's quantiles) against the reference profile's ``prediction``, judged like a
feature's drift. The reference metrics are the manifest's holdout metrics of the same names
(:mod:`edgefleet.central.metrics`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from edgefleet.central.monitor.benefit import Metric
from edgefleet.central.monitor.drift import DriftDetector, FeatureDrift
from edgefleet.central.monitor.quality import auroc_error_bound, binned_auroc
from edgefleet.edge.profile import CategoricalProfile, FeatureProfile, NumericProfile
from edgefleet.edge.tasksketch import MulticlassSketch, RegressionSketch, TaskSketch

__all__ = [
    "TASK_METRICS",
    "ClassPerformance",
    "RegressionPerformance",
    "TaskMeasures",
    "class_performance",
    "judging_metric",
    "prediction_drift",
    "regression_performance",
    "task_measures",
]

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auroc", "average_precision"),
    "multiclass": ("accuracy", "log_loss", "auroc_macro", "auroc_weighted"),
    "regression": ("mae", "rmse", "r2"),
}
"""The quality metrics each task is measured by (names as in :meth:`TaskMeasures.metrics`)."""

LOWER_IS_BETTER = frozenset(("log_loss", "mae", "rmse"))
"""Metrics where a smaller value is the better model."""


@dataclass(frozen=True)
class ClassPerformance:
    """A multi-class model's quality on its labelled rows (see the module docstring)."""

    labelled: int
    accuracy: float
    log_loss: float
    auroc_macro: float
    auroc_bound: float
    auroc_weighted: float
    auroc_weighted_bound: float
    class_auroc: tuple[float, ...]
    """Per class (NaN for a class without both kinds of rows)."""
    class_share: tuple[float, ...]
    """Per class, its share of the labelled rows."""
    log_loss_se: float = math.nan
    """Standard error of ``log_loss`` (the rows' losses' spread over sqrt(n))."""

    def standard_error(self, metric: str) -> float:
        """The standard error of ``metric`` (log loss and accuracy; NaN for the others)."""
        if metric == "log_loss":
            return self.log_loss_se
        if metric == "accuracy":
            return math.sqrt(self.accuracy * (1 - self.accuracy) / self.labelled)
        return math.nan


@dataclass(frozen=True)
class RegressionPerformance:
    """A regressor's quality on its labelled rows (see the module docstring)."""

    labelled: int
    mae: float
    rmse: float
    r2: float
    mean_error: float
    """Mean of ``y - prediction``: positive when the model predicts too low."""
    rmse_se: float = math.nan
    """Standard error of ``rmse`` (of the mean squared error, by the delta method)."""

    def standard_error(self, metric: str) -> float:
        """The standard error of ``metric`` (RMSE; NaN for the others)."""
        return self.rmse_se if metric == "rmse" else math.nan


@dataclass(frozen=True)
class TaskMeasures:
    """What a multi-class or regression aggregate measures, beside its reference."""

    task: str
    scored: int
    labelled: int
    performance: ClassPerformance | RegressionPerformance | None
    reference: dict[str, float]
    """The manifest's holdout metrics of the task's names (NaN where it has none)."""
    prediction_drift: FeatureDrift | None
    """Class mix or prediction histogram against the reference's (None without one)."""
    class_mix: tuple[float, ...] = ()
    """Multi-class: each class's share of the predictions."""

    def metrics(self) -> dict[str, float]:
        """The task's metrics by name (:data:`TASK_METRICS`), NaN below the label floor."""
        return _metrics(self.task, self.performance)

    def reference_metrics(self) -> dict[str, float]:
        return {name: self.reference.get(name, math.nan) for name in TASK_METRICS[self.task]}

    def to_dict(self) -> dict[str, Any]:
        drift = self.prediction_drift
        return {
            "task": self.task,
            "scored": self.scored,
            "labelled": self.labelled,
            "metrics": self.metrics(),
            "reference_metrics": self.reference_metrics(),
            "bounds": _bounds(self.performance),
            "performance": None
            if self.performance is None
            else dataclasses.asdict(self.performance),
            "prediction_drift": None if drift is None else drift.to_dict(name_key="name"),
            "class_mix": list(self.class_mix),
        }


def _metrics(
    task: str, performance: ClassPerformance | RegressionPerformance | None
) -> dict[str, float]:
    names = TASK_METRICS[task]
    if performance is None:
        return dict.fromkeys(names, math.nan)
    return {name: float(getattr(performance, name)) for name in names}


def _bounds(performance: ClassPerformance | RegressionPerformance | None) -> dict[str, float]:
    if isinstance(performance, ClassPerformance):
        return {
            "auroc_macro": performance.auroc_bound,
            "auroc_weighted": performance.auroc_weighted_bound,
        }
    return {}


def class_performance(sketch: MulticlassSketch, *, min_labels: int = 1) -> ClassPerformance | None:
    """Accuracy, log loss and OvR AUROC of a multi-class sketch; None below ``min_labels``."""
    labelled = sketch.labelled
    if labelled < max(min_labels, 1):
        return None
    aurocs: list[float] = []
    bounds: list[float] = []
    shares = [row.total / labelled for row in sketch.confusion]
    for negatives, positives in zip(sketch.negatives, sketch.positives, strict=True):
        if negatives.total == 0 or positives.total == 0:
            aurocs.append(math.nan)
            bounds.append(math.nan)
            continue
        aurocs.append(binned_auroc(negatives.counts, positives.counts))
        bounds.append(auroc_error_bound(negatives.counts, positives.counts))
    present = [i for i, a in enumerate(aurocs) if not math.isnan(a)]
    weight = sum(shares[i] for i in present)
    return ClassPerformance(
        labelled=labelled,
        accuracy=sketch.correct / labelled,
        log_loss=sketch.log_loss / labelled,
        auroc_macro=_mean([aurocs[i] for i in present]),
        auroc_bound=_mean([bounds[i] for i in present]),
        auroc_weighted=sum(aurocs[i] * shares[i] for i in present) / weight if weight else math.nan,
        auroc_weighted_bound=sum(bounds[i] * shares[i] for i in present) / weight
        if weight
        else math.nan,
        class_auroc=tuple(aurocs),
        class_share=tuple(shares),
        log_loss_se=_mean_error(sketch.log_loss, sketch.log_loss_squares, labelled),
    )


def _mean_error(total: float, squares: float, n: int) -> float:
    """Standard error of the mean of ``n`` values from their sum and sum of squares."""
    mean = total / n
    return math.sqrt(max(squares / n - mean * mean, 0.0) / n)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def regression_performance(
    sketch: RegressionSketch, *, min_labels: int = 1
) -> RegressionPerformance | None:
    """MAE, RMSE, R² and the mean error of a regression sketch; None below ``min_labels``."""
    n = sketch.labelled
    if n < max(min_labels, 1):
        return None
    total = sketch.sum_y2 - sketch.sum_y * sketch.sum_y / n
    # A constant target: scikit-learn's answer (force_finite), 1 if perfect, else 0.
    constant = 1.0 if sketch.sum_r2 == 0 else 0.0
    r2 = 1.0 - sketch.sum_r2 / total if total > 0 else constant
    rmse = math.sqrt(sketch.sum_r2 / n)
    mse_se = _mean_error(sketch.sum_r2, sketch.sum_r4, n)
    return RegressionPerformance(
        labelled=n,
        mae=sketch.sum_abs_r / n,
        rmse=rmse,
        r2=r2,
        mean_error=sketch.sum_r / n,
        rmse_se=mse_se / (2 * rmse) if rmse > 0 else 0.0,
    )


def prediction_drift(
    current: TaskSketch,
    reference: FeatureProfile | None,
    detector: DriftDetector | None = None,
) -> FeatureDrift | None:
    """The label-free proxy: the class mix (multi-class) or the prediction histogram
    (regression) against the reference profile's ``prediction``; None without one that fits
    (another class count or bins), or with nothing scored."""
    detector = detector or DriftDetector()
    if reference is None or current.scored == 0 or sum(reference.counts) == 0:
        return None
    if isinstance(current, MulticlassSketch) and isinstance(reference, CategoricalProfile):
        name, counts, extra = "class_mix", current.predicted.counts, reference.unknown
    elif isinstance(current, RegressionSketch) and isinstance(reference, NumericProfile):
        name, counts, extra = "prediction", current.predictions.counts, reference.missing
    else:
        return None
    if len(reference.counts) != len(counts):
        return None
    return detector.assess(name, list(reference.counts), list(counts), reference_extra=extra)


def task_measures(
    current: TaskSketch,
    reference: FeatureProfile | None,
    metrics: dict[str, float],
    *,
    detector: DriftDetector | None = None,
    min_labels: int = 1,
) -> TaskMeasures:
    """Everything :func:`edgefleet.central.monitor.measures.measure` reports of a task
    sketch, against the reference profile's ``prediction`` and the manifest's ``metrics``."""
    names = TASK_METRICS[current.kind]
    return TaskMeasures(
        task=current.kind,
        scored=current.scored,
        labelled=current.labelled,
        performance=_performance(current, min_labels),
        reference={name: float(metrics[name]) for name in names if name in metrics},
        prediction_drift=prediction_drift(current, reference, detector),
        class_mix=tuple(c / current.scored for c in current.predicted.counts)
        if isinstance(current, MulticlassSketch) and current.scored
        else (),
    )


def _performance(
    sketch: TaskSketch, min_labels: int
) -> ClassPerformance | RegressionPerformance | None:
    if isinstance(sketch, MulticlassSketch):
        return class_performance(sketch, min_labels=min_labels)
    return regression_performance(sketch, min_labels=min_labels)


def judging_metric(task: str) -> tuple[Metric, bool]:
    """The metric the retrain loop judges a model of ``task`` by, and whether lower is
    better: AUROC (binary), log loss (multi-class), RMSE (regression)."""
    names: dict[str, Metric] = {"binary": "auroc", "multiclass": "log_loss", "regression": "rmse"}
    name = names[task]
    return name, name in LOWER_IS_BETTER
