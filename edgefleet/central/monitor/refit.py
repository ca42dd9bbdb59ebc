"""Retraining a model of any task, and one the user brought (docs/architecture.md §14).

A binary classifier edgefleet trained is retrained as it was trained:
:func:`edgefleet.central.trainer.train` rebuilds its family's pipeline
(:func:`~edgefleet.central.monitor.windows.fitter`). Every other running version (a
multi-class or regression model, or any model registered with ``edgefleet register``) is
refitted as it runs: a :func:`sklearn.base.clone` of its registered pipeline (for a brought
model, the contract pipeline :mod:`edgefleet.central.byo.register` rebuilt: same steps,
same hyperparameters, statistics learnt afresh) fitted on the window, its card made with the
helpers registration uses (holdout metrics, reference profile and golden vectors of the
task). The holdout is stratified for a classifier only.

The ``both`` window weighs its rows (:func:`~edgefleet.central.monitor.windows.
recency_weights`) through the final estimator's ``sample_weight``; an estimator that takes
none cannot weigh, so that window does not compete (:func:`weighable`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.base import clone
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import has_fit_parameter

from edgefleet.central.data.loader import TrainingTable, encode_features
from edgefleet.central.metrics import holdout_metrics
from edgefleet.central.monitor.windows import Fit, Window, fitter
from edgefleet.central.pipeline import FAMILIES
from edgefleet.central.registry import ModelVersion
from edgefleet.central.trainer import TrainedModel, golden_vectors, model_outputs, reference_for
from edgefleet.edge.schema import FeatureSchema
from edgefleet.errors import DataError

TRAINER_BLOCKS = frozenset(("num", "cat"))
"""The ColumnTransformer blocks :func:`edgefleet.central.pipeline.build_pipeline` names."""


@dataclass(frozen=True)
class Refitter:
    """How a running version is retrained: its fit, and whether it can weigh rows."""

    fit: Fit
    weighable: bool
    how: str
    """``"trainer"`` (rebuilt by the family's trainer) or ``"clone"`` (its own pipeline)."""


def refitter(running: ModelVersion, seed: int) -> Refitter:
    """The fit for ``running`` (module docstring)."""
    schema = running.load_card().schema
    pipeline = running.load_pipeline()
    if schema.task == "binary" and trained_by_edgefleet(running.family, pipeline):
        return Refitter(fitter(running.family, running.params, seed), True, "trainer")
    return Refitter(
        clone_fitter(pipeline, running.family, running.params, seed), weighable(pipeline), "clone"
    )


def trained_by_edgefleet(family: str, pipeline: Any) -> bool:
    """Whether ``pipeline`` is what edgefleet's trainer builds for ``family``: its
    preprocessing blocks are the trainer's (a brought model's contract pipeline names its
    blocks after the user's)."""
    steps = getattr(pipeline, "named_steps", {})
    prep = steps.get("prep")
    names = {name for name, *_ in getattr(prep, "transformers", [("?",)])}
    return family in FAMILIES and names <= TRAINER_BLOCKS


def weighable(pipeline: Any) -> bool:
    """Whether the pipeline's final estimator takes ``sample_weight`` in its fit."""
    return bool(has_fit_parameter(pipeline.steps[-1][1], "sample_weight"))


def clone_fitter(pipeline: Any, family: str, params: Mapping[str, Any], seed: int) -> Fit:
    """Fits a clone of ``pipeline`` on a window (:func:`refit`)."""

    def fit(window: Window) -> TrainedModel:
        return refit(
            window.table, pipeline, family, params, seed=seed, sample_weight=window.weights
        )

    return fit


def refit(
    table: TrainingTable,
    pipeline: Any,
    family: str,
    params: Mapping[str, Any],
    *,
    seed: int = 0,
    holdout: float = 0.25,
    sample_weight: npt.NDArray[np.float64] | None = None,
) -> TrainedModel:
    """A clone of ``pipeline`` fitted on ``table`` less a holdout of ``holdout`` of its rows
    (stratified for a classifier), measured on that holdout like a registered model."""
    schema = table.schema
    inputs = encode_features(table.features, schema)
    strata = table.labels if schema.is_classifier else None
    train_index, test_index = train_test_split(
        np.arange(len(inputs)), test_size=holdout, random_state=seed, stratify=strata
    )
    model = _fit_clone(
        pipeline,
        schema,
        inputs[train_index],
        table.labels[train_index],
        None if sample_weight is None else np.asarray(sample_weight)[train_index],
    )
    labels = table.labels[test_index]
    if schema.task == "binary":
        labels = labels.astype(np.int8)
    outputs = model_outputs(model, schema, inputs[test_index])
    return TrainedModel(
        pipeline=model,
        schema=schema,
        family=family,
        params=dict(params),
        seed=seed,
        metrics=holdout_metrics(schema, labels, outputs),
        reference=reference_for(schema, inputs[train_index], outputs, labels),
        golden=golden_vectors(model, schema, table.features.iloc[test_index], labels, seed=seed),
        holdout_inputs=inputs[test_index],
        holdout_labels=labels,
        train_rows=len(train_index),
    )


def _fit_clone(
    pipeline: Any,
    schema: FeatureSchema,
    inputs: npt.NDArray[np.float32],
    labels: npt.NDArray[Any],
    weights: npt.NDArray[Any] | None,
) -> Any:
    """A fitted clone; a classifier must have seen every class of the schema, or its
    outputs would not be the contract's ``[N, K]``."""
    if schema.is_classifier:
        seen = len(np.unique(labels))
        if seen != len(schema.classes):
            raise DataError(
                f"the training window holds {seen} of the model's {len(schema.classes)} "
                "classes: retraining needs labelled rows of every class (more labelled data, "
                "or a reference source with --reference-data)"
            )
    model = clone(pipeline)
    extra = {} if weights is None else {f"{model.steps[-1][0]}__sample_weight": weights}
    model.fit(inputs, labels, **extra)
    return model
