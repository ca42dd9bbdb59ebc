"""Which data should a candidate learn from? Chosen by validation, not by habit.

Three training windows compete (``reference`` and ``both`` only when the loop knows the
running model's training data):

=========  ===================================================================================
window     rows
=========  ===================================================================================
newest     the newest labelled rows alone: what the fleet sees now, but few of them
reference  the running model's training data: many rows, none of them after the drift
both       both, with recency weights: the newest rows together weigh ``recency`` of the total
=========  ===================================================================================

Each is fitted on the *fit* part of the newest rows (plus the reference where it applies)
and scored on the *validation* part, rows no window trained on; the best wins and is
refitted on all the newest rows the loop may train on. The score is the metric the rules name
for a binary classifier (AUROC or log loss of P(positive)), and the task's judging metric
(:func:`~edgefleet.central.monitor.task_measures.judging_metric`: multi-class log loss, RMSE)
of the model's outputs otherwise. A model whose estimator takes no sample weights cannot
weigh the ``both`` window, which then does not compete (:mod:`~edgefleet.central.monitor.
refit`). The rows the
candidate is finally compared on (:mod:`edgefleet.central.monitor.benefit`) are held out of
all of this, so choosing the window does not flatter the candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.model_selection import train_test_split

from edgefleet.central.data.loader import TrainingTable, encode_features
from edgefleet.central.monitor.benefit import Metric, metric_value
from edgefleet.central.monitor.task_measures import judging_metric
from edgefleet.central.trainer import TrainedModel, model_outputs, train
from edgefleet.errors import InputError

WINDOWS = ("newest", "reference", "both")

Weights = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Window:
    """One candidate training set: its rows and their weights (None: equal)."""

    name: str
    table: TrainingTable
    weights: Weights | None = None


@dataclass(frozen=True)
class WindowChoice:
    """The chosen window and each window's validation score, as evidence."""

    chosen: str
    metric: Metric
    scores: Mapping[str, float]
    validation_rows: int
    note: str = ""
    """Why a window did not compete (an estimator without sample weights), if one did not."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "metric": self.metric,
            "validation": dict(self.scores),
            "validation_rows": self.validation_rows,
            **({"note": self.note} if self.note else {}),
        }


def subset(table: TrainingTable, rows: Any) -> TrainingTable:
    return TrainingTable(
        features=table.features.iloc[rows].reset_index(drop=True),
        labels=table.labels[rows],
        schema=table.schema,
    )


def concat(first: TrainingTable, second: TrainingTable) -> TrainingTable:
    return TrainingTable(
        features=pd.concat([first.features, second.features], ignore_index=True),
        labels=np.concatenate([first.labels, second.labels]),
        schema=first.schema,
    )


def split(table: TrainingTable, share: float, seed: int) -> tuple[TrainingTable, TrainingTable]:
    """A split, stratified by class for a classifier: (rest, ``share`` of the rows)."""
    strata = table.labels if table.schema.is_classifier else None
    rest, held = train_test_split(
        np.arange(table.n_rows), test_size=share, random_state=seed, stratify=strata
    )
    return subset(table, rest), subset(table, held)


def recency_weights(reference_rows: int, newest_rows: int, recency: float) -> Weights:
    """Weights for reference rows then newest rows: the newest weigh ``recency`` of the
    total, and the mean weight is 1 (so estimators' defaults mean what they did)."""
    total = reference_rows + newest_rows
    weights = np.concatenate(
        [
            np.full(reference_rows, (1 - recency) * total / reference_rows),
            np.full(newest_rows, recency * total / newest_rows),
        ]
    )
    return weights


def windows_of(
    newest: TrainingTable,
    reference: TrainingTable | None,
    *,
    recency: float = 0.5,
    weighable: bool = True,
) -> list[Window]:
    """The windows that can compete (module docstring); ``both`` only if ``weighable``."""
    if not 0 < recency < 1:
        raise InputError(f"recency must be between 0 and 1, not {recency!r}")
    if reference is None:
        return [Window("newest", newest)]
    windows = [Window("newest", newest), Window("reference", reference)]
    if weighable:
        weights = recency_weights(reference.n_rows, newest.n_rows, recency)
        windows.append(Window("both", concat(reference, newest), weights))
    return windows


NOT_WEIGHABLE = (
    "the estimator takes no sample weights, so the 'both' window (recency weights) cannot "
    "weigh its rows and did not compete"
)


Fit = Callable[[Window], TrainedModel]


def fitter(family: str, params: Mapping[str, Any], seed: int) -> Fit:
    """Fits a window like the running version: its family and parameters."""

    def fit(window: Window) -> TrainedModel:
        return train(
            window.table, family, seed=seed, params=dict(params), sample_weight=window.weights
        )

    return fit


def choose_window(
    newest: TrainingTable,
    reference: TrainingTable | None,
    fit: Fit,
    *,
    metric: Metric = "auroc",
    validation_share: float = 1 / 3,
    recency: float = 0.5,
    seed: int = 0,
    weighable: bool = True,
) -> WindowChoice:
    """Fit every window on part of ``newest`` (with the reference where it applies) and
    score it on the rest; the best wins (module docstring). ``metric`` is a binary model's;
    another task is scored on its judging metric."""
    task = newest.schema.task
    if task != "binary":
        metric = judging_metric(task)[0]
    note = "" if weighable or reference is None else NOT_WEIGHABLE
    if reference is None:
        return WindowChoice("newest", metric, {}, 0)
    fitting, validation = split(newest, validation_share, seed)
    inputs = encode_features(validation.features, validation.schema)
    scores: dict[str, float] = {}
    for window in windows_of(fitting, reference, recency=recency, weighable=weighable):
        scores[window.name] = validation_score(fit(window), inputs, validation, metric)
    pick = max if metric == "auroc" else min
    chosen = pick(scores, key=lambda name: scores[name])
    return WindowChoice(chosen, metric, scores, validation.n_rows, note)


def validation_score(
    model: TrainedModel, inputs: npt.NDArray[np.float32], validation: TrainingTable, metric: Metric
) -> float:
    """``metric`` of the model on the validation rows: of P(positive) for a binary model,
    of the contract's outputs (``[N, K]`` probabilities, or the values) otherwise."""
    schema = validation.schema
    if schema.task == "binary":
        predicted = model.pipeline.predict_proba(inputs)[:, 1]
    else:
        predicted = model_outputs(model.pipeline, schema, inputs)
        predicted = predicted[:, 0] if schema.task == "regression" else predicted
    return metric_value(metric, validation.labels, predicted)


def window_named(
    name: str,
    newest: TrainingTable,
    reference: TrainingTable | None,
    *,
    recency: float = 0.5,
    weighable: bool = True,
) -> Window:
    for window in windows_of(newest, reference, recency=recency, weighable=weighable):
        if window.name == name:
            return window
    raise InputError(f"unknown training window {name!r}; choose one of {', '.join(WINDOWS)}")
