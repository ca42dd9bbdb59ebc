"""The model contract per task (docs/architecture.md §2): the schema's task and classes, their
JSON form (binary byte-identical to before), golden vectors of ``n_outputs`` values, and the
Scorer's answers, on real onnxruntime sessions of hand-built multi-class and regression
graphs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.central.registry import Registry
from edgefleet.central.trainer import TrainedModel
from edgefleet.edge.backends.onnx import OnnxBackend
from edgefleet.edge.manifest import (
    DEFAULT_TOLERANCE,
    REGRESSION_RTOL,
    Manifest,
    task_tolerance,
    within_tolerance,
)
from edgefleet.edge.schema import MAX_CLASSES, FeatureSchema, NumericFeature
from edgefleet.edge.scorer import Scorer
from edgefleet.errors import InputError, ManifestError, SelfTestError

IRIS = ("setosa", "versicolor", "virginica")


def _schema(task: str, classes: tuple[str, ...]) -> FeatureSchema:
    return FeatureSchema(
        features=(NumericFeature("a"), NumericFeature("b")),
        target="y",
        classes=classes,
        task=task,  # type: ignore[arg-type]
    )


def test_binary_json_is_unchanged_and_has_no_task() -> None:
    schema = _schema("binary", ("no", "yes"))
    data = schema.to_dict()
    assert "task" not in data
    assert list(data) == ["target", "classes", "features"]
    assert FeatureSchema.from_dict(data) == schema
    assert schema.n_outputs == 2
    assert schema.is_classifier


def test_multiclass_and_regression_round_trip() -> None:
    multi = _schema("multiclass", IRIS)
    assert multi.to_dict()["task"] == "multiclass"
    assert multi.to_dict()["classes"] == list(IRIS)
    assert FeatureSchema.from_dict(json.loads(json.dumps(multi.to_dict()))) == multi
    assert multi.n_outputs == 3
    regression = _schema("regression", ())
    assert regression.to_dict()["classes"] == []
    assert regression.to_dict()["task"] == "regression"
    assert FeatureSchema.from_dict(regression.to_dict()) == regression
    assert regression.n_outputs == 1
    assert not regression.is_classifier


@pytest.mark.parametrize(
    ("task", "classes", "message"),
    [
        ("binary", IRIS, "binary schema needs exactly two.*use task 'multiclass'"),
        ("binary", ("a",), "binary schema needs exactly two"),
        ("multiclass", ("a", "b"), "needs 3 to 64 classes, got 2; use task 'binary'"),
        ("multiclass", ("a", "b", "a"), "repeat a label"),
        ("regression", ("a", "b"), "regression schema has no classes"),
        ("ranking", ("a", "b"), "task must be one of binary, multiclass, regression"),
    ],
)
def test_classes_must_fit_the_task(task: str, classes: tuple[str, ...], message: str) -> None:
    with pytest.raises(InputError, match=message):
        _schema(task, classes)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "clustering"}, "'task' must be one of"),
        ({"task": 3}, "'task' must be one of"),
        ({"classes": [0, 1, 2], "task": "multiclass"}, "at most 64 strings"),
        ({"classes": [str(i) for i in range(MAX_CLASSES + 1)], "task": "multiclass"}, "at most"),
        ({"classes": ["a", "b", "c"]}, "binary schema needs exactly two"),
        ({"classes": ["a"], "task": "regression"}, "regression schema has no classes"),
    ],
)
def test_hostile_schema_json_is_refused(change: dict[str, object], message: str) -> None:
    data = {**_schema("binary", ("no", "yes")).to_dict(), **change}
    with pytest.raises(InputError, match=message):
        FeatureSchema.from_dict(data)


def test_within_tolerance_is_absolute_for_probabilities_and_relative_for_values() -> None:
    expected = np.array([[200.0], [0.0]])
    near = expected + np.array([[150 * REGRESSION_RTOL], [DEFAULT_TOLERANCE / 2]])
    assert within_tolerance(near, expected, task="regression", tolerance=DEFAULT_TOLERANCE).all()
    assert not within_tolerance(near, expected, task="binary", tolerance=DEFAULT_TOLERANCE)[0, 0]
    far = expected + 300 * REGRESSION_RTOL
    assert not within_tolerance(far, expected, task="regression", tolerance=DEFAULT_TOLERANCE)[0, 0]
    # A regressor's absolute part scales with its values' magnitude (at least 1).
    values = np.array([[300.0], [-100.0], [0.5]])
    assert task_tolerance("regression", values, 1e-5) == pytest.approx(1e-5 * 400.5 / 3)
    assert task_tolerance("regression", np.array([[0.1]]), 1e-5) == 1e-5
    assert task_tolerance("multiclass", values, 1e-5) == 1e-5
    nan = np.array([[np.nan], [0.0]])
    assert not within_tolerance(nan, expected, task="regression", tolerance=1.0)[0, 0]


# --- real onnxruntime sessions of hand-built graphs (the converters' own graphs for these
# tasks are tested by tests/byo/test_grid.py) ---


def _graph(weights: npt.NDArray[np.float32], *, softmax: bool, flat: bool = False) -> bytes:
    """``input [N, F] -> input @ W + b`` (then softmax, or flattened to ``[N]``)."""
    n_features, n_out = weights.shape
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["z"]),
    ]
    last = "z"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["p"], axis=1))
        last = "p"
    if flat:
        nodes.append(helper.make_node("Reshape", ["z", "flat_shape"], ["zf"]))
        last = "zf"
    nodes.append(helper.make_node("Identity", [last], ["probabilities"]))
    initializers = [
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(np.linspace(-1, 1, n_out).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat_shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "contract",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None] * (2 - flat))],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def binary_manifest(
    trained: Callable[[str], TrainedModel], tmp_path_factory: pytest.TempPathFactory
) -> Manifest:
    home = tmp_path_factory.mktemp("contract")
    return Registry(Path(home)).register(trained("logreg"), data_sha256="c" * 64).manifest()


def _task_model(
    manifest: Manifest, task: str, classes: tuple[str, ...], *, flat: bool = False
) -> tuple[Manifest, OnnxBackend]:
    """The binary manifest turned into ``task``: its schema, and golden outputs computed
    with numpy from the same weights the graph holds."""
    schema = replace(manifest.schema, classes=classes, task=task)
    n_out = schema.n_outputs
    rng = np.random.default_rng(5)
    weights = (rng.normal(size=(schema.n_features, n_out)) * 0.3).astype(np.float32)
    backend = OnnxBackend(_graph(weights, softmax=task != "regression", flat=flat))
    inputs = np.array([g.input_values() for g in manifest.golden], dtype=np.float32)
    outputs = np.nan_to_num(inputs) @ weights.astype(np.float64) + np.linspace(-1, 1, n_out)
    if task != "regression":
        outputs = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        outputs /= outputs.sum(axis=1, keepdims=True)
    golden = tuple(
        replace(g, probabilities=tuple(float(v) for v in row))
        for g, row in zip(manifest.golden, outputs, strict=True)
    )
    return replace(manifest, schema=schema, golden=golden), backend


def _complete(manifest: Manifest) -> Manifest:
    """The golden vectors without a missing value: the hand-built graphs do not impute."""
    golden = tuple(g for g in manifest.golden if None not in g.input)
    assert len(golden) >= 5
    return replace(manifest, golden=golden)


def test_multiclass_scorer(binary_manifest: Manifest) -> None:
    manifest, backend = _task_model(_complete(binary_manifest), "multiclass", IRIS)
    scorer = Scorer(manifest, backend)
    assert scorer.self_test_error is not None
    assert scorer.self_test_error < 1e-5
    records = [g.record for g in manifest.golden]
    scores = scorer.score(records)
    assert scores.shape == (len(records), 3)
    expected = np.array([g.probabilities for g in manifest.golden])
    assert scorer.predict(records) == [IRIS[i] for i in expected.argmax(axis=1)]
    assert set(scorer.predict(records)) <= set(IRIS)
    with pytest.raises(InputError, match=r"multiclass model: it has no positive class.*predict"):
        scorer.positive(records)
    # The manifest's JSON form round-trips with the task and three outputs per golden vector.
    again = Manifest.from_bytes(manifest.to_bytes())
    assert again == manifest
    assert again.schema.task == "multiclass"


@pytest.mark.parametrize("flat", [False, True], ids=["column", "flat"])
def test_regression_scorer(binary_manifest: Manifest, flat: bool) -> None:
    manifest, backend = _task_model(_complete(binary_manifest), "regression", (), flat=flat)
    scorer = Scorer(manifest, backend)
    records = [g.record for g in manifest.golden]
    assert scorer.score(records).shape == (len(records), 1)
    values = scorer.predict(records)
    expected = [g.probabilities[0] for g in manifest.golden]
    assert all(isinstance(v, float) for v in values)
    assert np.allclose(values, expected, rtol=REGRESSION_RTOL, atol=DEFAULT_TOLERANCE)
    with pytest.raises(InputError, match="regression model: it has no positive class"):
        scorer.positive(records)
    assert Manifest.from_bytes(manifest.to_bytes()).schema.classes == ()


def test_self_test_fails_a_regressor_off_by_more_than_its_relative_tolerance(
    binary_manifest: Manifest,
) -> None:
    manifest, backend = _task_model(_complete(binary_manifest), "regression", ())
    golden = list(manifest.golden)
    value = golden[0].probabilities[0]
    golden[0] = replace(golden[0], probabilities=(value + 10 * (1e-5 + 1e-5 * abs(value)),))
    with pytest.raises(SelfTestError, match=r"golden vector 0 .* \(tolerance 1e-05 \+ 1e-05 x"):
        Scorer(replace(manifest, golden=tuple(golden)), backend)


def test_golden_vectors_must_hold_n_outputs_values(binary_manifest: Manifest) -> None:
    manifest, _ = _task_model(_complete(binary_manifest), "multiclass", IRIS)
    raw = json.loads(manifest.to_bytes())
    raw["golden"][0]["probabilities"] = [0.5, 0.5]
    with pytest.raises(ManifestError, match=r"2 outputs; a multiclass model .* outputs 3"):
        Manifest.from_dict(raw)


def test_binary_scorer_keeps_positive(binary_manifest: Manifest) -> None:
    manifest, backend = _task_model(_complete(binary_manifest), "binary", ("stay", "churn"))
    scorer = Scorer(manifest, backend)
    records = [g.record for g in manifest.golden]
    scores = scorer.score(records)
    assert np.array_equal(scorer.positive(records), scores[:, 1])
    assert scorer.predict(records) == [("stay", "churn")[i] for i in scores.argmax(axis=1)]
