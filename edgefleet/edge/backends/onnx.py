"""onnxruntime backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edgefleet.errors import BundleError

PROBABILITIES = "probabilities"


def session_options(threads: int = 1) -> ort.SessionOptions:
    """One thread by default: a device shares its cores with the app that scores, and for
    the small models edgefleet ships a thread pool costs more than it gives."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


class OnnxBackend:
    format = "onnx"

    def __init__(self, model: Path | bytes, threads: int = 1):
        try:
            source = model if isinstance(model, bytes) else str(model)
            self.session = ort.InferenceSession(
                source, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise BundleError(f"onnxruntime cannot load the model: {error}") from None
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1 or PROBABILITIES not in outputs:
            raise BundleError(
                f"the ONNX model does not follow the model contract: inputs "
                f"{[i.name for i in inputs]}, outputs {outputs}; expected one input and an "
                f"output named {PROBABILITIES!r}"
            )
        self._input = inputs[0].name
        self._outputs = [PROBABILITIES]

    def predict_proba(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``[N, n_outputs]`` (docs/architecture.md §2); a graph that gives a regressor's
        values as ``[N]`` is read as one column."""
        result: npt.NDArray[np.float32] = self.session.run(self._outputs, {self._input: inputs})[0]
        return as_columns(result)


def as_columns(result: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A model's outputs as ``[N, n_outputs]``: ``[N]`` (one value per row) becomes
    ``[N, 1]``."""
    return result.reshape(-1, 1) if result.ndim == 1 else result


def load(path: Path) -> OnnxBackend:
    return OnnxBackend(path)
