"""ONNX export with skl2onnx and its onnxruntime check.

The graph's input is ``input`` (float32 ``[N, F]``), its output ``probabilities``
(docs/architecture.md §2: ``[N, n_outputs]``): a classifier's class probabilities in its
``classes_`` order (no ZipMap: onnxruntime-web cannot return maps) beside its ``label``; a
regressor's value ``[N, 1]``, renamed from skl2onnx's ``variable`` so that every task's graph
has the one output the edge backends and the browser module read. A StandardScaler is
emitted as Sub + Div rather than Scaler's multiply by reciprocal, which matches
scikit-learn's float rounding (docs/architecture.md §4). Tree models skl2onnx cannot
convert (native categorical splits, merged infrequent one-hot columns) get a graph built
from the IR instead (:mod:`edgefleet.converters.onnx_ir`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from skl2onnx import to_onnx, update_registered_converter
from skl2onnx.common.data_types import FloatTensorType
from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
from skl2onnx.operator_converters.linear_classifier import convert_sklearn_linear_classifier

from edgefleet.converters.decision import DecisionScores
from edgefleet.converters.ir import REGRESSOR_FAMILIES, read_pipeline
from edgefleet.converters.onnx_ir import convert_ir
from edgefleet.converters.source import ConversionSource
from edgefleet.edge.backends.onnx import PROBABILITIES, OnnxBackend
from edgefleet.errors import ConversionError

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
REGRESSOR_OUTPUT = "variable"  # skl2onnx's name for a regressor's prediction

# A decision-function model is a LogisticRegression to skl2onnx (converters/decision.py).
update_registered_converter(
    DecisionScores,
    "EdgefleetDecisionScores",
    calculate_linear_classifier_output_shapes,
    convert_sklearn_linear_classifier,
    options={
        "zipmap": [True, False, "columns"],
        "nocl": [True, False],
        "raw_scores": [True, False],
    },
)


def _options(pipeline: Any) -> dict[int, dict[str, Any]]:
    estimator = pipeline.steps[-1][1]
    options: dict[int, dict[str, Any]] = {}
    if type(estimator).__name__ not in REGRESSOR_FAMILIES:
        options[id(estimator)] = {"zipmap": False}
    for _, transformer, _ in pipeline.steps[0][1].transformers_:
        for _, step in getattr(transformer, "steps", []):
            if type(step).__name__ == "StandardScaler":
                options[id(step)] = {"div": "div"}
    return options


def convert(source: ConversionSource) -> bytes:
    estimator = source.pipeline.steps[-1][1]
    native = getattr(estimator, "_preprocessor", None) is not None
    if native or any(getattr(t, "_infrequent_enabled", False) for _, t, _ in _transformers(source)):
        # skl2onnx 1.20 answers native categorical splits 0.64 off (measured) and refuses a
        # merged one-hot column; the IR reads both as numeric splits (onnx_ir.py).
        return convert_ir(read_pipeline(source.pipeline), f"edgefleet {source.family} model")
    try:
        model = to_onnx(
            source.pipeline,
            initial_types=[("input", FloatTensorType([None, source.schema.n_features]))],
            options=_options(source.pipeline),
            target_opset=TARGET_OPSET,
        )
    except Exception as error:  # skl2onnx raises many untyped errors
        raise ConversionError(f"skl2onnx could not convert the pipeline: {error}") from None
    if type(source.pipeline.steps[-1][1]).__name__ in REGRESSOR_FAMILIES:
        _rename_output(model, REGRESSOR_OUTPUT, PROBABILITIES)
    model.doc_string = f"edgefleet {source.family} model"
    data: bytes = model.SerializeToString()
    return data


def _transformers(source: ConversionSource) -> list[tuple[str, Any, Any]]:
    return list(getattr(source.pipeline.steps[0][1], "transformers_", []))


def _rename_output(model: Any, old: str, new: str) -> None:
    names = [o.name for o in model.graph.output]
    if old not in names:
        raise ConversionError(f"skl2onnx's graph has outputs {names}, not {old!r}")
    for node in model.graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
    for output in model.graph.output:
        if output.name == old:
            output.name = new


def predict(artifact: bytes, inputs: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
    result = np.asarray(OnnxBackend(artifact).predict_proba(inputs))
    return result.reshape(len(result), -1)
