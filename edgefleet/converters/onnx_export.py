"""ONNX export with skl2onnx and its onnxruntime check.

The graph's input is ``input`` (float32 ``[N, F]``), its outputs ``label`` and
``probabilities`` (no ZipMap: onnxruntime-web cannot return maps). A StandardScaler is
emitted as Sub + Div rather than Scaler's multiply by reciprocal, which matches
scikit-learn's float rounding (docs/architecture.md §4).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

from edgefleet.converters.source import ConversionSource
from edgefleet.edge.backends.onnx import OnnxBackend
from edgefleet.errors import ConversionError

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def _options(pipeline: Any) -> dict[int, dict[str, Any]]:
    options: dict[int, dict[str, Any]] = {id(pipeline.steps[-1][1]): {"zipmap": False}}
    for _, transformer, _ in pipeline.steps[0][1].transformers_:
        for _, step in getattr(transformer, "steps", []):
            if type(step).__name__ == "StandardScaler":
                options[id(step)] = {"div": "div"}
    return options


def convert(source: ConversionSource) -> bytes:
    try:
        model = to_onnx(
            source.pipeline,
            initial_types=[("input", FloatTensorType([None, source.schema.n_features]))],
            options=_options(source.pipeline),
            target_opset=TARGET_OPSET,
        )
    except Exception as error:  # skl2onnx raises many untyped errors
        raise ConversionError(f"skl2onnx could not convert the pipeline: {error}") from None
    model.doc_string = f"edgefleet {source.family} model"
    data: bytes = model.SerializeToString()
    return data


def predict(artifact: bytes, inputs: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
    return OnnxBackend(artifact).predict_proba(inputs)
