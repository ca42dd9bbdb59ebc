"""Per task (binary, multi-class, regression): for pipelines a user brings (fitted on
scikit-learn's own data sets, registered with ``edgefleet register``'s reading), the max
parity error of each format against the user's scikit-learn pipeline, and scoring latency
(one row, all rows) in the format's runtime with its ratio to scikit-learn's
``predict_proba`` (``predict`` for a regressor) on a DataFrame, measured in the same run.
"vs yours" compares with the user's own pipeline on the float64 reference DataFrame; "vs
gate" with the rebuilt contract pipeline that the export's parity gate holds each format to
(they differ only where a float64 value and its float32 rounding, the contract's input, fall
on two sides of a split, and by float32 arithmetic). Errors are absolute: probabilities, or
the regressor's value in the target's units (diabetes: 25..346); "rel" is the largest error
of a value relative to it. web is the ONNX graph onnxruntime-web runs, run here by
onnxruntime. A case edgefleet refuses is printed with the refusal the user gets.

Part of ``python -m bench.formats`` (``--tasks-only`` for this table alone).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris, load_wine
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from bench.common import median_seconds
from edgefleet.central.byo.register import prepare
from edgefleet.central.byo.source import LoadedModel
from edgefleet.converters.parity import expected_outputs
from edgefleet.converters.registry import EXPORT_FORMATS
from edgefleet.converters.source import ConversionSource
from edgefleet.errors import EdgefleetError

TARGET = "target"


@dataclass(frozen=True)
class Case:
    task: str
    data: str
    estimator: str
    frame: pd.DataFrame
    make: Callable[[], Any]


def _frame(data: Any, target: Any, seed: int) -> pd.DataFrame:
    frame = pd.DataFrame(data, columns=[f"f{i}" for i in range(data.shape[1])])
    frame["colour"] = np.random.default_rng(seed).choice(["red", "green", "blue"], len(frame))
    frame[TARGET] = target
    return frame


def cases() -> list[Case]:
    iris, wine, diabetes = load_iris(), load_wine(), load_diabetes()
    binary = _frame(wine.data, np.where(wine.target == 0, "yes", "no"), 0)
    multi = _frame(iris.data, iris.target, 1)
    regression = _frame(diabetes.data, diabetes.target, 2)
    multi_wine = _frame(wine.data, wine.target, 3)
    return [
        Case("binary", "wine", "logreg", binary, lambda: LogisticRegression(max_iter=2000)),
        Case("binary", "wine", "rf", binary, lambda: RandomForestClassifier(50, max_depth=8)),
        Case("binary", "wine", "hgb", binary, lambda: HistGradientBoostingClassifier(max_iter=50)),
        Case("multi", "iris", "logreg", multi, lambda: LogisticRegression(max_iter=2000)),
        Case("multi", "iris", "rf", multi, lambda: RandomForestClassifier(50, max_depth=8)),
        Case("multi", "wine", "gb", multi_wine, lambda: GradientBoostingClassifier()),
        Case("multi", "wine", "hgb", multi_wine, lambda: HistGradientBoostingClassifier()),
        Case("regress", "diabetes", "ridge", regression, lambda: Ridge()),
        Case("regress", "diabetes", "rf", regression, lambda: RandomForestRegressor(50)),
        Case("regress", "diabetes", "hgb", regression, lambda: HistGradientBoostingRegressor()),
    ]


def _fit(case: Case) -> Pipeline:
    numeric = [c for c in case.frame.columns if c.startswith("f")]
    prep = ColumnTransformer(
        [
            ("num", StandardScaler(), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
        ]
    )
    features = case.frame.drop(columns=[TARGET])
    return Pipeline([("prep", prep), ("model", case.make())]).fit(features, case.frame[TARGET])


def run(formats: list[str], repeat: int) -> None:
    print(
        f"{'task':7} {'data':9} {'model':6} {'format':7} {'vs yours':>9} {'vs gate':>8} "
        f"{'rel':>8} {'1 row us':>9} {'vs sklearn':>10} {'all rows us':>11} {'vs sklearn':>10}"
    )
    scratch = tempfile.mkdtemp(prefix="edgefleet-bench-tasks-")
    for case in cases():
        pipeline = _fit(case)
        features = case.frame.drop(columns=[TARGET])
        head = f"{case.task:7} {case.data:9} {case.estimator:6}"
        try:
            card = prepare(LoadedModel(pipeline, "bench"), case.frame, TARGET)
        except EdgefleetError as error:
            print(f"{head} {'all':7} refused: {str(error).split(';')[0]}", flush=True)
            continue
        _measure(head, card.model, pipeline, features, formats, repeat, scratch)


def _measure(
    head: str,
    model: Any,
    pipeline: Pipeline,
    features: pd.DataFrame,
    formats: list[str],
    repeat: int,
    scratch: str,
) -> None:
    from bench.formats import callers, runtime_for

    inputs = model.holdout_inputs
    expected = expected_outputs(pipeline, features)
    score = pipeline.predict_proba if hasattr(pipeline, "predict_proba") else pipeline.predict
    one_frame = features.iloc[:1]
    sk_one = median_seconds(lambda: score(one_frame), repeat=repeat, warmup=5)
    sk_all = median_seconds(lambda: score(features), repeat=max(10, repeat // 10))
    print(
        f"{head} {'sklearn':7} {0.0:9.1e} {0.0:8.1e} {0.0:8.1e} {sk_one * 1e6:9.1f} "
        f"{'1.0x':>10} {sk_all * 1e6:11.1f} {'1.0x':>10}",
        flush=True,
    )
    source = ConversionSource(model.pipeline, model.schema, model.family, inputs[:16])
    gate_expected = expected_outputs(model.pipeline, inputs)
    for fmt in formats:
        spec = EXPORT_FORMATS[fmt]
        try:
            artifact = spec.convert(source)
        except EdgefleetError as error:
            print(f"{head} {fmt:7} refused: {str(error).split(';')[0]}", flush=True)
            continue
        got = spec.predict(artifact, inputs)
        diff = float(np.abs(got - expected).max())
        gate = float(np.abs(got - gate_expected).max())
        relative = float((np.abs(got - expected) / np.maximum(np.abs(expected), 1e-12)).max())
        backend = runtime_for(fmt, artifact, scratch)
        run_one, run_all = callers(spec, artifact, backend, inputs[:1], inputs)
        one = median_seconds(run_one, repeat=repeat, warmup=5)
        every = median_seconds(run_all, repeat=max(10, repeat // 10), warmup=2)
        rel = f"{relative:8.1e}" if model.schema.task == "regression" else f"{'':8}"
        print(
            f"{head} {fmt:7} {diff:9.1e} {gate:8.1e} {rel} {one * 1e6:9.1f} "
            f"{one / sk_one:9.2f}x {every * 1e6:11.1f} {every / sk_all:9.2f}x",
            flush=True,
        )
