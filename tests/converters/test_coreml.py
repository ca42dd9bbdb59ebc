"""Core ML export: parity with scikit-learn for every family (through the spec evaluator),
the model contract the saved spec declares, exact threshold folding, and refusals."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from coremltools.models import MLModel
from coremltools.models.utils import load_spec, save_spec
from coremltools.proto import FeatureTypes_pb2, Model_pb2, TreeEnsemble_pb2
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from edgefleet.central.trainer import TrainedModel
from edgefleet.converters import coreml, coreml_eval
from edgefleet.converters.ir import (
    LinearModel,
    ModelIR,
    NumericColumn,
    Preprocessing,
    TreeEnsemble,
    read_pipeline,
)
from edgefleet.converters.registry import export_format
from edgefleet.converters.source import ConversionSource
from edgefleet.errors import ConversionError
from tests.conftest import FAMILIES

TREE_FAMILIES = tuple(f for f in FAMILIES if f != "logreg")
TOLERANCE = 1e-5
TREE_NODE = TreeEnsemble_pb2.TreeEnsembleParameters.TreeNode


def _inputs(model: TrainedModel) -> np.ndarray:
    return np.concatenate([model.holdout_inputs, model.golden_inputs()])


def _source(model: TrainedModel) -> ConversionSource:
    return ConversionSource(model.pipeline, model.schema, model.family, model.holdout_inputs[:4])


def _max_diff(artifact: bytes, pipeline: Any, inputs: np.ndarray) -> float:
    got = coreml.predict(artifact, inputs)
    assert got.shape == (len(inputs), 2)
    return float(np.abs(got - pipeline.predict_proba(inputs)).max())


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_with_scikit_learn(trained: Callable[[str], TrainedModel], family: str) -> None:
    model = trained(family)
    difference = _max_diff(coreml.convert(_source(model)), model.pipeline, _inputs(model))
    assert difference <= TOLERANCE
    if family in TREE_FAMILIES:  # folded thresholds make trees exact, up to summation order
        assert difference <= 1e-12


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_categories_and_missing_values(
    trained: Callable[[str], TrainedModel], family: str
) -> None:
    model = trained(family)
    inputs = model.holdout_inputs[:200].copy()
    categorical = model.schema.categorical_indices()
    inputs[::2, categorical] = -1.0
    inputs[1::4, categorical] = np.nan  # scikit-learn one-hot encodes NaN codes as all zeros
    inputs[::3, model.schema.numeric_indices()] = np.nan
    assert _max_diff(coreml.convert(_source(model)), model.pipeline, inputs) <= TOLERANCE


@pytest.mark.parametrize("family", TREE_FAMILIES)
def test_tree_alone_routes_nan_where_the_imputed_value_goes(
    trained: Callable[[str], TrainedModel], family: str
) -> None:
    model = trained(family)
    spec = coreml.build_spec(_source(model).ir)
    trees = spec.pipelineClassifier.pipeline.models[-1]
    inputs = model.holdout_inputs[:300].astype(np.float64)
    inputs[np.random.default_rng(0).random(inputs.shape) < 0.3] = np.nan
    probabilities = coreml_eval.evaluate(trees, {"imputed": inputs})["classProbability"]
    assert isinstance(probabilities, coreml_eval.DictBatch)
    expected = model.pipeline.predict_proba(inputs.astype(np.float32))
    assert np.abs(probabilities.dense([0, 1]) - expected).max() <= 1e-12


def test_registry_entry_converts(trained: Callable[[str], TrainedModel]) -> None:
    model = trained("dt")
    assert export_format("coreml").convert(_source(model)) == coreml.convert(_source(model))


def _stage_types(spec: Any) -> list[str]:
    return [stage.WhichOneof("Type") for stage in spec.pipelineClassifier.pipeline.models]


def test_linear_layout(trained: Callable[[str], TrainedModel]) -> None:
    model = trained("logreg")
    types = _stage_types(coreml.build_spec(_source(model).ir))
    n_categorical = len(model.schema.categorical_indices())
    assert types == (
        ["imputer", "scaler", "arrayFeatureExtractor"]
        + ["arrayFeatureExtractor", "oneHotEncoder"] * n_categorical
        + ["featureVectorizer", "glmClassifier"]
    )


@pytest.mark.parametrize(
    ("family", "transform", "base"),
    [
        ("rf", "NoTransform", False),
        ("gb", "Regression_Logistic", True),
    ],
)
def test_tree_layout(
    trained: Callable[[str], TrainedModel], family: str, transform: str, base: bool
) -> None:
    model = trained(family)
    spec = coreml.build_spec(_source(model).ir)
    assert _stage_types(spec) == ["imputer", "treeEnsembleClassifier"]
    classifier = spec.pipelineClassifier.pipeline.models[1].treeEnsembleClassifier
    assert classifier.postEvaluationTransform == (
        TreeEnsemble_pb2.TreeEnsemblePostEvaluationTransform.Value(transform)
    )
    assert classifier.treeEnsemble.numPredictionDimensions == 1
    assert (classifier.treeEnsemble.basePredictionValue[0] != 0.0) == base
    if family == "rf":  # Core ML sums trees: each leaf holds P(positive) / n_trees
        leaves = [
            n.evaluationInfo[0].evaluationValue
            for n in classifier.treeEnsemble.nodes
            if n.nodeBehavior == TREE_NODE.LeafNode
        ]
        assert max(leaves) <= 1.0 / len(model.pipeline.steps[-1][1].estimators_)
    categorical = set(model.schema.categorical_indices())
    modes = {
        (n.nodeBehavior, n.branchFeatureIndex in categorical)
        for n in classifier.treeEnsemble.nodes
        if n.nodeBehavior != TREE_NODE.LeafNode
    }
    # Numeric columns: <= on the raw value; one-hot columns: != the category code.
    assert modes == {
        (TREE_NODE.BranchOnValueLessThanEqual, False),
        (TREE_NODE.BranchOnValueNotEqual, True),
    }


@pytest.mark.parametrize("family", ["logreg", "hgb"])
def test_saved_spec_loads_and_declares_the_contract(
    trained: Callable[[str], TrainedModel], family: str, tmp_path: Path
) -> None:
    model = trained(family)
    spec = Model_pb2.Model()
    spec.ParseFromString(coreml.convert(_source(model)))
    path = tmp_path / "model.mlmodel"
    save_spec(spec, str(path))
    loaded = load_spec(str(path))
    assert loaded == spec
    assert MLModel(loaded).get_spec() == spec
    [declared] = loaded.description.input
    assert declared.name == "input"
    assert list(declared.type.multiArrayType.shape) == [model.schema.n_features]
    assert declared.type.multiArrayType.dataType == FeatureTypes_pb2.ArrayFeatureType.DOUBLE
    outputs = {o.name: o.type.WhichOneof("Type") for o in loaded.description.output}
    assert outputs == {"classLabel": "int64Type", "classProbability": "dictionaryType"}
    assert loaded.description.output[1].type.dictionaryType.WhichOneof("KeyType") == (
        "int64KeyType"
    )
    assert loaded.description.predictedFeatureName == "classLabel"
    assert loaded.description.predictedProbabilitiesName == "classProbability"
    assert loaded.WhichOneof("Type") == "pipelineClassifier"


# --- threshold folding with a scaler (the trainer's trees have none; the code is general) --


def _scaled_pipeline(estimator: Any) -> tuple[Pipeline, np.ndarray]:
    rng = np.random.default_rng(5)
    numeric = rng.normal([10.0, -3.0, 2000.0], [3.0, 0.01, 900.0], size=(400, 3))
    numeric[rng.random(numeric.shape) < 0.05] = np.nan
    codes = rng.integers(0, 3, size=(400, 1))
    inputs = np.hstack([numeric, codes]).astype(np.float32)
    labels = (
        np.nan_to_num(numeric[:, 0], nan=10.0) + 2 * (codes[:, 0] == 1) + rng.normal(0, 2, 400) > 11
    ).astype(int)
    prep = ColumnTransformer(
        [
            (
                "num",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                [0, 1, 2],
            ),
            (
                "cat",
                OneHotEncoder(
                    categories=[np.arange(3.0)], handle_unknown="ignore", sparse_output=False
                ),
                [3],
            ),
        ]
    )
    return Pipeline([("prep", prep), ("model", estimator)]).fit(inputs, labels), inputs


def _boundary_inputs(spec: Any, inputs: np.ndarray) -> np.ndarray:
    """For every numeric split: its folded threshold and the next float32 above it."""
    trees = spec.pipelineClassifier.pipeline.models[-1].treeEnsembleClassifier.treeEnsemble
    rows: list[np.ndarray] = []
    for node in trees.nodes:
        if node.nodeBehavior == TREE_NODE.BranchOnValueLessThanEqual:
            at = np.float32(node.branchFeatureValue)
            for value in (at, np.nextafter(at, np.float32(np.inf))):
                row = inputs[len(rows) % len(inputs)].copy()
                row[node.branchFeatureIndex] = value
                rows.append(row)
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize(
    "estimator",
    [
        DecisionTreeClassifier(min_samples_leaf=3, random_state=0),
        GradientBoostingClassifier(n_estimators=15, random_state=0),
        HistGradientBoostingClassifier(max_iter=15, random_state=0),
    ],
    ids=["dt", "gb", "hgb"],
)
def test_scaler_folds_exactly_into_thresholds(estimator: Any) -> None:
    pipeline, inputs = _scaled_pipeline(estimator)
    spec = coreml.build_spec(read_pipeline(pipeline))
    boundary = _boundary_inputs(spec, inputs)
    assert len(boundary) > 10
    checked = np.concatenate([inputs, boundary])
    assert _max_diff(spec.SerializeToString(), pipeline, checked) <= 1e-12


def test_fold_is_the_largest_float32_at_or_below_the_threshold() -> None:
    rng = np.random.default_rng(1)
    thresholds = rng.normal(0, 2, 500)
    offsets = rng.normal(0, 1e3, 500).astype(np.float32).astype(np.float64)
    scales = rng.uniform(1e-3, 1e3, 500).astype(np.float32).astype(np.float64)
    folded = coreml.fold_thresholds(thresholds, offsets, scales)
    above = np.nextafter(folded.astype(np.float32), np.float32(np.inf)).astype(np.float64)
    assert (coreml.scaled_feature(folded, offsets, scales) <= thresholds).all()
    assert (coreml.scaled_feature(above, offsets, scales) > thresholds).all()


def test_scaled_feature_rounds_as_the_ir_does() -> None:
    rng = np.random.default_rng(2)
    raw = rng.normal(50, 30, 1000).astype(np.float32)
    column = NumericColumn(input_index=0, impute=0.0, offset=48.123456789, scale=29.87654321)
    prep = Preprocessing(n_inputs=1, numeric=(column,), categorical=())
    ours = coreml.scaled_feature(
        raw.astype(np.float64), np.array([column.offset]), np.array([column.scale])
    )
    np.testing.assert_array_equal(ours, prep.transform(raw[:, None])[:, 0])


# --- refusals ------------------------------------------------------------------------------


def _negative_scale(ir: ModelIR) -> ModelIR:
    first = dataclasses.replace(ir.preprocessing.numeric[0], scale=-1.0)
    numeric = (first, *ir.preprocessing.numeric[1:])
    return dataclasses.replace(
        ir, preprocessing=dataclasses.replace(ir.preprocessing, numeric=numeric)
    )


def _median_aggregation(ir: ModelIR) -> ModelIR:
    assert isinstance(ir.model, TreeEnsemble)
    median = dataclasses.replace(ir.model, aggregation="median")  # type: ignore[arg-type]
    return dataclasses.replace(ir, model=median)


def _no_trees(ir: ModelIR) -> ModelIR:
    assert isinstance(ir.model, TreeEnsemble)
    return dataclasses.replace(ir, model=dataclasses.replace(ir.model, trees=()))


def _unknown_model(ir: ModelIR) -> ModelIR:
    return dataclasses.replace(ir, model="a nearest-neighbour model")  # type: ignore[arg-type]


def _short_coefficients(ir: ModelIR) -> ModelIR:
    return dataclasses.replace(ir, model=LinearModel(np.ones(3), 0.0))


@pytest.mark.parametrize(
    ("family", "damage", "message"),
    [
        ("dt", _negative_scale, "must be > 0"),
        ("logreg", _negative_scale, "must be > 0"),
        ("rf", _median_aggregation, "cannot aggregate trees by 'median'"),
        ("gb", _no_trees, "no trees"),
        ("et", _unknown_model, "no emitter for str"),
        ("logreg", _short_coefficients, "3 coefficients"),
    ],
)
def test_unsupported_ir_is_refused(
    trained: Callable[[str], TrainedModel],
    family: str,
    damage: Callable[[ModelIR], ModelIR],
    message: str,
) -> None:
    ir = _source(trained(family)).ir
    with pytest.raises(ConversionError, match=message):
        coreml.build_spec(damage(ir))


def test_schema_of_another_width_is_refused(trained: Callable[[str], TrainedModel]) -> None:
    with pytest.raises(ConversionError, match="names 2"):
        coreml.build_spec(_source(trained("dt")).ir, feature_names=["a", "b"])


def test_predict_refuses_bytes_that_are_not_a_spec() -> None:
    with pytest.raises(ConversionError, match="not a Core ML model spec"):
        coreml.predict(b"\xff\xff\xff", np.zeros((1, 2), dtype=np.float32))
