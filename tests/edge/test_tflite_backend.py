"""The LiteRT edge backend: loads a .tflite file, scores any batch size with one
interpreter, survives threads, falls back to tflite-runtime, and refuses bad files with a
BundleError that says what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.central.trainer import TrainedModel
from edgefleet.edge.backends import tflite as backend_module
from edgefleet.edge.backends.base import backend_spec
from edgefleet.edge.backends.tflite import TFLiteBackend, load
from edgefleet.errors import BundleError, RecordError, RuntimeUnavailableError

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model_file(
    trained: Callable[[str], TrainedModel], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, TrainedModel]:
    # Converting needs TensorFlow, which only the test (central) side may import.
    from edgefleet.converters.ir import read_pipeline
    from edgefleet.converters.tflite import convert_ir

    model = trained("gb")
    path = tmp_path_factory.mktemp("tflite") / "model.tflite"
    path.write_bytes(convert_ir(read_pipeline(model.pipeline)))
    return path, model


def test_loads_a_file_and_scores(model_file: tuple[Path, TrainedModel]) -> None:
    path, model = model_file
    backend = load(path)
    assert backend.format == "tflite"
    inputs = np.concatenate([model.holdout_inputs, model.golden_inputs()])
    got = backend.predict_proba(inputs)
    assert got.dtype == np.float32
    assert got.shape == (len(inputs), 2)
    assert np.abs(got - model.pipeline.predict_proba(inputs)).max() <= TOLERANCE


def test_the_backend_table_loads_it(model_file: tuple[Path, TrainedModel]) -> None:
    path, model = model_file
    spec = backend_spec("tflite")
    assert spec.available()
    backend = spec.load(path)
    rows = model.holdout_inputs[:3]
    assert np.abs(backend.predict_proba(rows) - model.pipeline.predict_proba(rows)).max() <= 1e-5


def test_one_interpreter_resized_only_when_the_batch_changes(
    model_file: tuple[Path, TrainedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, model = model_file
    backend = TFLiteBackend(path)
    interpreter = backend._interpreter
    resizes: list[list[int]] = []
    original = interpreter.resize_tensor_input

    def spy(index: int, shape: list[int], strict: bool = False) -> Any:
        resizes.append(list(shape))
        return original(index, shape, strict=strict)

    monkeypatch.setattr(interpreter, "resize_tensor_input", spy)
    rows = np.concatenate([model.holdout_inputs] * 2)[:1000]
    expected = model.pipeline.predict_proba(rows)
    for size in (1, 1, 7, 1000, 1000, 7, 1):
        got = backend.predict_proba(rows[:size])
        assert got.shape == (size, 2)
        assert np.abs(got - expected[:size]).max() <= TOLERANCE
    assert backend._interpreter is interpreter
    n = model.schema.n_features
    assert resizes == [[1, n], [7, n], [1000, n], [7, n], [1, n]]


def test_results_survive_the_next_call(model_file: tuple[Path, TrainedModel]) -> None:
    path, model = model_file
    backend = TFLiteBackend(path)
    first = backend.predict_proba(model.holdout_inputs[:5])
    kept = first.copy()
    backend.predict_proba(model.holdout_inputs[5:10])
    assert np.array_equal(first, kept)


def test_concurrent_callers_each_get_their_own_answer(
    model_file: tuple[Path, TrainedModel],
) -> None:
    path, model = model_file
    backend = TFLiteBackend(path)
    rows = model.holdout_inputs
    expected = model.pipeline.predict_proba(rows)
    failures: list[str] = []

    def work(size: int) -> None:
        for start in range(0, 200, size):
            got = backend.predict_proba(rows[start : start + size])
            if np.abs(got - expected[start : start + size]).max() > TOLERANCE:
                failures.append(f"batch of {size} at {start}")

    threads = [threading.Thread(target=work, args=(size,)) for size in (1, 3, 7, 50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_empty_batch_and_wrong_width(model_file: tuple[Path, TrainedModel]) -> None:
    path, model = model_file
    backend = TFLiteBackend(path)
    empty = backend.predict_proba(np.zeros((0, model.schema.n_features), dtype=np.float32))
    assert empty.shape == (0, 2)
    with pytest.raises(RecordError, match=rf"shape \[N, {model.schema.n_features}\], got \[2, 3\]"):
        backend.predict_proba(np.zeros((2, 3), dtype=np.float32))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04 this is a zip file, not a model" * 4, "corrupt or not a TensorFlow Lite"),
        (b"", "is empty"),
    ],
)
def test_a_bad_file_is_a_bundle_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    with pytest.raises(BundleError, match=message) as caught:
        load(path)
    assert str(path) in str(caught.value)


def test_a_truncated_model_is_a_bundle_error(
    model_file: tuple[Path, TrainedModel], tmp_path: Path
) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(model_file[0].read_bytes()[:-200])
    with pytest.raises(BundleError, match=r"LiteRT cannot load model file .*corrupt"):
        load(path)


def test_a_missing_file_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="cannot read model file"):
        load(tmp_path / "nowhere.tflite")


def test_falls_back_to_tflite_runtime(
    model_file: tuple[Path, TrainedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Devices on numpy<2 have tflite-runtime instead of ai-edge-litert; same class API."""
    from ai_edge_litert.interpreter import Interpreter

    created: list[Any] = []

    class RuntimeInterpreter(Interpreter):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            created.append(kwargs.get("num_threads"))
            super().__init__(**kwargs)

    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = RuntimeInterpreter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # not installed
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    path, model = model_file
    backend = TFLiteBackend(path)
    assert created == [1]
    rows = model.holdout_inputs[:4]
    assert np.abs(backend.predict_proba(rows) - model.pipeline.predict_proba(rows)).max() <= 1e-5


def test_no_interpreter_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in backend_module.INTERPRETER_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(RuntimeUnavailableError, match=r"pip install 'edgefleet\[tflite\]'"):
        backend_module.interpreter_class()


def test_scoring_loads_no_heavy_module(model_file: tuple[Path, TrainedModel]) -> None:
    """On a device: load and score in a fresh interpreter, then list what got imported."""
    path, model = model_file
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "from edgefleet.edge.backends.tflite import load\n"
        f"backend = load({str(path)!r})\n"
        f"backend.predict_proba(np.zeros((2, {model.schema.n_features}), dtype=np.float32))\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    heavy = ("tensorflow", "sklearn", "edgefleet.central", "edgefleet.converters")
    assert [m for m in loaded if m.split(".")[0] in heavy or m.startswith(heavy)] == []
    assert "ai_edge_litert.interpreter" in loaded
