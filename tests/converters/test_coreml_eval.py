"""The Core ML spec evaluator on small hand-built specs whose answers are worked out by hand.

Trees are built with coremltools' own builder, so the evaluator is held to the specs
coremltools writes, not only to the ones edgefleet writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from coremltools.models import datatypes
from coremltools.models.array_feature_extractor import create_array_feature_extractor
from coremltools.models.feature_vectorizer import create_feature_vectorizer
from coremltools.models.pipeline import Pipeline, PipelineClassifier
from coremltools.models.tree_ensemble import TreeEnsembleClassifier
from coremltools.proto import FeatureTypes_pb2, Model_pb2

from edgefleet.converters.coreml_eval import DictBatch, evaluate
from edgefleet.errors import ConversionError

OUTPUTS = ["classLabel", "classProbability"]
TRUE_LEAF, FALSE_LEAF = 0.9, 0.2  # P(class 1) at the true / false child of a one-split tree
X = np.array([[1.0], [2.0], [3.0]])


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _positive(spec: Any, inputs: dict[str, Any]) -> np.ndarray:
    probabilities = evaluate(spec, inputs)["classProbability"]
    assert isinstance(probabilities, DictBatch)
    return probabilities.dense([0, 1])[:, 1]


def _array(spec: Any, inputs: dict[str, Any], name: str) -> np.ndarray:
    value = evaluate(spec, inputs)[name]
    assert isinstance(value, np.ndarray)
    return value


def _tree_builder(width: int = 1) -> TreeEnsembleClassifier:
    return TreeEnsembleClassifier([("x", datatypes.Array(width))], [0, 1], OUTPUTS)


def _one_split(mode: str, *, value: float = 2.0, missing_true: bool = False) -> Any:
    builder = _tree_builder()
    builder.add_branch_node(
        0, 0, 0, value, mode, 1, 2, missing_value_tracks_true_child=missing_true
    )
    builder.add_leaf_node(0, 1, TRUE_LEAF)
    builder.add_leaf_node(0, 2, FALSE_LEAF)
    builder.set_default_prediction_value([0.0])
    return builder.spec


def _one_leaf(transform: str, base: list[float], leaf: list[float]) -> Any:
    builder = TreeEnsembleClassifier(
        [("x", datatypes.Array(1))], list(range(max(2, len(base)))), OUTPUTS
    )
    builder.set_default_prediction_value(base)
    builder.add_leaf_node(0, 0, leaf)
    builder.set_post_evaluation_transform(transform)
    return builder.spec


# --- tree ensembles ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "holds"),
    [
        ("BranchOnValueLessThanEqual", [True, True, False]),
        ("BranchOnValueLessThan", [True, False, False]),
        ("BranchOnValueGreaterThanEqual", [False, True, True]),
        ("BranchOnValueGreaterThan", [False, False, True]),
        ("BranchOnValueEqual", [False, True, False]),
        ("BranchOnValueNotEqual", [True, False, True]),
    ],
)
def test_one_split_for_each_branch_mode(mode: str, holds: list[bool]) -> None:
    outputs = evaluate(_one_split(mode), {"x": X})
    probabilities = outputs["classProbability"]
    assert isinstance(probabilities, DictBatch)
    expected = np.where(holds, TRUE_LEAF, FALSE_LEAF)
    assert probabilities.dense([0, 1]) == pytest.approx(np.column_stack([1 - expected, expected]))
    assert _array(_one_split(mode), {"x": X}, "classLabel").tolist() == [int(h) for h in holds]


@pytest.mark.parametrize("missing_true", [True, False])
@pytest.mark.parametrize("mode", ["BranchOnValueLessThanEqual", "BranchOnValueNotEqual"])
def test_nan_follows_the_missing_value_flag(mode: str, missing_true: bool) -> None:
    # NaN != 2 holds in IEEE arithmetic, yet the flag decides: NaN is a missing value.
    spec = _one_split(mode, missing_true=missing_true)
    got = _positive(spec, {"x": np.array([[np.nan]])})
    assert got[0] == (TRUE_LEAF if missing_true else FALSE_LEAF)


def test_two_tree_additive_ensemble_with_base_value_and_logistic() -> None:
    builder = _tree_builder(width=2)
    builder.set_default_prediction_value([0.5])
    builder.add_branch_node(0, 0, 0, 0.0, "BranchOnValueLessThanEqual", 1, 2)
    builder.add_leaf_node(0, 1, 1.0)
    builder.add_leaf_node(0, 2, -1.0)
    # The same node ids in another tree: trees are told apart by treeId.
    builder.add_branch_node(1, 0, 1, 0.0, "BranchOnValueGreaterThan", 1, 2)
    builder.add_leaf_node(1, 1, 0.75)
    builder.add_leaf_node(1, 2, 0.25)
    builder.set_post_evaluation_transform("Regression_Logistic")
    outputs = evaluate(builder.spec, {"x": np.array([[-1.0, 1.0], [1.0, -1.0]])})
    probabilities = outputs["classProbability"]
    assert isinstance(probabilities, DictBatch)
    # Row 0: 0.5 + 1.0 + 0.75 = 2.25; row 1: 0.5 - 1.0 + 0.25 = -0.25.
    assert probabilities.dense([1])[:, 0] == pytest.approx([_sigmoid(2.25), _sigmoid(-0.25)])
    assert np.asarray(outputs["classLabel"]).tolist() == [1, 0]


def test_forest_leaves_are_summed() -> None:
    builder = _tree_builder()
    builder.set_default_prediction_value([0.0])
    for tree, probability in enumerate([0.2, 0.6]):  # leaves hold P / n_trees
        builder.add_leaf_node(tree, 0, probability / 2)
    assert _positive(builder.spec, {"x": X}) == pytest.approx([0.4, 0.4, 0.4])


@pytest.mark.parametrize(
    ("transform", "expected"),
    [
        ("NoTransform", 0.3),
        ("Regression_Logistic", _sigmoid(0.3)),
        ("Classification_SoftMaxWithZeroClassReference", _sigmoid(0.3)),  # softmax of [0, 0.3]
    ],
)
def test_binary_post_evaluation_transforms(transform: str, expected: float) -> None:
    got = _positive(_one_leaf(transform, [0.2], [0.1]), {"x": X[:1]})
    assert got[0] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("transform", "expected"),
    [
        ("NoTransform", [0.25, 0.75]),
        ("Classification_SoftMax", [1 - _sigmoid(0.5), _sigmoid(0.5)]),
        ("Regression_Logistic", [_sigmoid(0.25), _sigmoid(0.75)]),
    ],
)
def test_two_dimension_post_evaluation_transforms(transform: str, expected: list[float]) -> None:
    spec = _one_leaf(transform, [0.0, 0.5], [0.25, 0.25])
    probabilities = evaluate(spec, {"x": X[:1]})["classProbability"]
    assert isinstance(probabilities, DictBatch)
    assert probabilities.dense([0, 1])[0] == pytest.approx(expected)


def test_softmax_of_a_single_score_is_refused() -> None:
    with pytest.raises(ConversionError, match="single-score"):
        evaluate(_one_leaf("Classification_SoftMax", [0.0], [0.1]), {"x": X})


def _two_roots(builder: TreeEnsembleClassifier) -> None:
    builder.add_leaf_node(0, 0, 0.1)
    builder.add_leaf_node(0, 1, 0.2)


def _missing_child(builder: TreeEnsembleClassifier) -> None:
    builder.add_branch_node(0, 0, 0, 1.0, "BranchOnValueLessThan", 1, 7)
    builder.add_leaf_node(0, 1, 0.1)


def _feature_out_of_range(builder: TreeEnsembleClassifier) -> None:
    builder.add_branch_node(0, 0, 3, 1.0, "BranchOnValueLessThan", 1, 2)
    builder.add_leaf_node(0, 1, 0.1)
    builder.add_leaf_node(0, 2, 0.2)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_two_roots, "more than one root"),
        (_missing_child, "child 7 is missing"),
        (_feature_out_of_range, "feature index beyond"),
    ],
)
def test_malformed_trees_are_refused(
    damage: Callable[[TreeEnsembleClassifier], None], message: str
) -> None:
    builder = _tree_builder()
    builder.set_default_prediction_value([0.0])
    damage(builder)
    with pytest.raises(ConversionError, match=message):
        evaluate(builder.spec, {"x": X})


# --- hand-built transformers and GLM -----------------------------------------------------


def _declare(features: Any, name: str, kind: str, size: int = 0) -> None:
    feature = features.add()
    feature.name = name
    if kind == "array":
        feature.type.multiArrayType.shape.append(size)
        feature.type.multiArrayType.dataType = FeatureTypes_pb2.ArrayFeatureType.DOUBLE
    elif kind == "int64":
        feature.type.int64Type.SetInParent()
    else:
        feature.type.dictionaryType.int64KeyType.SetInParent()


def _transformer(inputs: list[tuple[str, str, int]], outputs: list[tuple[str, str, int]]) -> Any:
    spec = Model_pb2.Model()
    spec.specificationVersion = 1
    for name, kind, size in inputs:
        _declare(spec.description.input, name, kind, size)
    for name, kind, size in outputs:
        _declare(spec.description.output, name, kind, size)
    return spec


def _glm(
    weights: list[float], offset: float, encoding: str = "ReferenceClass", source: str = "x"
) -> Any:
    spec = _transformer(
        [(source, "array", len(weights))],
        [("classLabel", "int64", 0), ("classProbability", "dict", 0)],
    )
    spec.description.predictedFeatureName = "classLabel"
    spec.description.predictedProbabilitiesName = "classProbability"
    glm = spec.glmClassifier
    glm.weights.add().value.extend(weights)
    glm.offset.append(offset)
    glm.classEncoding = getattr(glm, encoding)
    glm.int64ClassLabels.vector.extend([0, 1])
    return spec


@pytest.mark.parametrize("encoding", ["ReferenceClass", "OneVsRest"])
def test_glm_binary_logit(encoding: str) -> None:
    spec = _glm([2.0, -1.0], 0.5, encoding)
    got = _positive(spec, {"x": np.array([[1.0, 3.0], [0.0, 0.0]])})
    assert got == pytest.approx([_sigmoid(2.0 - 3.0 + 0.5), _sigmoid(0.5)])


def test_glm_probit_is_refused() -> None:
    spec = _glm([1.0], 0.0)
    spec.glmClassifier.postEvaluationTransform = spec.glmClassifier.Probit
    with pytest.raises(ConversionError, match="Logit link only"):
        evaluate(spec, {"x": np.zeros((1, 1))})


def _one_hot(sparse: bool, unknown: str = "IgnoreUnknown") -> Any:
    spec = _transformer([("code", "int64", 0)], [("hot", "dict" if sparse else "array", 3)])
    encoder = spec.oneHotEncoder
    encoder.int64Categories.vector.extend([0, 1, 2])
    encoder.outputSparse = sparse
    encoder.handleUnknown = getattr(encoder, unknown)
    return spec


CODES = np.array([1, -1, 5], dtype=np.int64)  # a category, the unknown code, another unknown
ONE_HOT = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_one_hot_of_an_unknown_value_is_all_zeros_through_the_vectorizer() -> None:
    vectorizer, width = create_feature_vectorizer(
        [("hot", datatypes.Dictionary("Int64"))], "vector", {"hot": 3}
    )
    pipeline = Pipeline([("code", datatypes.Int64())], [("vector", datatypes.Array(3))])
    pipeline.add_model(_one_hot(sparse=True))
    pipeline.add_model(vectorizer)
    assert width == 3
    assert evaluate(pipeline.spec, {"code": CODES})["vector"] == pytest.approx(ONE_HOT)


def test_dense_one_hot_and_error_on_unknown() -> None:
    assert evaluate(_one_hot(sparse=False), {"code": CODES})["hot"] == pytest.approx(ONE_HOT)
    with pytest.raises(ConversionError, match="unknown value -1"):
        evaluate(_one_hot(sparse=True, unknown="ErrorOnUnknown"), {"code": CODES})


def _scaler(shift: list[float], scale: list[float]) -> Any:
    spec = _transformer([("x", "array", 2)], [("y", "array", 2)])
    spec.scaler.shiftValue.extend(shift)
    spec.scaler.scaleValue.extend(scale)
    return spec


@pytest.mark.parametrize(
    ("shift", "scale", "expected"),
    [
        ([-1.0, 2.0], [2.0, 0.5], [4.0, 3.0]),  # scale * (x + shift), per element
        ([1.0], [3.0], [12.0, 15.0]),  # one value for every element
        ([], [], [3.0, 4.0]),  # defaults: shift 0, scale 1
    ],
)
def test_scaler(shift: list[float], scale: list[float], expected: list[float]) -> None:
    got = _array(_scaler(shift, scale), {"x": np.array([[3.0, 4.0]])}, "y")
    assert got[0] == pytest.approx(expected)


def _imputer(values: list[float], replace: float | None) -> Any:
    spec = _transformer([("x", "array", 2)], [("y", "array", 2)])
    spec.imputer.imputedDoubleArray.vector.extend(values)
    if replace is not None:
        spec.imputer.replaceDoubleValue = replace
    return spec


@pytest.mark.parametrize(
    ("replace", "row", "expected"),
    [
        (math.nan, [math.nan, 1.0], [10.0, 1.0]),
        (None, [2.0, math.nan], [2.0, 20.0]),  # unset replace value: NaN
        (-1.0, [-1.0, math.nan], [10.0, math.nan]),  # only the replace value is missing
    ],
)
def test_imputer(replace: float | None, row: list[float], expected: list[float]) -> None:
    got = _array(_imputer([10.0, 20.0], replace), {"x": np.array([row])}, "y")
    np.testing.assert_array_equal(got[0], expected)


def test_array_feature_extractor_truncates_to_int64_and_refuses_non_finite() -> None:
    spec = create_array_feature_extractor(
        [("x", datatypes.Array(2))], "code", 1, output_type="Int64"
    )
    got = _array(spec, {"x": np.array([[0.0, 2.7], [0.0, -1.0]])}, "code")
    assert got.tolist() == [2, -1]
    with pytest.raises(ConversionError, match="non-finite"):
        evaluate(spec, {"x": np.array([[0.0, math.inf]])})


def test_pipeline_chains_imputer_scaler_extractor_and_glm() -> None:
    imputer = _imputer([1.0, 1.0, 1.0], math.nan)
    imputer.description.input[0].type.multiArrayType.shape[0] = 3
    imputer.description.output[0].type.multiArrayType.shape[0] = 3
    scaler = _transformer([("y", "array", 3)], [("scaled", "array", 3)])
    scaler.scaler.shiftValue.append(-1.0)
    scaler.scaler.scaleValue.append(2.0)
    extractor = create_array_feature_extractor([("scaled", datatypes.Array(3))], "picked", [0, 2])
    pipeline = PipelineClassifier([("x", datatypes.Array(3))], [0, 1], OUTPUTS)
    for stage in (imputer, scaler, extractor, _glm([1.0, -1.0], 0.0, source="picked")):
        pipeline.add_model(stage)
    got = _positive(pipeline.spec, {"x": np.array([[math.nan, 5.0, 3.0], [3.0, 0.0, 1.0]])})
    # Row 0: imputed [1, 5, 3] -> scaled [0, 8, 4] -> picked [0, 4] -> z = -4.
    # Row 1: scaled [4, -2, 0] -> picked [4, 0] -> z = 4.
    assert got == pytest.approx([_sigmoid(-4.0), _sigmoid(4.0)])


# --- what the evaluator does not know ----------------------------------------------------


def test_unknown_model_type_is_refused() -> None:
    spec = _transformer([("x", "array", 2)], [("y", "array", 2)])
    spec.normalizer.normType = spec.normalizer.L2
    with pytest.raises(ConversionError, match="does not know the model type 'normalizer'"):
        evaluate(spec, {"x": np.ones((1, 2))})
    with pytest.raises(ConversionError, match="does not know the model type None"):
        evaluate(Model_pb2.Model(), {})


def test_missing_or_misshapen_input_is_refused() -> None:
    with pytest.raises(ConversionError, match="reads the feature 'x'"):
        evaluate(_scaler([], []), {"other": np.ones((1, 2))})
    with pytest.raises(ConversionError, match="does not match its declared type"):
        evaluate(_scaler([], []), {"x": np.ones((1, 3))})
