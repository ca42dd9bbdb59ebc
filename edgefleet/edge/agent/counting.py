"""What the agent counts into its report window per task (docs/architecture.md §7c): the
model outputs a multi-class or regression model's sketches need, remembered with each
prediction until its outcome comes back, and the open report window they are counted in.

A binary model counts P(classes[1]) and 0/1 labels, as it always did. A multi-class model
counts every class's probability (its one-vs-rest histograms need them all at the outcome)
and the class index of the outcome; a regressor counts its predicted value and the true one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefleet.edge.agent.answers import Outcome, label_index, outcome_value
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.rollout import Cohort
from edgefleet.edge.schema import FeatureSchema
from edgefleet.edge.shadow import ShadowCounter, record_loss
from edgefleet.edge.sketch_builder import SketchBuilder

Remembered = float | tuple[float, ...]
"""What is remembered of a prediction for its outcome: P(classes[1]), every class's
probability, or the predicted value."""


def window_rows(schema: FeatureSchema, outputs: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """What the report window's sketch builder counts of a batch's outputs ``[N,
    n_outputs]``: P(classes[1]) of a binary model, the outputs themselves otherwise."""
    return outputs[:, 1] if schema.task == "binary" else outputs


def remembered(schema: FeatureSchema, row: np.ndarray[Any, Any]) -> Remembered:
    """What to remember of one record's outputs for its outcome."""
    if schema.task == "binary":
        return float(row[1])
    if schema.task == "multiclass":
        return tuple(float(p) for p in row)
    return float(row[0])


def task_outcome(
    schema: FeatureSchema, score: Remembered, label: Outcome
) -> tuple[list[Any], list[Any]] | None:
    """``(scores, labels)`` to count an outcome of a multi-class or regression model with
    (:meth:`SketchBuilder.add_outcomes`), the label checked; None when ``score`` is not
    what such a model remembers (a scoring service's prediction id carries one number, not
    every class's probability: that outcome cannot be counted)."""
    if schema.task == "multiclass":
        index = label_index(label, schema.classes)
        if not isinstance(score, Sequence) or len(score) != len(schema.classes):
            return None
        return [list(score)], np.asarray([index], dtype=np.int64).tolist()
    value = outcome_value(label, schema)
    if not isinstance(score, float | int):
        return None
    return [float(score)], [value]


def paired_losses(
    schema: FeatureSchema, champion: Remembered, challenger: Remembered, label: Outcome
) -> tuple[float, float] | None:
    """The champion's and the challenger's loss on one labelled record of a multi-class or
    regression model (:func:`edgefleet.edge.shadow.record_loss`); None when what was
    remembered is not that model's outputs (see :func:`task_outcome`)."""
    counted = task_outcome(schema, champion, label)
    if counted is None or task_outcome(schema, challenger, label) is None:
        return None
    truth = counted[1][0]
    task = schema.task
    return record_loss(task, champion, truth), record_loss(task, challenger, truth)


@dataclass
class OpenWindow:
    """The open report window: the sketches of the active model since the last report."""

    builder: SketchBuilder
    manifest: Manifest
    cohort: Cohort
    records: int = 0
    started: float = field(default_factory=time.monotonic)
    shadow: ShadowCounter | None = None
    """The challenger's counts, on a shadow device (docs/architecture.md §17)."""


RememberedPrediction = tuple[Remembered, str, tuple[int, ...], tuple[Remembered, str] | None]


def window_scores(schema: FeatureSchema, outputs: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The one score per record the report's sketches count: P(classes[1]) of a binary
    model; a multi-class model's top probability (its outcomes count as "right" or
    "wrong", the reference profile's split, docs/architecture.md §2); none (0) for a
    regressor, whose value the score histogram cannot hold."""
    if schema.task == "binary":
        return outputs[:, 1]
    if schema.task == "multiclass":
        return np.asarray(outputs.max(axis=1))
    return np.zeros(len(outputs), dtype=np.float32)


def outcome_of(schema: FeatureSchema, label: Outcome) -> int | None:
    """A checked outcome (a class label, or a regressor's finite value) as the 0/1 label
    the binary sketches count; None for the other tasks, whose outcomes are checked here
    and counted by their own sketches."""
    if schema.task == "binary":
        return label_index(label, schema.classes)
    if schema.task == "multiclass":
        label_index(label, schema.classes)
    else:
        outcome_value(label, schema)
    return None
