"""LiteRT (TensorFlow Lite) backend.

The interpreter comes from ``ai-edge-litert`` (numpy 2) or, on devices still on numpy<2,
from ``tflite-runtime``; both expose the same ``Interpreter`` class. This module imports
nothing but numpy, that interpreter and ``edgefleet.errors`` (docs/architecture.md §1: a device
installs only the edge extras).

edgefleet's converter writes models with a dynamic batch dimension (``input`` is
``[-1, F]``), so the backend resizes the input to the batch it is given. Resizing plus
``allocate_tensors()`` costs far more than a small model's ``invoke()``, so it happens only
when the batch size changes. A LiteRT interpreter holds its tensors in place and is not
safe to use from two threads at once, hence one lock per backend.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.errors import BundleError, RecordError, RuntimeUnavailableError

INPUT = "input"
PROBABILITIES = "probabilities"
# Tried in order: ai-edge-litert is the maintained package; tflite-runtime is its
# predecessor, the only one that installs beside numpy<2.
INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


def interpreter_class() -> Any:
    """The first installed LiteRT ``Interpreter`` class."""
    for name in INTERPRETER_MODULES:
        try:
            return importlib.import_module(name).Interpreter
        except ImportError:
            continue
    raise RuntimeUnavailableError(
        "no TensorFlow Lite interpreter is installed here: pip install 'edgefleet[tflite]' "
        "(or tflite-runtime on devices that need numpy<2)"
    )


class TFLiteBackend:
    format = "tflite"

    def __init__(self, model: Path | bytes, threads: int = 1):
        where = "the model" if isinstance(model, bytes) else f"model file {str(model)!r}"
        if isinstance(model, bytes):
            content = model
        else:
            try:
                content = Path(model).read_bytes()
            except OSError as error:
                raise BundleError(f"cannot read {where}: {error.strerror}") from None
        if not content:
            raise BundleError(f"{where} is empty; it is not a TensorFlow Lite model")
        factory = interpreter_class()
        try:
            # Keep the bytes: the interpreter points into this buffer for its lifetime.
            self._content = content
            self._interpreter = factory(model_content=content, num_threads=threads)
            self._interpreter.allocate_tensors()
        except Exception as error:  # LiteRT raises bare ValueError/RuntimeError
            raise BundleError(
                f"LiteRT cannot load {where}: {error}. The file is corrupt or not a "
                "TensorFlow Lite model; re-export or re-download the bundle."
            ) from None
        self._input, self._output = self._contract_tensors(where)
        shape = self._interpreter.get_input_details()[0]["shape_signature"]
        if len(shape) != 2 or shape[0] != -1 or shape[1] <= 0:
            raise BundleError(
                f"{where} has input shape {list(shape)}; the model contract needs a float32 "
                "input of shape [-1, F] with a dynamic batch (re-export it with edgefleet)"
            )
        self.n_features = int(shape[1])
        self.n_outputs = self._output_columns()
        self._rows = -1  # the batch size the tensors are allocated for; -1: none yet
        self._lock = threading.Lock()

    def _contract_tensors(self, where: str) -> tuple[int, int]:
        """Tensor indices of the contract's input and ``probabilities`` output."""
        interpreter = self._interpreter
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        if len(inputs) != 1 or inputs[0]["dtype"] != np.float32:
            raise BundleError(
                f"{where} does not follow the model contract: it has "
                f"{len(inputs)} inputs; expected one float32 input"
            )
        signatures = interpreter.get_signature_list()
        if signatures:
            # The signature names the output even where the converter renamed its tensor.
            runner = interpreter.get_signature_runner(next(iter(signatures)))
            named = runner.get_output_details()
            if PROBABILITIES not in named:
                raise BundleError(
                    f"{where} does not follow the model contract: its outputs are "
                    f"{sorted(named)}; expected one named {PROBABILITIES!r}"
                )
            return int(inputs[0]["index"]), int(named[PROBABILITIES]["index"])
        if len(outputs) != 1:
            raise BundleError(
                f"{where} has no signature and {len(outputs)} outputs; expected one "
                f"output, {PROBABILITIES!r}"
            )
        return int(inputs[0]["index"]), int(outputs[0]["index"])

    def _output_columns(self) -> int:
        """Columns of the output (class probabilities, or 1 for a regressor's value)."""
        for detail in self._interpreter.get_output_details():
            if detail["index"] == self._output:
                shape = detail["shape_signature"]
                return int(shape[1]) if len(shape) == 2 and shape[1] > 0 else 1
        return 1

    def predict_proba(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``[N, n_outputs]`` (docs/architecture.md §2)."""
        batch = np.ascontiguousarray(inputs, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self.n_features:
            raise RecordError(
                f"the model takes float32 inputs of shape [N, {self.n_features}], "
                f"got {list(batch.shape)}"
            )
        rows = batch.shape[0]
        if rows == 0:
            # LiteRT kernels are not all defined for empty tensors; nothing to score anyway.
            return np.zeros((0, self.n_outputs), dtype=np.float32)
        with self._lock:
            if rows != self._rows:
                self._interpreter.resize_tensor_input(
                    self._input, [rows, self.n_features], strict=True
                )
                self._interpreter.allocate_tensors()
                self._rows = rows
            self._interpreter.set_tensor(self._input, batch)
            self._interpreter.invoke()
            # get_tensor copies, so the result survives the next invoke().
            result: npt.NDArray[np.float32] = self._interpreter.get_tensor(self._output)
        return result.reshape(rows, -1)


def load(path: Path) -> TFLiteBackend:
    return TFLiteBackend(path)
