"""The IR's reference evaluator equals scikit-learn for every estimator it reads, binary,
multi-class and regression (``predict_proba``, or ``predict`` as one column), with
missing values and unknown category codes among the rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn import ensemble, linear_model, tree
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from edgefleet.converters.ir import read_pipeline, task_of
from edgefleet.converters.parity import expected_outputs

CLASSIFIERS = {
    "logreg": lambda: linear_model.LogisticRegression(max_iter=2000),
    "sgd": lambda: linear_model.SGDClassifier(loss="log_loss", random_state=0),
    "rf": lambda: ensemble.RandomForestClassifier(8, max_depth=5, random_state=0),
    "et": lambda: ensemble.ExtraTreesClassifier(8, max_depth=5, random_state=0),
    "dt": lambda: tree.DecisionTreeClassifier(max_depth=5, random_state=0),
    "gb": lambda: ensemble.GradientBoostingClassifier(n_estimators=8, random_state=0),
    "hgb": lambda: ensemble.HistGradientBoostingClassifier(max_iter=8, random_state=0),
}
REGRESSORS = {
    "linear": linear_model.LinearRegression,
    "ridge": linear_model.Ridge,
    "lasso": lambda: linear_model.Lasso(alpha=0.1),
    "enet": lambda: linear_model.ElasticNet(alpha=0.01),
    "rf": lambda: ensemble.RandomForestRegressor(8, max_depth=5, random_state=0),
    "et": lambda: ensemble.ExtraTreesRegressor(8, max_depth=5, random_state=0),
    "dt": lambda: tree.DecisionTreeRegressor(max_depth=5, random_state=0),
    "gb": lambda: ensemble.GradientBoostingRegressor(n_estimators=8, random_state=0),
    "gb-huber": lambda: ensemble.GradientBoostingRegressor(n_estimators=8, loss="huber"),
    "hgb": lambda: ensemble.HistGradientBoostingRegressor(max_iter=8, random_state=0),
}


def _rows(data: Any) -> np.ndarray:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, len(data)).astype(np.float32)
    x = np.column_stack([data, codes]).astype(np.float32)
    x[::9, 0] = np.nan
    return x


def _pipeline(estimator: Any, width: int, linear: bool) -> Pipeline:
    steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if linear:
        steps.append(("scale", StandardScaler()))
    encoder = OneHotEncoder(
        categories=[np.arange(3.0)], handle_unknown="ignore", sparse_output=False
    )
    prep = ColumnTransformer(
        [("num", Pipeline(steps), list(range(width - 1))), ("cat", encoder, [width - 1])]
    )
    return Pipeline([("prep", prep), ("model", estimator)])


def _check(estimator: Any, x: np.ndarray, y: np.ndarray, task: str, linear: bool) -> None:
    pipeline = _pipeline(estimator, x.shape[1], linear).fit(x, y)
    scored = x.copy()
    scored[::7, -1] = -1.0  # unknown category
    ir = read_pipeline(pipeline)
    assert ir.task == task == task_of(pipeline.steps[-1][1])
    expected = expected_outputs(pipeline, scored)
    assert ir.n_outputs == expected.shape[1]
    assert np.abs(ir.predict_proba(scored) - expected).max() <= 1e-9 * max(
        1.0, float(np.abs(expected).max())
    )


@pytest.mark.parametrize("task", ["binary", "multiclass"])
@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifiers(name: str, task: str) -> None:
    data = load_iris()
    y = data.target if task == "multiclass" else (data.target == 1).astype(int)
    _check(CLASSIFIERS[name](), _rows(data.data), y, task, name in ("logreg", "sgd"))


@pytest.mark.parametrize("name", list(REGRESSORS))
def test_regressors(name: str) -> None:
    data = load_diabetes()
    linear = name in ("linear", "ridge", "lasso", "enet")
    _check(REGRESSORS[name](), _rows(data.data), data.target, "regression", linear)
