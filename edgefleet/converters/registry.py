"""The table of export formats: which model families and tasks each can take, and where
its converter lives.

A format module exports ``convert(source: ConversionSource) -> bytes`` (the artifact) and
``predict(artifact: bytes, inputs: float32 [N, F]) -> [N, n_outputs]`` (class probabilities
or a regressor's value, docs/architecture.md §2: the format's own runtime, or an evaluator of
its semantics, used for the parity check). Modules are imported only when used, so listing
the support matrix (``edgefleet formats``) never loads TensorFlow.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from edgefleet.converters.ir import ESTIMATOR_FAMILIES, Task, task_of
from edgefleet.converters.source import ConversionSource
from edgefleet.errors import InputError, UnsupportedModelError

ALL_FAMILIES = tuple(dict.fromkeys(ESTIMATOR_FAMILIES.values()))
ALL_TASKS: tuple[Task, ...] = ("binary", "multiclass", "regression")
Predict = Callable[[bytes, npt.NDArray[np.float32]], npt.NDArray[Any]]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    module: str
    filename: str
    runtime: str
    families: tuple[str, ...]
    description: str
    tasks: tuple[Task, ...] = ALL_TASKS
    # (family, task, why): cells the format refuses although it takes the family and task.
    refused: tuple[tuple[str, str, str], ...] = ()
    # What else the format refuses, of a model's make-up rather than its family or task.
    limits: tuple[str, ...] = ()

    def refusal(self, family: str, task: str) -> str | None:
        """Why this format cannot take a ``family`` model for ``task``, or None if it can."""
        if family not in self.families:
            return f"{self.name} cannot take a {family} model"
        if task not in self.tasks:
            return f"{self.name} takes {', '.join(self.tasks)} models, not {task}"
        for refused_family, refused_task, why in self.refused:
            if (refused_family, refused_task) == (family, task):
                return f"{self.name} cannot take a {task} {family} model: {why}"
        return None

    def _module(self) -> Any:
        try:
            return importlib.import_module(self.module)
        except ImportError as error:
            raise UnsupportedModelError(
                f"the {self.name} converter needs a package that is not installed "
                f"({error.name}): pip install 'edgefleet[central]'"
            ) from None

    def convert(self, source: ConversionSource) -> bytes:
        task = task_of(source.pipeline.steps[-1][1])
        refusal = self.refusal(source.family, task)
        if refusal is not None:
            raise UnsupportedModelError(
                f"{refusal} ({type(source.pipeline.steps[-1][1]).__name__}); formats that "
                f"can: {', '.join(formats_for(source.family, task)) or 'none'}"
            )
        return cast(bytes, self._module().convert(source))

    def predict(self, artifact: bytes, inputs: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        return cast(npt.NDArray[Any], self._module().predict(artifact, inputs))

    def support_files(self) -> dict[str, bytes]:
        """Files the format needs beside its artifact (the web page and its runtime), by
        path inside the bundle. Not listed in the manifest: they are the runtime, not the
        model, like onnxruntime on a device."""
        hook = getattr(self._module(), "support_files", None)
        return {} if hook is None else cast(dict[str, bytes], hook())


EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "onnx",
            "edgefleet.converters.onnx_export",
            "model.onnx",
            "onnxruntime>=1.17",
            ALL_FAMILIES,
            "ONNX (skl2onnx; trees it cannot convert built from the IR), for onnxruntime",
        ),
        ExportFormat(
            "tflite",
            "edgefleet.converters.tflite",
            "model.tflite",
            "ai-edge-litert>=1.2 or tflite-runtime>=2.14",
            ALL_FAMILIES,
            "TensorFlow Lite, builtin ops only, for LiteRT on Android and devices",
        ),
        ExportFormat(
            "web",
            "edgefleet.converters.web",
            "web/model.onnx",
            "onnxruntime-web 1.30 (WebAssembly)",
            ALL_FAMILIES,
            "browser bundle: ONNX for onnxruntime-web, a page and an ES module",
        ),
        ExportFormat(
            "coreml",
            "edgefleet.converters.coreml",
            "model.mlmodel",
            "Core ML 3 (iOS 13+, macOS 10.15+)",
            ALL_FAMILIES,
            "Core ML classic spec (coremltools builders), for iOS and macOS",
        ),
        ExportFormat(
            "pmml",
            "edgefleet.converters.pmml",
            "model.pmml",
            "a PMML 4.4 evaluator (JPMML-Evaluator, Java 11+)",
            ALL_FAMILIES,
            "PMML 4.4 for central scoring engines (checked by JPMML-Evaluator); "
            "never loaded by devices",
            refused=(
                (
                    "sgd",
                    "multiclass",
                    "its one-vs-rest sigmoids normalised to sum 1 are no PMML normalisation",
                ),
            ),
        ),
    )
}
# Formats for the central side only: not in a bundle unless --formats names them (devices
# would download bytes they never load).
CENTRAL_ONLY_FORMATS: tuple[str, ...] = ("pmml",)
# Every device format, unless --formats chooses.
DEFAULT_FORMATS: tuple[str, ...] = tuple(n for n in EXPORT_FORMATS if n not in CENTRAL_ONLY_FORMATS)


def export_format(name: str) -> ExportFormat:
    try:
        return EXPORT_FORMATS[name]
    except KeyError:
        raise InputError(
            f"unknown format {name!r}; edgefleet exports: {', '.join(EXPORT_FORMATS)}"
        ) from None


def formats_for(family: str, task: str = "binary") -> list[str]:
    return [f.name for f in EXPORT_FORMATS.values() if f.refusal(family, task) is None]


def parse_formats(text: str | None) -> tuple[str, ...]:
    """``"onnx,tflite"`` -> ("onnx", "tflite"); None -> every format."""
    if not text:
        return DEFAULT_FORMATS
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    for name in names:
        export_format(name)
    return names
