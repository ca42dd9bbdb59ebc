"""edge/ must stay light: a device installs edgefleet with only the edge extras."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import edgefleet

EDGE = Path(edgefleet.__file__).parent / "edge"
FORBIDDEN = (
    "sklearn",
    "tensorflow",
    "coremltools",
    "skl2onnx",
    "pandas",
    "onnx",
    "edgefleet.central",
    "edgefleet.converters",
    "edgefleet.web",
    "edgefleet.cli",
)


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_edge_sources_import_nothing_forbidden() -> None:
    offenders = [
        f"{path.relative_to(EDGE.parent)}: {name}"
        for path in sorted(EDGE.rglob("*.py"))
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert offenders == []


def test_edge_runtime_loads_no_heavy_module() -> None:
    """Import every edge module in a fresh interpreter, then list what got loaded."""
    modules = sorted(
        "edgefleet." + ".".join(p.relative_to(EDGE.parent).with_suffix("").parts)
        for p in EDGE.rglob("*.py")
        if p.name != "__init__.py"
    )
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout
    )
    heavy = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert "edgefleet.edge.backends.onnx" in loaded
    assert heavy == []
