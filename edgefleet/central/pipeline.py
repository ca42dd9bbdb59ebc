"""The scikit-learn pipeline the trainer fits for each model family.

Input is the model contract's float32 matrix (docs/architecture.md §2), so the pipeline itself
does all encoding: numeric columns are median-imputed (and standardised for the linear
model), categorical codes are one-hot encoded with unknown codes mapped to all zeros.

Tree models get no scaler. Trees are invariant to monotone rescaling, so a scaler changes
none of their predictions, but it makes them fragile across formats: scikit-learn scales
in float64 while ONNX/TFLite/CoreML graphs scale in float32, and one ulp on either side of a
split threshold flips the branch (measured here: HistGradientBoosting with a scaler is off
by 2.1e-3 in ONNX even with skl2onnx's ``div`` option; without it, 8e-8).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from edgefleet.edge.schema import CategoricalFeature, FeatureSchema
from edgefleet.errors import InputError


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    make: Callable[[int, Mapping[str, Any]], Any]
    defaults: Mapping[str, Any]
    scaled: bool


def _with(defaults: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    return {**defaults, **params}


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "logreg",
            "logistic regression (L2)",
            lambda seed, p: LogisticRegression(random_state=seed, **p),
            {"C": 1.0, "max_iter": 2000},
            scaled=True,
        ),
        Family(
            "rf",
            "random forest",
            lambda seed, p: RandomForestClassifier(random_state=seed, **p),
            {"n_estimators": 100, "max_depth": 10, "min_samples_leaf": 5, "n_jobs": 2},
            scaled=False,
        ),
        Family(
            "gb",
            "gradient boosting",
            lambda seed, p: GradientBoostingClassifier(random_state=seed, **p),
            {"n_estimators": 150, "max_depth": 3, "learning_rate": 0.1},
            scaled=False,
        ),
        Family(
            "hgb",
            "histogram gradient boosting",
            lambda seed, p: HistGradientBoostingClassifier(random_state=seed, **p),
            {"max_iter": 150, "max_depth": 6, "learning_rate": 0.1, "early_stopping": False},
            scaled=False,
        ),
        Family(
            "et",
            "extra trees",
            lambda seed, p: ExtraTreesClassifier(random_state=seed, **p),
            {"n_estimators": 100, "max_depth": 10, "min_samples_leaf": 5, "n_jobs": 2},
            scaled=False,
        ),
        Family(
            "dt",
            "decision tree",
            lambda seed, p: DecisionTreeClassifier(random_state=seed, **p),
            {"max_depth": 8, "min_samples_leaf": 10},
            scaled=False,
        ),
    )
}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(
            f"unknown model family {name!r}; choose one of: {', '.join(FAMILIES)}"
        ) from None


def build_pipeline(
    schema: FeatureSchema,
    family_name: str,
    *,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> tuple[Pipeline, dict[str, Any]]:
    """An unfitted pipeline for ``schema`` and the estimator parameters it uses."""
    chosen = family(family_name)
    merged = _with(chosen.defaults, params or {})
    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if chosen.scaled:
        numeric_steps.append(("scale", StandardScaler()))
    transformers: list[tuple[str, Any, list[int]]] = []
    numeric = schema.numeric_indices()
    categorical = schema.categorical_indices()
    if numeric:
        transformers.append(("num", Pipeline(numeric_steps), numeric))
    if categorical:
        vocabularies = [schema.features[i] for i in categorical]
        transformers.append(
            (
                "cat",
                OneHotEncoder(
                    categories=[
                        np.arange(len(f.vocabulary), dtype=np.float64)
                        for f in vocabularies
                        if isinstance(f, CategoricalFeature)
                    ],
                    handle_unknown="ignore",
                    sparse_output=False,
                ),
                categorical,
            )
        )
    try:
        estimator = chosen.make(seed, merged)
    except TypeError as error:
        raise InputError(f"bad parameter for {family_name}: {error}") from None
    prep = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    return Pipeline([("prep", prep), ("model", estimator)]), merged
