"""The grid: (estimator x preprocessing x task) x format, on scikit-learn's own data sets
(iris and wine for binary and multi-class, diabetes and make_regression for regression).
Every cell edgefleet converts must export in every device format with parity against
scikit-learn under the tolerance the export writes (``manifest.task_tolerance``:
probabilities within 1e-5, a regressor's value within 1e-5 x the mean |value| plus 1e-5 of
itself); every cell it does not convert must be refused with an error that
names why, before anything is written (docs/architecture.md §4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from edgefleet.central.byo.register import Card, prepare
from edgefleet.central.byo.source import LoadedModel
from edgefleet.converters.parity import expected_outputs, measure_parity
from edgefleet.converters.registry import export_format
from edgefleet.converters.source import ConversionSource
from edgefleet.edge.manifest import DEFAULT_TOLERANCE, task_tolerance
from edgefleet.errors import UnsupportedModelError
from tests.byo import grid

# web is the onnx artifact byte for byte, run by onnxruntime-web (tests/web runs it in
# Chromium); here onnxruntime checks it.
FORMATS = ("onnx", "tflite", "coreml", "web")
CELLS = grid.cells()
CONVERTED = CELLS  # every cell registers (refused estimators: the tests at the end)
# Every device format takes every cell (PMML: test_pmml_parity_of_multiclass_and_regression).
FORMAT_CELLS = [(*cell, fmt) for cell in CONVERTED for fmt in FORMATS]
Cell = tuple[str, str, str, str]


@pytest.fixture(scope="session")
def grid_frames() -> dict[str, dict[str, pd.DataFrame]]:
    return {task: grid.frames(task) for task in grid.TASKS}


def _user_pipeline(frames: dict[str, dict[str, pd.DataFrame]], cell: Cell) -> Any:
    task, data, prep, est = cell
    return grid.fit(frames[task][data], prep, grid.estimators(task)[est]())


@pytest.fixture(scope="session")
def card(grid_frames: dict[str, dict[str, pd.DataFrame]]) -> Callable[[Cell], Card]:
    """``card(cell)``: the cell read and registered in memory, once a session."""
    made: dict[Cell, Card] = {}

    def get(cell: Cell) -> Card:
        if cell not in made:
            frame = grid_frames[cell[0]][cell[1]]
            pipeline = _user_pipeline(grid_frames, cell)
            made[cell] = prepare(LoadedModel(pipeline, "grid"), frame, grid.TARGET)
        return made[cell]

    return get


def _source(card: Card) -> tuple[ConversionSource, np.ndarray]:
    model = card.model
    inputs = np.concatenate([model.holdout_inputs, model.golden_inputs()])
    return ConversionSource(model.pipeline, model.schema, model.family, inputs[:16]), inputs


@pytest.mark.parametrize(("task", "data", "prep", "est", "fmt"), FORMAT_CELLS)
def test_cell_exports_with_parity(
    card: Callable[[Cell], Card], task: str, data: str, prep: str, est: str, fmt: str
) -> None:
    registered = card((task, data, prep, est))
    model = registered.model
    assert model.schema.task == task
    # The rebuilt pipeline is the user's on every row (as held, or as float32 input).
    assert registered.agreement.rows_over == 0
    source, inputs = _source(registered)
    exporter = export_format(fmt)
    artifact = exporter.convert(source)
    got = exporter.predict(artifact, inputs)
    expected = expected_outputs(model.pipeline, inputs)
    assert expected.shape == (len(inputs), model.schema.n_outputs)
    parity = measure_parity(fmt, got, expected, task)
    tolerance = task_tolerance(task, expected, DEFAULT_TOLERANCE)
    assert parity.max_excess <= tolerance, (task, data, prep, est, fmt, parity)


def _refusal(frame: pd.DataFrame, pipeline: Any) -> str:
    with pytest.raises(UnsupportedModelError) as caught:
        prepare(LoadedModel(pipeline, "grid"), frame, grid.TARGET)
    return str(caught.value)


def test_infrequent_and_drop_together_in_front_of_trees_are_refused_clearly(
    grid_frames: dict[str, dict[str, pd.DataFrame]],
) -> None:
    frame = grid_frames["binary"]["iris"]
    encoder = OneHotEncoder(max_categories=2, drop="first", handle_unknown="infrequent_if_exist")
    numeric = [c for c in frame.columns if c not in (grid.TARGET, grid.CATEGORY)]
    prep = ColumnTransformer([("num", "passthrough", numeric), ("cat", encoder, [grid.CATEGORY])])
    model = grid.ESTIMATORS["rf"]()
    pipeline = Pipeline([("prep", prep), ("model", model)])
    pipeline.fit(frame.drop(columns=[grid.TARGET]), frame[grid.TARGET])
    message = _refusal(frame, pipeline)
    assert "infrequent categories and a dropped category together" in message
    assert "OneHotEncoder" in message  # the step it names


@pytest.mark.parametrize(
    ("task", "make", "expected"),
    [
        (
            "regression",
            lambda: HistGradientBoostingRegressor(loss="poisson", max_iter=5),
            "loss='poisson') predicts through a link function",
        ),
    ],
)
def test_unconverted_estimator_is_refused_clearly(
    grid_frames: dict[str, dict[str, pd.DataFrame]], task: str, make: Any, expected: str
) -> None:
    name = grid.DATA_SETS[task][0]
    frame = grid_frames[task][name]
    message = _refusal(frame, grid.fit(frame, "standard+onehot", make()))
    assert expected in message
    assert "converted:" in message


# PMML (central only, checked by JPMML-Evaluator): each estimator of the non-binary tasks
# once, on its first cell (a JVM call per cell; the binary families: tests/converters).
PMML_CELLS = [
    next(c for c in CONVERTED if c[0] == task and c[3] == est)
    for task in ("multiclass", "regression")
    for est in grid.estimators(task)
    if (task, est) != ("multiclass", "sgd")
]


@pytest.mark.parametrize(("task", "data", "prep", "est"), PMML_CELLS)
def test_pmml_parity_of_multiclass_and_regression(
    card: Callable[[Cell], Card], task: str, data: str, prep: str, est: str
) -> None:
    source, inputs = _source(card((task, data, prep, est)))
    pmml = export_format("pmml")
    got = pmml.predict(pmml.convert(source), inputs)
    expected = expected_outputs(source.pipeline, inputs)
    assert got.shape == expected.shape == (len(inputs), source.schema.n_outputs)
    parity = measure_parity("pmml", got, expected, task)
    assert parity.max_excess <= task_tolerance(task, expected, DEFAULT_TOLERANCE), parity


def test_pmml_refuses_a_multiclass_sgd_by_name(card: Callable[[Cell], Card]) -> None:
    cell = next(c for c in CONVERTED if c[0] == "multiclass" and c[3] == "sgd")
    source, _ = _source(card(cell))
    with pytest.raises(UnsupportedModelError, match="pmml cannot take a multiclass sgd model"):
        export_format("pmml").convert(source)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("task", grid.TASKS)
def test_native_categorical_histgradientboosting(
    grid_frames: dict[str, dict[str, pd.DataFrame]], task: str, fmt: str
) -> None:
    """Its categorical splits become numeric splits around each code (ir_hgb.py): parity in
    every format (onnx and web built from the IR: skl2onnx mis-converts it)."""
    frame = grid_frames[task][grid.DATA_SETS[task][1]]
    registered = prepare(
        LoadedModel(grid.fit_native_categorical(frame, task), "grid"), frame, grid.TARGET
    )
    assert registered.agreement.rows_over == 0
    source, inputs = _source(registered)
    unknown = inputs[:8].copy()
    unknown[:, registered.model.schema.names.index(grid.CATEGORY)] = -1.0
    inputs = np.concatenate([inputs, unknown])
    exporter = export_format(fmt)
    got = exporter.predict(exporter.convert(source), inputs)
    expected = expected_outputs(registered.model.pipeline, inputs)
    parity = measure_parity(fmt, got, expected, task)
    assert parity.max_excess <= task_tolerance(task, expected, DEFAULT_TOLERANCE), parity


@pytest.mark.parametrize("fmt", [*FORMATS, "pmml"])
@pytest.mark.parametrize(
    ("task", "data", "prep"),
    [("binary", "iris", "standard+onehot"), ("multiclass", "wine", "passthrough+drop")],
)
def test_sgd_modified_huber_probabilities(
    grid_frames: dict[str, dict[str, pd.DataFrame]], task: str, data: str, prep: str, fmt: str
) -> None:
    """scikit-learn's modified Huber probabilities, (clip(d, -1, 1) + 1) / 2 normalised
    (uniform where all are 0: the unscaled wine rows), in every device format; PMML has no
    such normalisation and refuses them."""
    frame = grid_frames[task][data]
    user = grid.fit(frame, prep, SGDClassifier(loss="modified_huber", random_state=0))
    registered = prepare(LoadedModel(user, "grid"), frame, grid.TARGET)
    assert registered.agreement.rows_over == 0
    source, inputs = _source(registered)
    exporter = export_format(fmt)
    if fmt == "pmml":
        why = "no modified Huber" if task == "binary" else "pmml cannot take a multiclass sgd"
        with pytest.raises(UnsupportedModelError, match=why):
            exporter.convert(source)
        return
    expected = expected_outputs(registered.model.pipeline, inputs)
    if task == "multiclass":  # the all-zero rows are there, and answered uniform
        assert (np.abs(expected - 1 / 3).max(axis=1) < 1e-12).any()
    got = exporter.predict(exporter.convert(source), inputs)
    assert measure_parity(fmt, got, expected, task).max_abs_diff <= DEFAULT_TOLERANCE
