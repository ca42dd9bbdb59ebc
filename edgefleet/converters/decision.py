"""Classifiers that give a decision function and no probabilities (docs/architecture.md §2,
"Decision-function models"): ``LinearSVC`` and ``SGDClassifier`` with a loss other than
``log_loss`` / ``modified_huber``.

The model contract's outputs are ``[N, n_outputs]`` values in (0, 1) that sum to 1. Such a
model outputs a monotone map of its decision function ``d`` into that range: binary
``[1 - sigmoid(d), sigmoid(d)]``, multi-class the softmax of the per-class decision values.
The map keeps the ranking (AUROC, average precision) and the argmax (accuracy, labels) of
``d`` exactly, and it is what a ``LogisticRegression`` with the same coefficients answers, so
the rebuilt pipeline carries that surrogate and every converter and parity gate takes it as
it takes a logistic regression. The outputs are scores, not probabilities: the schema says
so (``FeatureSchema.outputs = "decision"``) and calibration measures are not computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
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


def probability_surrogate(estimator: Any) -> LogisticRegression:
    """A fitted ``LogisticRegression`` whose ``decision_function`` is ``estimator``'s and
    whose ``predict_proba`` is therefore :func:`decision_outputs` of it (binary: the
    logistic of the positive class's score; multi-class: the softmax, scikit-learn's
    multinomial ``predict_proba``)."""
    surrogate = LogisticRegression()
    surrogate.coef_ = np.array(estimator.coef_, dtype=np.float64)
    surrogate.intercept_ = np.atleast_1d(np.array(estimator.intercept_, dtype=np.float64))
    surrogate.classes_ = np.array(estimator.classes_)
    surrogate.n_features_in_ = int(surrogate.coef_.shape[1])
    return surrogate
