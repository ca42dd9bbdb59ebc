"""The grid of user pipelines the bring-your-own tests run: scikit-learn's own data sets
(per task), preprocessing variants and estimators, fitted small (session fixtures share
them). ``cells()`` lists every (task, data set, preprocessing, estimator) cell; edgefleet
converts each in every device format (the refusals the grid holds are tested beside it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris, load_wine, make_regression
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import (
    ElasticNet,
    Lasso,
    LinearRegression,
    LogisticRegression,
    Ridge,
    SGDClassifier,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    RobustScaler,
    StandardScaler,
)
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

TARGET = "target"
CATEGORY = "colour"

ESTIMATORS: dict[str, Callable[[], Any]] = {
    "logreg": lambda: LogisticRegression(max_iter=2000),
    "rf": lambda: RandomForestClassifier(n_estimators=8, max_depth=6, random_state=0),
    "gb": lambda: GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0),
    "hgb": lambda: HistGradientBoostingClassifier(max_iter=15, random_state=0),
    "et": lambda: ExtraTreesClassifier(n_estimators=8, max_depth=6, random_state=0),
    "dt": lambda: DecisionTreeClassifier(max_depth=6, random_state=0),
    "sgd": lambda: SGDClassifier(loss="log_loss", random_state=0),
}


def _numeric(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in (TARGET, CATEGORY)]


def _standard(frame: pd.DataFrame) -> ColumnTransformer:
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    return ColumnTransformer(
        [
            ("num", numeric, _numeric(frame)),
            ("cat", OneHotEncoder(handle_unknown="ignore"), [CATEGORY]),
        ]
    )


def _minmax_categories_first(frame: pd.DataFrame) -> ColumnTransformer:
    numeric = Pipeline([("impute", SimpleImputer(strategy="mean")), ("scale", MinMaxScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("onehot", OneHotEncoder(handle_unknown="ignore")),
        ]
    )
    return ColumnTransformer([("cat", categorical, [CATEGORY]), ("num", numeric, _numeric(frame))])


def _robust_ordinal(frame: pd.DataFrame) -> ColumnTransformer:
    numeric = Pipeline(
        [("impute", SimpleImputer(strategy="constant", fill_value=0.0)), ("scale", RobustScaler())]
    )
    ordinal = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
    return ColumnTransformer([("num", numeric, _numeric(frame)), ("ord", ordinal, [CATEGORY])])


def _unscaled_passthrough(frame: pd.DataFrame) -> ColumnTransformer:
    """No imputer, no scaler: numbers as they are; the first column dropped, and the
    one-hot encoder drops the first category (in front of trees too)."""
    numeric = _numeric(frame)
    return ColumnTransformer(
        [
            ("drop", "drop", numeric[:1]),
            ("cat", OneHotEncoder(drop="first", handle_unknown="ignore"), [CATEGORY]),
        ],
        remainder="passthrough",
    )


def _infrequent(frame: pd.DataFrame) -> ColumnTransformer:
    """Infrequent categories: of the three colours the most frequent keeps its column, the
    other two share one, which an unknown colour sets too."""
    encoder = OneHotEncoder(max_categories=2, handle_unknown="infrequent_if_exist")
    return ColumnTransformer(
        [("num", StandardScaler(), _numeric(frame)), ("cat", encoder, [CATEGORY])]
    )


PREPROCESSING: dict[str, Callable[[pd.DataFrame], ColumnTransformer]] = {
    "standard+onehot": _standard,
    "onehot-first+minmax": _minmax_categories_first,
    "robust+ordinal": _robust_ordinal,
    "passthrough+drop": _unscaled_passthrough,
    "infrequent": _infrequent,
}


def _with_category(data: Any, seed: int) -> pd.DataFrame:
    frame = pd.DataFrame(data.data, columns=[f"f{i}" for i in range(data.data.shape[1])])
    rng = np.random.default_rng(seed)
    frame[CATEGORY] = rng.choice(["red", "green", "blue"], len(frame))
    return frame


def binary_sets() -> dict[str, pd.DataFrame]:
    iris = _with_category(load_iris(), 1)
    iris[TARGET] = np.where(load_iris().target == 1, "versicolor", "other")
    wine = _with_category(load_wine(), 2)
    wine[TARGET] = np.where(load_wine().target == 0, "class_0", "rest")
    return {"iris": iris, "wine": wine}


def multiclass_sets() -> dict[str, pd.DataFrame]:
    iris = _with_category(load_iris(), 1)
    iris[TARGET] = load_iris().target
    wine = _with_category(load_wine(), 2)
    wine[TARGET] = load_wine().target
    return {"iris": iris, "wine": wine}


def regression_sets() -> dict[str, pd.DataFrame]:
    diabetes = _with_category(load_diabetes(), 3)
    diabetes[TARGET] = load_diabetes().target
    x, y = make_regression(n_samples=200, n_features=6, noise=5.0, random_state=0)
    synthetic = _with_category(type("D", (), {"data": x})(), 4)
    synthetic[TARGET] = y
    return {"diabetes": diabetes, "make_regression": synthetic}


def fit(frame: pd.DataFrame, preprocessing: str, estimator: Any) -> Pipeline:
    prep = PREPROCESSING[preprocessing](frame)
    features = frame.drop(columns=[TARGET])
    return Pipeline([("prep", prep), ("model", estimator)]).fit(features, frame[TARGET])


REGRESSORS: dict[str, Callable[[], Any]] = {
    "ridge": lambda: Ridge(),
    "rf": lambda: RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0),
    "linear": lambda: LinearRegression(),
    "lasso": lambda: Lasso(alpha=0.05),
    "enet": lambda: ElasticNet(alpha=0.01),
    "gb": lambda: GradientBoostingRegressor(n_estimators=10, max_depth=3, random_state=0),
    "hgb": lambda: HistGradientBoostingRegressor(max_iter=10, random_state=0),
    "et": lambda: ExtraTreesRegressor(n_estimators=5, max_depth=4, random_state=0),
    "dt": lambda: DecisionTreeRegressor(max_depth=4, random_state=0),
}
LINEAR = ("logreg", "sgd", "ridge", "linear", "lasso", "enet")
TASKS = ("binary", "multiclass", "regression")
DATA_SETS = {
    "binary": ("iris", "wine"),
    "multiclass": ("iris", "wine"),
    "regression": ("diabetes", "make_regression"),
}


def frames(task: str) -> dict[str, pd.DataFrame]:
    return {"binary": binary_sets, "multiclass": multiclass_sets, "regression": regression_sets}[
        task
    ]()


def estimators(task: str) -> dict[str, Callable[[], Any]]:
    return REGRESSORS if task == "regression" else ESTIMATORS


def cells() -> list[tuple[str, str, str, str]]:
    """Every (task, data set, preprocessing, estimator): each estimator x preprocessing of a
    task on one of the task's two data sets, in turn, so both are used and each cell once."""
    out = []
    for task in TASKS:
        names = DATA_SETS[task]
        for i, (prep, est) in enumerate((p, e) for p in PREPROCESSING for e in estimators(task)):
            out.append((task, names[i % 2], prep, est))
    return out


def fit_native_categorical(frame: pd.DataFrame, task: str) -> Pipeline:
    """HistGradientBoosting reading the colour's ordinal code as a native categorical
    feature (unknown colours -1, which HGB takes as missing)."""
    numeric = _numeric(frame)
    ordinal = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
    prep = ColumnTransformer([("num", "passthrough", numeric), ("ord", ordinal, [CATEGORY])])
    kind = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    model = kind(max_iter=10, categorical_features=[len(numeric)], random_state=0)
    features = frame.drop(columns=[TARGET])
    return Pipeline([("prep", prep), ("model", model)]).fit(features, frame[TARGET])
