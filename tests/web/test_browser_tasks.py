"""Multi-class and regression web bundles in a real browser (Debian's chromium, Playwright):
the bundle's page verifies and self-tests them (a regressor within its relative tolerance),
shows what fits the task (the label and every class's probability, or the value), and
``predict()`` answers as Python's onnxruntime does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.svm import LinearSVC

from edgefleet.central.byo.register import register_model
from edgefleet.central.export import export_bundle
from edgefleet.converters.onnx_export import predict as onnx_predict
from edgefleet.edge.encoding import RecordEncoder
from edgefleet.edge.manifest import Manifest, within_tolerance
from edgefleet.edge.signing import load_private_key
from tests.byo import grid
from tests.web.test_browser_bundle import BROWSER_VS_PYTHON, browser, open_page

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared


def _bundle(frame: pd.DataFrame, pipeline: Any, key: Path, home: Path) -> Path:
    registered = register_model(pipeline, frame, grid.TARGET, home=home / "home", name="m")
    return export_bundle(registered.version, ["web"], home / "bundle", load_private_key(key)).bundle


@pytest.fixture(scope="module")
def bundles(
    keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    wine = grid.multiclass_sets()["wine"]
    diabetes = grid.regression_sets()["diabetes"]
    iris = grid.binary_sets()["iris"]
    return {
        "native": _bundle(
            wine,
            grid.fit_native_categorical(wine, "multiclass"),
            keypair[0],
            tmp_path_factory.mktemp("web-native"),
        ),
        "decision": _bundle(
            iris,
            grid.fit(iris, "standard+onehot", LinearSVC()),
            keypair[0],
            tmp_path_factory.mktemp("web-decision"),
        ),
        "multiclass": _bundle(
            wine,
            grid.fit(wine, "standard+onehot", grid.ESTIMATORS["logreg"]()),
            keypair[0],
            tmp_path_factory.mktemp("web-multiclass"),
        ),
        "regression": _bundle(
            diabetes,
            grid.fit(diabetes, "standard+onehot", grid.REGRESSORS["rf"]()),
            keypair[0],
            tmp_path_factory.mktemp("web-regression"),
        ),
    }


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_the_page_shows_what_fits_the_task(
    task: str, browser: Any, bundles: dict[str, Path]
) -> None:
    root = bundles[task]
    manifest = Manifest.from_bytes((root / "manifest.json").read_bytes())
    assert manifest.schema.task == task
    records = [dict(g.record) for g in manifest.golden]
    expected = np.asarray(
        onnx_predict(
            (root / "web" / "model.onnx").read_bytes(),
            RecordEncoder(manifest.schema).encode(records),
        ),
        dtype=np.float64,
    ).reshape(len(records), -1)
    with open_page(browser, root) as (page, log):
        assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")
        assert page.inner_text("#status").startswith("Verified")
        assert page.inner_text("#title") == f"Predict {manifest.schema.target}"
        answers = page.evaluate("(records) => window.edgefleetDemo.predict(records)", records)
        shown = page.get_attribute("#probability", "data-value")
        caption = page.inner_text("#caption")
        rows = page.eval_on_selector_all(
            "#classes li", "(items) => items.map((li) => [li.dataset.label, li.dataset.value])"
        )
        refused = page.evaluate(
            "async (records) => { try { await (await import('./edgefleet.js'))"
            ".score(window.edgefleetDemo.bundle, records); return null; }"
            " catch (error) { return error.message; } }",
            records[:1],
        )
        log.check()
    assert refused is not None
    assert f"is a {task} model: it has no positive class" in refused
    first = expected[0]
    if task == "regression":
        got = np.array([[a["value"]] for a in answers])
        assert caption.startswith(f"predicted {manifest.schema.target}")
        assert float(shown) == pytest.approx(first[0], rel=1e-6)
        assert rows == []
        assert within_tolerance(got, expected, task=task, tolerance=manifest.tolerance).all()
    else:
        classes = list(manifest.schema.classes)
        got = np.array([[a["probabilities"][c] for c in classes] for a in answers])
        assert [a["label"] for a in answers] == [classes[k] for k in got.argmax(axis=1)]
        assert shown == classes[int(first.argmax())]
        assert caption.startswith(f"most probable {manifest.schema.target}")
        assert [label for label, _ in rows] == classes
        assert np.abs(np.array([float(v) for _, v in rows]) - first).max() <= BROWSER_VS_PYTHON
    assert np.abs(got - expected).max() <= BROWSER_VS_PYTHON * max(1.0, np.abs(expected).max())


def test_the_page_calls_a_decision_function_model_s_output_a_score(
    browser: Any, bundles: dict[str, Path]
) -> None:
    """A LinearSVC's output is its decision function mapped into (0, 1): a score, never
    called a probability (docs/architecture.md §2)."""
    root = bundles["decision"]
    manifest = Manifest.from_bytes((root / "manifest.json").read_bytes())
    assert manifest.schema.outputs == "decision"
    with open_page(browser, root) as (page, log):
        assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")
        shown = page.inner_text("#probability")
        caption = page.inner_text("#caption")
        log.check()
    target, positive = manifest.schema.target, manifest.schema.classes[1]
    assert caption.startswith(f"score for {target} = {positive} (a decision function")
    assert "not a probability" in caption
    assert "%" not in shown


def test_an_onnx_graph_built_from_the_ir_runs_in_the_browser(
    browser: Any, bundles: dict[str, Path]
) -> None:
    """HistGradientBoosting with native categorical splits: its ONNX comes from the IR
    (converters/onnx_ir.py, TreeEnsembleRegressor with shared nodes); onnxruntime-web
    verifies its golden vectors and answers as Python's onnxruntime does."""
    root = bundles["native"]
    manifest = Manifest.from_bytes((root / "manifest.json").read_bytes())
    records = [dict(g.record) for g in manifest.golden]
    expected = onnx_predict(
        (root / "web" / "model.onnx").read_bytes(), RecordEncoder(manifest.schema).encode(records)
    )
    with open_page(browser, root) as (page, log):
        assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")
        answers = page.evaluate("(records) => window.edgefleetDemo.predict(records)", records)
        log.check()
    classes = list(manifest.schema.classes)
    got = np.array([[a["probabilities"][c] for c in classes] for a in answers])
    assert np.abs(got - expected).max() <= BROWSER_VS_PYTHON
