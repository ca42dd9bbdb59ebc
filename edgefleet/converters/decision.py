"""Classifiers that give a decision function and no probabilities (docs/architecture.md §2,
"Decision-function models"): ``LinearSVC`` and ``SGDClassifier`` with a loss other than
``log_loss`` / ``modified_huber``.

The model contract's outputs are ``[N, n_outputs]`` values in (0, 1) that sum to 1. Such a
model outputs a monotone map of its decision function ``d`` into that range: binary
``[1 - sigmoid(d), sigmoid(d)]``, multi-class the softmax of the per-class decision values.
The map keeps the ranking (AUROC, average precision) and the argmax (accuracy, labels) of
``d`` exactly, and it is what a ``LogisticRegression`` with the same coefficients answers, so
the rebuilt pipeline carries it as :class:`DecisionScores` (a ``LogisticRegression`` that
holds the user's estimator) and every converter and parity gate takes it as it takes a
logistic regression. The outputs are scores, not probabilities: the schema says
so (``FeatureSchema.outputs = "decision"``) and calibration measures are not computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from edgefleet.converters.ir import outputs

Float64Array = npt.NDArray[np.float64]
DECISION_MODELS = (
    "LinearSVC and SGDClassifier without probabilities (hinge, perceptron, ... losses) "
    "output their decision function mapped into (0, 1) in every format (binary "
    "[1 - sigmoid(d), sigmoid(d)], multi-class softmax): scores that rank and pick the "
    "class, answered as 'score', not probabilities"
)
"""What ``edgefleet formats`` says of decision-function models."""


def gives_decision(estimator: Any) -> bool:
    """Whether a classifier answers only a decision function (no ``predict_proba``)."""
    return hasattr(estimator, "decision_function") and not hasattr(estimator, "predict_proba")


def decision_outputs(decision: Any) -> Float64Array:
    """The contract's outputs of a decision function (``[N]`` binary, ``[N, K]``)."""
    values = np.asarray(decision, dtype=np.float64)
    if values.ndim == 1:
        return outputs("logistic", values[:, None])
    return outputs("softmax", values)


class DecisionScores(LogisticRegression):  # type: ignore[misc]
    """A decision-function classifier as the contract pipeline carries it: a fitted
    ``LogisticRegression`` whose coefficients are ``estimator``'s, so its
    ``decision_function`` is the estimator's and its ``predict_proba`` is
    :func:`decision_outputs` of it (binary: the logistic of the positive class's score;
    multi-class: the softmax, scikit-learn's multinomial ``predict_proba``). Every converter
    reads it as a logistic regression. ``fit`` (retraining a clone) fits a clone of
    ``estimator``, so a retrained model is the user's kind of model, not a logistic
    regression."""

    solver = "lbfgs"  # read by skl2onnx's linear classifier converter

    def __init__(self, estimator: Any = None) -> None:
        self.estimator = estimator

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> DecisionScores:
        fitted = clone(self.estimator).fit(X, y, sample_weight=sample_weight)
        return self.take(fitted)

    def take(self, fitted: Any) -> DecisionScores:
        """Take a fitted estimator's coefficients and classes (nothing is refitted)."""
        self.estimator = fitted
        self.coef_ = np.array(fitted.coef_, dtype=np.float64)
        self.intercept_ = np.atleast_1d(np.array(fitted.intercept_, dtype=np.float64))
        self.classes_ = np.array(fitted.classes_)
        self.n_features_in_ = int(self.coef_.shape[1])
        return self


def probability_surrogate(estimator: Any) -> DecisionScores:
    """``estimator`` (fitted) as the contract pipeline carries it (:class:`DecisionScores`)."""
    return DecisionScores().take(estimator)
