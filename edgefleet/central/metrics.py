"""Holdout metrics of a model, per task (docs/architecture.md §2): a binary classifier's
ranking and calibration, a multi-class classifier's accuracy, log loss and one-vs-rest
AUROC, a regressor's errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from edgefleet.edge.schema import FeatureSchema

CALIBRATION_BINS = 10
HEADLINE_METRICS = {
    "binary": ("auroc", "average_precision", "log_loss", "brier"),
    "multiclass": ("accuracy", "log_loss", "auroc_macro", "auroc_weighted"),
    "regression": ("mae", "rmse", "r2"),
}
"""The holdout metrics the CLI shows, per task."""
PROBABILITY_FLOOR = 1e-15
CALIBRATION_METRICS = frozenset(("log_loss", "brier", "calibration_error"))
"""Measures of probabilities as probabilities: not computed for a model whose outputs are
decision scores (``schema.outputs == "decision"``), where they would be meaningless (so no
log-loss alert can fire for it either: the holdout has none to compare against)."""
DECISION_NOTE = (
    "outputs are decision-function scores mapped into (0, 1), not probabilities: ranking "
    "and accuracy are the decision function's; log loss, Brier and calibration error are "
    "not computed"
)
"""What a decision-function model's card says of its outputs (CLI, ``inspect``)."""


def expected_calibration_error(labels: npt.NDArray[Any], scores: npt.NDArray[Any]) -> float:
    """Mean |observed rate - mean score| over equal-width score bins, weighted by count."""
    index = np.clip((scores * CALIBRATION_BINS).astype(int), 0, CALIBRATION_BINS - 1)
    total = 0.0
    for b in range(CALIBRATION_BINS):
        members = index == b
        if members.any():
            total += members.sum() * abs(labels[members].mean() - scores[members].mean())
    return float(total / len(scores))


def classification_metrics(labels: npt.NDArray[Any], scores: npt.NDArray[Any]) -> dict[str, float]:
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "log_loss": float(
            log_loss(
                labels, np.clip(scores, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR), labels=[0, 1]
            )
        ),
        "brier": float(brier_score_loss(labels, scores)),
        "calibration_error": expected_calibration_error(labels, scores),
        "positive_rate": float(labels.mean()),
        "rows": float(len(labels)),
    }


def multiclass_metrics(
    labels: npt.NDArray[Any], probabilities: npt.NDArray[Any]
) -> dict[str, float]:
    """``labels``: class indices in schema order; ``probabilities``: ``[N, K]``. AUROC is
    one-vs-rest, averaged over the classes present in ``labels`` (a class absent from the
    holdout has no AUROC), unweighted (macro) and weighted by each class's count."""
    labels = np.asarray(labels).astype(np.int64)
    proba = np.asarray(probabilities, dtype=np.float64)
    n_classes = proba.shape[1]
    clipped = np.clip(proba, PROBABILITY_FLOOR, 1.0)
    metrics = {
        "accuracy": float(accuracy_score(labels, proba.argmax(axis=1))),
        "log_loss": float(
            log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=range(n_classes))
        ),
        "rows": float(len(labels)),
    }
    metrics.update(_ovr_auroc(labels, proba))
    return metrics


def _ovr_auroc(labels: npt.NDArray[np.int64], proba: npt.NDArray[np.float64]) -> dict[str, float]:
    aurocs, weights = [], []
    for k in range(proba.shape[1]):
        positives = labels == k
        if positives.any() and not positives.all():
            aurocs.append(roc_auc_score(positives, proba[:, k]))
            weights.append(int(positives.sum()))
    if not aurocs:
        return {}
    return {
        "auroc_macro": float(np.mean(aurocs)),
        "auroc_weighted": float(np.average(aurocs, weights=weights)),
    }


def regression_metrics(targets: npt.NDArray[Any], values: npt.NDArray[Any]) -> dict[str, float]:
    targets = np.asarray(targets, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    metrics = {
        "mae": float(mean_absolute_error(targets, values)),
        "rmse": float(np.sqrt(mean_squared_error(targets, values))),
        "target_mean": float(targets.mean()),
        "rows": float(len(targets)),
    }
    if len(targets) > 1 and np.ptp(targets) > 0:  # R² is undefined for a constant target
        metrics["r2"] = float(r2_score(targets, values))
    return metrics


def holdout_metrics(
    schema: FeatureSchema, labels: npt.NDArray[Any], outputs: npt.NDArray[Any]
) -> dict[str, float]:
    """The task's metrics from model outputs ``[N, n_outputs]`` and the true labels (class
    indices in schema order, or target values). A decision-function model's card has no
    calibration measures (:data:`CALIBRATION_METRICS`)."""
    if schema.task == "binary":
        metrics = classification_metrics(labels, np.asarray(outputs)[:, 1])
    elif schema.task == "multiclass":
        metrics = multiclass_metrics(labels, outputs)
    else:
        return regression_metrics(labels, outputs)
    if schema.scores_only:
        return {k: v for k, v in metrics.items() if k not in CALIBRATION_METRICS}
    return metrics
