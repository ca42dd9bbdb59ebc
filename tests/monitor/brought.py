"""Brought models of every task for the retraining and shadow tests (docs/architecture.md §14,
§17): labelled rows of a known concept (a drift swaps it for another), and a user's
scikit-learn pipeline over them, registered with ``edgefleet.register``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import edgefleet
from edgefleet.central.registry import ModelVersion

TARGET = "target"
NUMERIC = ("f0", "f1", "f2", "f3")
CLASSES = np.array(["high", "low", "mid"])
# Per concept: the weights of the numeric features (regression), or of each class.
CLASS_WEIGHTS = (
    np.array([[2.0, 0.0, -2.0], [0.0, 2.0, 0.0], [-1.0, 0.0, 1.0], [0.0, -1.0, 1.0]]),
    np.array([[-2.0, 0.0, 2.0], [0.0, -2.0, 0.0], [1.0, 1.0, -1.0], [0.0, 1.0, -1.0]]),
)
VALUE_WEIGHTS = (np.array([8.0, -4.0, 2.0, 0.0]), np.array([-8.0, 4.0, 0.0, 6.0]))


def rows(task: str, n: int, seed: int, *, concept: int = 0) -> pd.DataFrame:
    """``n`` labelled rows: four numbers and a colour; the target follows ``concept``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(NUMERIC)))
    frame = pd.DataFrame(x, columns=list(NUMERIC))
    frame["colour"] = rng.choice(["red", "green", "blue"], n)
    red = (frame["colour"] == "red").to_numpy(np.float64)
    if task == "multiclass":
        logits = x @ CLASS_WEIGHTS[concept] + rng.gumbel(size=(n, 3))
        logits[:, 0] += red
        frame[TARGET] = CLASSES[logits.argmax(axis=1)]
    else:
        frame[TARGET] = 50.0 + x @ VALUE_WEIGHTS[concept] + 3.0 * red + rng.normal(0, 2.0, n)
    return frame


def user_pipeline(task: str) -> Pipeline:
    """What a user fits: scaled numbers and a one-hot colour, then a linear model."""
    prep = ColumnTransformer(
        [
            ("num", StandardScaler(), list(NUMERIC)),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
        ]
    )
    model: Any = LogisticRegression(max_iter=2000) if task == "multiclass" else Ridge(alpha=1.0)
    return Pipeline([("prep", prep), ("model", model)])


def fitted(task: str, frame: pd.DataFrame) -> Pipeline:
    return user_pipeline(task).fit(frame.drop(columns=[TARGET]), frame[TARGET])


def register(task: str, home: Path, *, n: int = 1500, seed: int = 1) -> ModelVersion:
    """The user's pipeline fitted on concept 0 and registered as ``task`` 1.0.0."""
    frame = rows(task, n, seed)
    return edgefleet.register(
        fitted(task, frame), reference=frame, target=TARGET, name=task, home=home
    )
