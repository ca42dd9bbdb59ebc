"""The grid: (estimator x preprocessing x data set) x format. Every binary cell must export
with parity against scikit-learn; every multi-class and regression cell must be refused with
an error that names why, before anything is written (docs/architecture.md §4)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest

from edgefleet.central.byo.register import Card, prepare
from edgefleet.central.byo.source import LoadedModel
from edgefleet.converters.parity import measure_parity
from edgefleet.converters.registry import export_format
from edgefleet.converters.source import ConversionSource
from edgefleet.edge.manifest import DEFAULT_TOLERANCE
from edgefleet.errors import UnsupportedModelError
from tests.byo import grid

# web is the onnx artifact byte for byte (tests/web checks it in Chromium).
FORMATS = ("onnx", "tflite", "coreml")
CELLS = [
    (data, prep, est)
    for data in ("iris", "wine")
    for prep in grid.PREPROCESSING
    for est in grid.ESTIMATORS
]


@pytest.fixture(scope="session")
def binary_frames() -> dict[str, pd.DataFrame]:
    return grid.binary_sets()


@pytest.fixture(scope="session")
def cards(binary_frames: dict[str, pd.DataFrame]) -> dict[tuple[str, str, str], Card]:
    """Each cell read and registered in memory, once."""
    made = {}
    for data, prep, est in CELLS:
        frame = binary_frames[data]
        pipeline = grid.fit(frame, prep, grid.ESTIMATORS[est]())
        made[(data, prep, est)] = prepare(LoadedModel(pipeline, "grid"), frame, grid.TARGET)
    return made


# TFLite conversion is the slow one (~1 s a model): every estimator x preprocessing cell on
# iris; wine's cells run the same TFLite code paths and are converted to the other formats.
FORMAT_CELLS = [
    (data, prep, est, fmt)
    for data, prep, est in CELLS
    for fmt in FORMATS
    if fmt != "tflite" or data == "iris"
]


@pytest.mark.parametrize(("data", "prep", "est", "fmt"), FORMAT_CELLS)
def test_binary_cell_exports_with_parity(
    cards: dict[tuple[str, str, str], Card], data: str, prep: str, est: str, fmt: str
) -> None:
    card = cards[(data, prep, est)]
    model = card.model
    # The rebuilt pipeline is the user's on every row (as held, or as float32 input).
    assert card.agreement.rows_over == 0
    assert card.agreement.max_abs_diff <= 1e-5
    inputs = np.concatenate([model.holdout_inputs, model.golden_inputs()])
    source = ConversionSource(model.pipeline, model.schema, model.family, inputs[:16])
    exporter = export_format(fmt)
    artifact = exporter.convert(source)
    parity = measure_parity(
        fmt, exporter.predict(artifact, inputs), model.pipeline.predict_proba(inputs)
    )
    assert parity.max_abs_diff <= DEFAULT_TOLERANCE, (data, prep, est, fmt, parity)


def _refusal(frame: pd.DataFrame, pipeline: Any) -> str:
    with pytest.raises(UnsupportedModelError) as caught:
        prepare(LoadedModel(pipeline, "grid"), frame, grid.TARGET)
    return str(caught.value)


@pytest.mark.parametrize("data", ["iris", "wine"])
@pytest.mark.parametrize("est", ["logreg", "rf", "hgb"])
def test_multiclass_cells_are_refused_clearly(data: str, est: str) -> None:
    frame = grid.multiclass_sets()[data]
    message = _refusal(frame, grid.fit(frame, "standard+onehot", grid.ESTIMATORS[est]()))
    assert re.search(r"has 3 classes; edgefleet registers binary classifiers", message)


@pytest.mark.parametrize("data", ["diabetes", "make_regression"])
@pytest.mark.parametrize("est", list(grid.REGRESSORS))
def test_regression_cells_are_refused_clearly(data: str, est: str) -> None:
    frame = grid.regression_sets()[data]
    message = _refusal(frame, grid.fit(frame, "standard+onehot", grid.REGRESSORS[est]()))
    name = type(grid.REGRESSORS[est]()).__name__
    assert f"the estimator {name} is not converted" in message
    assert "LogisticRegression" in message
    assert "OneHotEncoder" in message
