"""The IR reproduces scikit-learn, and the ONNX export passes the parity gate, for every
model family the trainer offers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline

from edgefleet.central.trainer import TrainedModel
from edgefleet.converters import onnx_export
from edgefleet.converters.ir import read_pipeline
from edgefleet.converters.registry import export_format, formats_for
from edgefleet.converters.source import ConversionSource
from edgefleet.errors import UnsupportedModelError
from tests.conftest import FAMILIES


def _inputs(model: TrainedModel) -> np.ndarray:
    return np.concatenate([model.holdout_inputs, model.golden_inputs()])


@pytest.mark.parametrize("family", FAMILIES)
def test_ir_reference_matches_sklearn(trained: Callable[[str], TrainedModel], family: str) -> None:
    model = trained(family)
    inputs = _inputs(model)
    ir = read_pipeline(model.pipeline)
    assert ir.family == family
    difference = np.abs(ir.predict_proba(inputs) - model.pipeline.predict_proba(inputs)).max()
    assert difference <= 1e-9


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_parity(trained: Callable[[str], TrainedModel], family: str) -> None:
    model = trained(family)
    inputs = _inputs(model)
    source = ConversionSource(model.pipeline, model.schema, family, inputs[:4])
    artifact = onnx_export.convert(source)
    got = onnx_export.predict(artifact, inputs)
    assert got.shape == (len(inputs), 2)
    assert np.abs(got - model.pipeline.predict_proba(inputs)).max() <= 1e-5


def test_unsupported_estimator_is_named(trained: Callable[[str], TrainedModel]) -> None:
    model = trained("logreg")
    knn = Pipeline([("prep", model.pipeline.steps[0][1]), ("model", KNeighborsClassifier())])
    with pytest.raises(UnsupportedModelError, match="no converter for KNeighborsClassifier"):
        read_pipeline(knn)


def test_format_refusing_a_family_names_alternatives(
    trained: Callable[[str], TrainedModel],
) -> None:
    model = trained("rf")
    onnx = export_format("onnx")
    narrow = type(onnx)(onnx.name, onnx.module, onnx.filename, onnx.runtime, ("logreg",), "")
    source = ConversionSource(model.pipeline, model.schema, "rf", model.holdout_inputs[:2])
    with pytest.raises(
        UnsupportedModelError, match=r"onnx cannot take a rf model .*formats that can"
    ):
        narrow.convert(source)
    assert "onnx" in formats_for("rf")
