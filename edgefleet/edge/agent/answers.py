"""What a device answers for a scored record, and what it accepts as the true outcome, per
task (docs/architecture.md §2).

    binary      {"id", "probability", "label", "model_version"}   probability of classes[1]
    multiclass  {"id", "label", "probabilities": {class: p, ...}, "model_version"}
    regression  {"id", "value", "model_version"}

A binary answer is what it always was. A classifier whose outputs are decision scores
(``schema.outputs == "decision"``: LinearSVC, a hinge-loss SGDClassifier) answers ``score``
and ``scores`` in place of ``probability`` and ``probabilities``: the values are the same
map of its decision function into (0, 1), and are not probabilities. An outcome is a class
label (a binary model also takes 0/1 and true/false) or, for a regressor, a finite number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.edge.schema import FeatureSchema
from edgefleet.errors import InputError

Outcome = str | int | float | bool


@dataclass(frozen=True)
class Prediction:
    """One scored record. Fields a task does not use are None and left out of
    :meth:`to_dict`."""

    id: str
    model_version: str
    label: str | None = None
    """The predicted class (classification)."""
    probability: float | None = None
    """P(``classes[1]``) of a binary model."""
    probabilities: dict[str, float] | None = None
    """P(each class) of a multi-class model, in schema class order."""
    value: float | None = None
    """A regressor's predicted value."""
    score: float | None = None
    """The positive class's score of a binary decision-function model."""
    scores: dict[str, float] | None = None
    """Each class's score of a multi-class decision-function model."""

    def to_dict(self) -> dict[str, Any]:
        fields = {
            "id": self.id,
            "probability": self.probability,
            "probabilities": self.probabilities,
            "score": self.score,
            "scores": self.scores,
            "label": self.label,
            "value": self.value,
            "model_version": self.model_version,
        }
        return {k: v for k, v in fields.items() if v is not None}


def answers(
    schema: FeatureSchema,
    version: str,
    outputs: npt.NDArray[Any],
    identifiers: Sequence[str],
) -> list[Prediction]:
    """The predictions of a batch from the model's outputs ``[N, n_outputs]``."""
    if schema.task == "regression":
        return [
            Prediction(i, version, value=float(v))
            for i, v in zip(identifiers, outputs[:, 0], strict=True)
        ]
    if schema.task == "binary":
        # The decision threshold of a binary answer is P(classes[1]) >= 0.5, as before (for
        # a decision-function model: its decision value >= 0, scikit-learn's predict).
        scores = schema.scores_only
        return [
            Prediction(
                i,
                version,
                label=schema.classes[int(p >= 0.5)],
                probability=None if scores else float(p),
                score=float(p) if scores else None,
            )
            for i, p in zip(identifiers, outputs[:, 1], strict=True)
        ]
    labels = [schema.classes[int(k)] for k in np.argmax(outputs, axis=1)]
    return [
        _multiclass(schema, i, version, label, row)
        for i, label, row in zip(identifiers, labels, outputs, strict=True)
    ]


def _multiclass(
    schema: FeatureSchema, identifier: str, version: str, label: str, row: npt.NDArray[Any]
) -> Prediction:
    by_class = {c: float(p) for c, p in zip(schema.classes, row, strict=True)}
    if schema.scores_only:
        return Prediction(identifier, version, label=label, scores=by_class)
    return Prediction(identifier, version, label=label, probabilities=by_class)


def label_index(label: Outcome, classes: Sequence[str]) -> int:
    """The class index of an outcome of a classifier: a class label, or for a binary
    model 0/1 and true/false too."""
    if len(classes) == 2 and (isinstance(label, bool) or label in (0, 1)):
        return int(label)
    if isinstance(label, str) and label in classes:
        return list(classes).index(label)
    allowed = f"{list(classes)}" + (" (or 0/1)" if len(classes) == 2 else "")
    raise InputError(f"label {label!r} is not one of {allowed}")


def outcome_value(label: Outcome, schema: FeatureSchema) -> float:
    """The true value of a regressor's outcome: a finite number (a numeric string is
    taken too, as an app may send one)."""
    if isinstance(label, bool):
        raise InputError(f"the outcome of a regression model is a number, not {label!r}")
    try:
        value = float(label)
    except (TypeError, ValueError):
        raise InputError(
            f"the outcome of a regression model is a number ({schema.target}), not {label!r}"
        ) from None
    if not math.isfinite(value):
        raise InputError(f"the outcome must be a finite number, not {label!r}")
    return value
