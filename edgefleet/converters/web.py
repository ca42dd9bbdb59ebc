"""The browser bundle: the ONNX model for onnxruntime-web, plus the page and the runtime
that run it offline (docs/architecture.md §4, Web).

The artifact is byte for byte the ONNX export, so its parity check is onnxruntime's; the
browser's own parity is proven by ``tests/web/test_browser_bundle.py`` in a real Chromium.

Support files written beside the artifact (``web/`` in the bundle)::

    web/index.html                          the demo page (edgefleet/web/static/bundle)
    web/edgefleet.js                        the ES module: load, verify, self-test, score
    web/ort/ort.wasm.min.js                 onnxruntime-web, WebAssembly-only build
    web/ort/ort-wasm-simd-threaded.mjs      its Emscripten loader (imported at run time)
    web/ort/ort-wasm-simd-threaded.wasm     the runtime itself (~14 MB)

The three ``ort`` files come from the npm package pinned in ``package.json``, installed
into ``node_modules/`` by ``scripts/setup`` (``npm ci``). They are found by walking up from
this package (a repository checkout) or at ``$EDGEFLEET_NODE_MODULES``.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.converters import onnx_export
from edgefleet.converters.source import ConversionSource
from edgefleet.errors import ConversionError

ORT_PACKAGE = "onnxruntime-web"
ORT_VERSION = "1.30.0"
"""The version pinned in package.json; the manifest's runtime string names it."""

ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILES = ("index.html", "edgefleet.js")
NODE_MODULES_ENV = "EDGEFLEET_NODE_MODULES"
_SETUP_HINT = "run scripts/setup (npm ci)"


def convert(source: ConversionSource) -> bytes:
    """The same bytes as the ``onnx`` format: onnxruntime-web runs the standard graph."""
    find_ort_dist()  # fail before the conversion work, not after it, when npm ci never ran
    return onnx_export.convert(source)


def predict(artifact: bytes, inputs: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
    return onnx_export.predict(artifact, inputs)


def find_ort_dist() -> Path:
    """``node_modules/onnxruntime-web/dist`` of the pinned version, or ConversionError."""
    configured = os.environ.get(NODE_MODULES_ENV)
    if configured:
        candidates = [Path(configured)]
        where = f"${NODE_MODULES_ENV} ({configured})"
    else:
        candidates = [parent / "node_modules" for parent in Path(__file__).resolve().parents]
        where = f"node_modules/ above {Path(__file__).resolve().parent}"
    for node_modules in candidates:
        package = node_modules / ORT_PACKAGE
        if (package / "package.json").is_file():
            return _checked_dist(package)
    raise ConversionError(
        f"the web format needs the npm package {ORT_PACKAGE} {ORT_VERSION}, not found in "
        f"{where}: {_SETUP_HINT}"
    )


def _checked_dist(package: Path) -> Path:
    try:
        version = json.loads((package / "package.json").read_text("utf-8")).get("version")
    except (OSError, ValueError, AttributeError) as error:
        raise ConversionError(
            f"{package}/package.json is unreadable ({error}): {_SETUP_HINT}"
        ) from None
    if version != ORT_VERSION:
        raise ConversionError(
            f"{package} is {ORT_PACKAGE} {version}, edgefleet ships {ORT_VERSION}: {_SETUP_HINT}"
        )
    dist = package / "dist"
    missing = [name for name in ORT_FILES if not (dist / name).is_file()]
    if missing:
        raise ConversionError(f"{dist} lacks {', '.join(missing)}: {_SETUP_HINT}")
    return dist


def support_files() -> dict[str, bytes]:
    """The page, the ES module and the onnxruntime-web files, by path in the bundle."""
    page = resources.files("edgefleet.web") / "static" / "bundle"
    files = {f"web/{name}": (page / name).read_bytes() for name in PAGE_FILES}
    dist = find_ort_dist()
    files.update({f"web/ort/{name}": (dist / name).read_bytes() for name in ORT_FILES})
    return files
