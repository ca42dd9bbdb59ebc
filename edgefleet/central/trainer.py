"""Train a model version: fit the pipeline, measure it on a holdout, and describe the
training data (reference profile) and a set of golden vectors for every runtime to
self-test with."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from edgefleet.central.data.loader import TrainingTable, encode_features
from edgefleet.central.metrics import classification_metrics
from edgefleet.central.pipeline import build_pipeline
from edgefleet.edge.manifest import GoldenVector, Value
from edgefleet.edge.profile import (
    CategoricalProfile,
    FeatureProfile,
    NumericProfile,
    ReferenceProfile,
    ScoreProfile,
    categorical_counts,
    numeric_bin_counts,
    quantile_edges,
    score_histogram,
)
from edgefleet.edge.schema import CategoricalFeature, FeatureSchema, NumericFeature

GOLDEN_HOLDOUT_ROWS = 24
UNSEEN_CATEGORY = "<unseen-category>"


@dataclass(frozen=True)
class TrainedModel:
    pipeline: Pipeline
    schema: FeatureSchema
    family: str
    params: Mapping[str, Any]
    seed: int
    metrics: Mapping[str, float]
    reference: ReferenceProfile
    golden: tuple[GoldenVector, ...]
    holdout_inputs: npt.NDArray[np.float32]
    holdout_labels: npt.NDArray[Any]
    """Class indices in schema order (int8 for binary, as before), or a regressor's target
    values (float64)."""
    train_rows: int

    def golden_inputs(self) -> npt.NDArray[np.float32]:
        return np.array([g.input_values() for g in self.golden], dtype=np.float32)


def train(
    table: TrainingTable,
    family: str,
    *,
    seed: int = 0,
    holdout: float = 0.25,
    params: Mapping[str, Any] | None = None,
    sample_weight: npt.NDArray[np.float64] | None = None,
) -> TrainedModel:
    """Fit ``family`` on ``table`` with a stratified holdout of the given share.
    ``sample_weight`` (one per row of ``table``) weighs the rows in the fit, e.g. newer rows
    above older ones when a retrain mixes both."""
    inputs = encode_features(table.features, table.schema)
    train_index, test_index = train_test_split(
        np.arange(len(inputs)), test_size=holdout, random_state=seed, stratify=table.labels
    )
    pipeline, used_params = build_pipeline(table.schema, family, seed=seed, params=params)
    if sample_weight is None:
        pipeline.fit(inputs[train_index], table.labels[train_index])
    else:
        weights = np.asarray(sample_weight, dtype=np.float64)[train_index]
        pipeline.fit(inputs[train_index], table.labels[train_index], model__sample_weight=weights)
    holdout_inputs = inputs[test_index]
    holdout_labels = table.labels[test_index].astype(np.int8)
    scores = pipeline.predict_proba(holdout_inputs)[:, 1]
    return TrainedModel(
        pipeline=pipeline,
        schema=table.schema,
        family=family,
        params=used_params,
        seed=seed,
        metrics=classification_metrics(holdout_labels, scores),
        reference=reference_profile(table.schema, inputs[train_index], scores, holdout_labels),
        golden=golden_vectors(
            pipeline, table.schema, table.features.iloc[test_index], holdout_labels, seed=seed
        ),
        holdout_inputs=holdout_inputs,
        holdout_labels=holdout_labels,
        train_rows=len(train_index),
    )


def model_outputs(
    pipeline: Any, schema: FeatureSchema, inputs: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """The model contract's outputs (docs/architecture.md §2) of a scikit-learn pipeline:
    ``[N, n_outputs]`` class probabilities, or a regressor's values in one column."""
    if schema.is_classifier:
        return np.asarray(pipeline.predict_proba(inputs), dtype=np.float64)
    return np.asarray(pipeline.predict(inputs), dtype=np.float64).reshape(-1, 1)


def reference_for(
    schema: FeatureSchema,
    train_inputs: npt.NDArray[np.float32],
    outputs: npt.NDArray[Any],
    labels: npt.NDArray[Any],
) -> ReferenceProfile:
    """The reference profile of any task from the holdout's outputs ``[N, n_outputs]``.
    Binary: :func:`reference_profile` of P(classes[1]). Multi-class: the scores are the top
    class's probability, by label "wrong" and "right"; ``prediction`` counts the predicted
    classes. Regression: no scores (empty histograms); ``prediction`` is the histogram of
    the predicted values at their quantiles."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if schema.task == "binary":
        return reference_profile(schema, train_inputs, outputs[:, 1], labels)
    if schema.task == "multiclass":
        predicted = outputs.argmax(axis=1)
        right = (predicted == np.asarray(labels)).astype(np.int8)
        profile = reference_profile(schema, train_inputs, outputs.max(axis=1), right)
        counts, _ = categorical_counts(predicted.astype(np.float64), len(schema.classes))
        prediction: FeatureProfile = CategoricalProfile(
            "prediction", tuple(int(c) for c in counts), 0
        )
    else:
        profile = reference_profile(schema, train_inputs, np.zeros(0), np.zeros(0))
        prediction = numeric_profile("prediction", outputs[:, 0])
    return replace(profile, prediction=prediction)


def numeric_profile(name: str, values: npt.NDArray[Any]) -> NumericProfile:
    """Counts of ``values`` between their deciles, the missing ones, and their range."""
    edges = quantile_edges(values)
    counts, missing = numeric_bin_counts(values, edges)
    finite = values[np.isfinite(values)]
    return NumericProfile(
        name=name,
        edges=tuple(edges),
        counts=tuple(int(c) for c in counts),
        missing=missing,
        minimum=float(finite.min()),
        maximum=float(finite.max()),
    )


def reference_profile(
    schema: FeatureSchema,
    train_inputs: npt.NDArray[np.float32],
    holdout_scores: npt.NDArray[Any],
    holdout_labels: npt.NDArray[Any],
) -> ReferenceProfile:
    """Feature histograms of the training rows and score histograms of the holdout."""
    features: list[FeatureProfile] = []
    for column, feature in enumerate(schema.features):
        values = train_inputs[:, column]
        if isinstance(feature, NumericFeature):
            features.append(numeric_profile(feature.name, values))
        else:
            counts, unknown = categorical_counts(values, len(feature.vocabulary))
            features.append(
                CategoricalProfile(
                    name=feature.name,
                    counts=tuple(int(c) for c in counts),
                    unknown=unknown,
                )
            )
    labels = np.asarray(holdout_labels)
    return ReferenceProfile(
        rows=len(train_inputs),
        features=tuple(features),
        scores=ScoreProfile(
            counts=tuple(int(c) for c in score_histogram(holdout_scores)),
            by_label=(
                tuple(int(c) for c in score_histogram(holdout_scores[labels == 0])),
                tuple(int(c) for c in score_histogram(holdout_scores[labels == 1])),
            ),
        ),
    )


def _record(row: pd.Series) -> dict[str, Value]:
    record: dict[str, Value] = {}
    for name, value in row.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            record[str(name)] = None
        elif isinstance(value, str):
            record[str(name)] = value
        else:
            record[str(name)] = float(value)
    return record


def _edge_cases(
    schema: FeatureSchema, base: dict[str, Value]
) -> list[tuple[str, dict[str, Value]]]:
    """Records that probe the corners of the schema: unseen categories, bounds, missing."""
    cases: list[tuple[str, dict[str, Value]]] = []
    for feature in schema.features:
        if isinstance(feature, CategoricalFeature):
            cases.append(
                (f"unseen category of {feature.name}", {**base, feature.name: UNSEEN_CATEGORY})
            )
            if feature.allow_missing:
                cases.append((f"missing {feature.name}", {**base, feature.name: None}))
            continue
        for label, bound in (("minimum", feature.minimum), ("maximum", feature.maximum)):
            if bound is not None:
                cases.append((f"{label} of {feature.name}", {**base, feature.name: bound}))
        if feature.allow_missing:
            cases.append((f"missing {feature.name}", {**base, feature.name: None}))
    return cases


def golden_vectors(
    pipeline: Pipeline,
    schema: FeatureSchema,
    holdout: pd.DataFrame,
    labels: npt.NDArray[Any],
    *,
    seed: int,
) -> tuple[GoldenVector, ...]:
    """Holdout rows (of every class, for a classifier) plus edge cases, with
    scikit-learn's outputs (:func:`model_outputs`)."""
    rows = [
        (f"holdout row {i}", _record(holdout.iloc[i])) for i in _golden_rows(schema, labels, seed)
    ]
    cases = rows + _edge_cases(schema, rows[0][1])
    frame = pd.DataFrame([record for _, record in cases], columns=list(schema.names))
    for index in schema.numeric_indices():
        name = schema.features[index].name
        frame[name] = pd.to_numeric(frame[name]).astype(np.float64)
    inputs = encode_features(frame, schema)
    outputs = model_outputs(pipeline, schema, inputs)
    return tuple(
        GoldenVector(
            record=record,
            input=tuple(None if math.isnan(v) else float(v) for v in inputs[i]),
            probabilities=tuple(float(p) for p in outputs[i]),
            note=note,
        )
        for i, (note, record) in enumerate(cases)
    )


def _golden_rows(schema: FeatureSchema, labels: npt.NDArray[Any], seed: int) -> list[int]:
    """Which holdout rows become golden vectors: an equal share of each class (at least two
    of each), or any rows of a regressor's holdout."""
    rng = np.random.default_rng(seed)
    if not schema.is_classifier:
        take = min(len(labels), GOLDEN_HOLDOUT_ROWS)
        return sorted(int(i) for i in rng.choice(len(labels), size=take, replace=False))
    picks: list[int] = []
    per_class = max(2, GOLDEN_HOLDOUT_ROWS // len(schema.classes))
    for label in range(len(schema.classes)):
        members = np.flatnonzero(np.asarray(labels) == label)
        take = min(len(members), per_class)
        picks.extend(int(i) for i in rng.choice(members, size=take, replace=False))
    return sorted(picks)
