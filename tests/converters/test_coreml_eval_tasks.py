"""The Core ML evaluator on the spec types multi-class and regression models use, built
with coremltools' own builders where it has one (so the evaluator is held to the specs
coremltools writes), with answers worked out by hand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder
from coremltools.models.tree_ensemble import TreeEnsembleClassifier, TreeEnsembleRegressor
from coremltools.proto import Model_pb2

from edgefleet.converters.coreml_eval import DictBatch, evaluate
from edgefleet.errors import ConversionError

X = np.array([[1.0, 0.0], [3.0, 2.0]])


def _network(weights: list[list[float]], bias: list[float], labels: list[int]) -> Any:
    builder = NeuralNetworkBuilder(
        [("x", datatypes.Array(2))], [("probabilities", datatypes.Array(len(labels)))],
        mode="classifier",
    )  # fmt: skip
    builder.add_inner_product(
        "scores", np.array(weights), np.array(bias), 2, len(labels), True, "x", "scores"
    )
    builder.add_softmax("probabilities", "scores", "probabilities")
    builder.set_class_labels(labels, predicted_feature_name="classLabel")
    return builder.spec


def test_softmax_network_classifier() -> None:
    spec = _network([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5]], [0.0, 0.5, 0.25], [0, 1, 2])
    out = evaluate(spec, {"x": X})
    probabilities = out[spec.description.predictedProbabilitiesName]
    assert isinstance(probabilities, DictBatch)
    scores = X @ np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5]]).T + [0.0, 0.5, 0.25]
    expected = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    assert np.abs(probabilities.dense([0, 1, 2]) - expected).max() < 1e-6  # float32
    assert list(out["classLabel"]) == list(expected.argmax(axis=1))


def test_one_vs_rest_network_normalises_sigmoids_and_is_uniform_where_all_underflow() -> None:
    """The layers coreml_linear writes for a multi-class SGDClassifier, built with
    coremltools' builder: threshold at ir.OVR_UNDERFLOW, softplus(alpha=beta=-1), softmax."""
    weights = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5]])
    bias = np.array([0.0, 0.5, 0.25])
    builder = NeuralNetworkBuilder(
        [("x", datatypes.Array(2))], [("probabilities", datatypes.Array(3))], mode="classifier"
    )
    builder.add_inner_product("scores", weights, bias, 2, 3, True, "x", "scores")
    builder.add_unary("floor", "scores", "floored", mode="threshold", alpha=-709.782712893384)
    builder.add_activation("log_sigmoid", "PARAMETRICSOFTPLUS", "floored", "log_sigmoid",
                           params=[np.array([-1.0]), np.array([-1.0])])  # fmt: skip
    builder.add_softmax("probabilities", "log_sigmoid", "probabilities")
    builder.set_class_labels([0, 1, 2], predicted_feature_name="classLabel")
    x = np.array([[1.0, 0.0], [3.0, 2.0], [-800.0, -4000.0], [-60.0, 1.0]])
    out = evaluate(builder.spec, {"x": x})[builder.spec.description.predictedProbabilitiesName]
    assert isinstance(out, DictBatch)
    with np.errstate(over="ignore", invalid="ignore"):
        sigmoids = 1.0 / (1.0 + np.exp(-(x @ weights.T + bias)))
        expected = sigmoids / sigmoids.sum(axis=1, keepdims=True)
    expected[2] = 1.0 / 3.0  # every score below -709.78: scikit-learn's uniform answer
    assert np.abs(out.dense([0, 1, 2]) - expected).max() < 1e-6


def test_modified_huber_network_clips_normalises_and_is_uniform_where_all_are_zero() -> None:
    """The layers coreml_linear writes for SGDClassifier(loss='modified_huber'), built with
    coremltools' builder: p = (clip(z, -1, 1) + 1) / 2, then the softmax of log(p + 1e-30)."""
    weights, bias = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5]]), np.array([0.0, 0.5, 0.25])
    builder = NeuralNetworkBuilder(
        [("x", datatypes.Array(2))], [("probabilities", datatypes.Array(3))], mode="classifier"
    )
    builder.add_inner_product("scores", weights, bias, 2, 3, True, "x", "scores")
    builder.add_unary("floor", "scores", "floored", mode="threshold", alpha=-1.0)
    builder.add_activation("negate", "LINEAR", "floored", "negated", params=[-1.0, 0.0])
    builder.add_unary("ceiling", "negated", "clipped", mode="threshold", alpha=-1.0)
    builder.add_activation("halves", "LINEAR", "clipped", "halves", params=[-0.5, 0.5])
    builder.add_unary("log", "halves", "log_halves", mode="log", shift=1e-30)
    builder.add_softmax("probabilities", "log_halves", "probabilities")
    builder.set_class_labels([0, 1, 2], predicted_feature_name="classLabel")
    x = np.array([[0.2, -0.3], [3.0, 2.0], [-1.0, -5.0]])
    out = evaluate(builder.spec, {"x": x})[builder.spec.description.predictedProbabilitiesName]
    assert isinstance(out, DictBatch)
    p = (np.clip(x @ weights.T + bias, -1.0, 1.0) + 1.0) / 2.0
    expected = p / p.sum(axis=1, keepdims=True)
    assert p[2].sum() == 0.0  # every class clipped to 0: scikit-learn answers uniform
    expected[2] = 1.0 / 3.0
    assert np.abs(out.dense([0, 1, 2]) - expected).max() < 1e-6


def test_network_with_an_unknown_layer_or_wrong_width_is_refused() -> None:
    spec = _network([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [0, 1])
    spec.neuralNetworkClassifier.layers[0].innerProduct.inputChannels = 3
    with pytest.raises(ConversionError, match="innerProduct 'scores'"):
        evaluate(spec, {"x": X})
    spec = _network([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [0, 1])
    spec.neuralNetworkClassifier.layers[1].activation.ReLU.SetInParent()
    with pytest.raises(ConversionError, match="layer 'activation'"):
        evaluate(spec, {"x": X})
    spec = _network([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [0, 1])
    spec.neuralNetworkClassifier.int64ClassLabels.vector.append(2)
    with pytest.raises(ConversionError, match="2 probabilities for 3 labels"):
        evaluate(spec, {"x": X})


def test_tree_ensemble_regressor_sums_leaves_onto_the_base() -> None:
    builder = TreeEnsembleRegressor([("x", datatypes.Array(2))], "value")
    builder.add_branch_node(0, 0, 0, 2.0, "BranchOnValueLessThanEqual", 1, 2)
    builder.add_leaf_node(0, 1, 10.0)
    builder.add_leaf_node(0, 2, -4.0)
    builder.add_leaf_node(1, 0, 0.5)
    builder.set_default_prediction_value([100.0])
    value = evaluate(builder.spec, {"x": X})["value"]
    assert isinstance(value, np.ndarray)
    assert value.tolist() == [110.5, 96.5]


def _glm_regressor(weights: list[list[float]], offsets: list[float]) -> Any:
    spec = Model_pb2.Model()
    spec.specificationVersion = 1
    feature = spec.description.input.add()
    feature.name = "x"
    feature.type.multiArrayType.shape.append(2)
    output = spec.description.output.add()
    output.name = "value"
    output.type.doubleType.SetInParent()
    spec.description.predictedFeatureName = "value"
    for row in weights:
        spec.glmRegressor.weights.add().value.extend(row)
    spec.glmRegressor.offset.extend(offsets)
    return spec


def test_glm_regressor() -> None:
    value = evaluate(_glm_regressor([[2.0, -1.0]], [0.5]), {"x": X})["value"]
    assert isinstance(value, np.ndarray)
    assert value.tolist() == [2.5, 4.5]


@pytest.mark.parametrize(
    ("weights", "offsets", "message"),
    [([[2.0, -1.0, 1.0]], [0.5], "do not fit 2 input values"), ([[2.0, -1.0]], [], "offsets")],
)
def test_malformed_glm_regressor_is_refused(
    weights: list[list[float]], offsets: list[float], message: str
) -> None:
    with pytest.raises(ConversionError, match=message):
        evaluate(_glm_regressor(weights, offsets), {"x": X})


def test_multiclass_tree_ensemble_softmax() -> None:
    builder = TreeEnsembleClassifier(
        [("x", datatypes.Array(2))], [0, 1, 2], ["classLabel", "classProbability"]
    )
    builder.add_branch_node(0, 0, 0, 2.0, "BranchOnValueLessThanEqual", 1, 2)
    builder.add_leaf_node(0, 1, [1.0, 0.0, 0.0])
    builder.add_leaf_node(0, 2, [0.0, 0.0, 2.0])
    builder.set_default_prediction_value([0.1, 0.2, 0.3])
    builder.set_post_evaluation_transform("Classification_SoftMax")
    probabilities = evaluate(builder.spec, {"x": X})["classProbability"]
    assert isinstance(probabilities, DictBatch)
    raw = np.array([[1.1, 0.2, 0.3], [0.1, 0.2, 2.3]])
    expected = np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True)
    assert np.abs(probabilities.dense([0, 1, 2]) - expected).max() < 1e-12
    assert math.isclose(float(expected[0].sum()), 1.0)
