"""What a scoring runtime must offer, and the table of the ones edgefleet knows.

Backends are listed in order of preference; a device uses the first one whose Python
package is installed and whose format the bundle carries, unless a format is asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edgefleet.errors import RuntimeUnavailableError


class Backend(Protocol):
    format: str

    def predict_proba(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """float32 ``[N, F]`` -> float32 ``[N, n_outputs]`` (docs/architecture.md §2): the
        class probabilities in schema class order, or a regressor's value in one column."""
        ...


@dataclass(frozen=True)
class BackendSpec:
    format: str
    modules: tuple[str, ...]  # any one of these importable makes the backend available
    loader: str  # "module:function" taking (path) and returning a Backend
    install_hint: str

    def available(self) -> bool:
        return any(importlib.util.find_spec(m) is not None for m in self.modules)

    def load(self, path: Path) -> Backend:
        module_name, function_name = self.loader.split(":")
        factory: Callable[[Path], Backend] = getattr(
            importlib.import_module(module_name), function_name
        )
        return factory(path)


BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec(
        "onnx",
        ("onnxruntime",),
        "edgefleet.edge.backends.onnx:load",
        "pip install 'edgefleet[onnx]'",
    ),
    BackendSpec(
        "tflite",
        ("ai_edge_litert", "tflite_runtime"),
        "edgefleet.edge.backends.tflite:load",
        "pip install 'edgefleet[tflite]'",
    ),
)


def backend_spec(fmt: str) -> BackendSpec:
    for spec in BACKENDS:
        if spec.format == fmt:
            return spec
    runnable = ", ".join(s.format for s in BACKENDS)
    raise RuntimeUnavailableError(f"the edge runtime cannot run {fmt} models; it runs: {runnable}")


def choose_format(bundle_formats: tuple[str, ...], wanted: str | None = None) -> str:
    """The format to score with: ``wanted`` if given (and runnable), else the first
    runnable backend whose format the bundle carries."""
    if wanted is not None:
        spec = backend_spec(wanted)
        if wanted not in bundle_formats:
            raise RuntimeUnavailableError(
                f"the bundle has no {wanted} artifact (it has: {', '.join(bundle_formats)})"
            )
        if not spec.available():
            raise RuntimeUnavailableError(
                f"no {wanted} runtime is installed here: {spec.install_hint}"
            )
        return wanted
    for spec in BACKENDS:
        if spec.format in bundle_formats and spec.available():
            return spec.format
    hints = "; ".join(
        f"{s.format}: {s.install_hint}" for s in BACKENDS if s.format in bundle_formats
    )
    raise RuntimeUnavailableError(
        f"no installed runtime can run this bundle's formats ({', '.join(bundle_formats)}). "
        f"Install one: {hints or 'the bundle has no format the edge runtime can run'}"
    )
