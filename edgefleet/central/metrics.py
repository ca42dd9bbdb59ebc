"""Holdout metrics of a binary classifier."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

CALIBRATION_BINS = 10


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
        "log_loss": float(log_loss(labels, np.clip(scores, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "brier": float(brier_score_loss(labels, scores)),
        "calibration_error": expected_calibration_error(labels, scores),
        "positive_rate": float(labels.mean()),
        "rows": float(len(labels)),
    }
