"""Core ML export: the classic ``.mlmodel`` spec, built from the IR with coremltools' proto
classes (its scikit-learn converter refuses current scikit-learn; docs/architecture.md §4).

The model follows the contract (docs/architecture.md §2) with Core ML's classifier interface:

- input ``input``: a MultiArray of DOUBLE, shape ``[F]``, the raw features in schema order;
  a categorical feature is its vocabulary code (-1 for unknown), a missing numeric is NaN.
- outputs ``classProbability`` (dictionary int64 class -> double) and ``classLabel`` (int64,
  0 or 1). Class 1 is the schema's positive class (``schema.classes[1]``).

A Swift app reads P(positive) like this (``model`` is the compiled ``MLModel``, or use the
class Xcode generates, whose output has ``classProbability: [Int64: Double]``)::

    let x = try MLMultiArray(shape: [NSNumber(value: featureCount)], dataType: .double)
    for (i, value) in features.enumerated() { x[i] = NSNumber(value: value) }  // .nan = missing
    let out = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: ["input": x]))
    let scores = out.featureValue(for: "classProbability")!.dictionaryValue
    let pPositive = scores[NSNumber(value: Int64(1))]!.doubleValue

Multi-class models keep that interface with K labels: ``classProbability[k]`` is P(schema
class k), ``classLabel`` the index of the most probable class. A regressor is a
``pipelineRegressor`` whose one output ``prediction`` (double) is the value.

The spec is a ``pipelineClassifier`` (preprocessing lives inside the model, never in app glue):

- Linear model (``coreml_linear.py``): Imputer (NaN -> median; NaN codes -> -1) -> Scaler
  (``(x - mean) / scale`` as ``(x + shift) * scale``) -> ArrayFeatureExtractor of the
  numeric columns, and per categorical column ArrayFeatureExtractor (int64) -> OneHotEncoder
  (``IgnoreUnknown``, so -1 gives all zeros) -> FeatureVectorizer -> GLMClassifier (one
  weight row, Logit): the layout coremltools' own scikit-learn converters produce. K classes
  end in a NeuralNetworkClassifier (innerProduct + softmax), a regressor in a GLMRegressor.
  scikit-learn scales float32 input in float32, Core ML in double: the two differ by a
  float32 ulp of a feature (~3e-8 in P).
- Trees: Imputer -> TreeEnsembleClassifier reading the raw columns. Everything else is folded
  into the tree:

  * Numeric splits compare the raw column against a folded threshold: the largest float32 raw
    value whose scaled feature (``(x - offset) / scale`` rounded as scikit-learn rounds it for
    float32 input, see ``Preprocessing.transform``) is <= the split threshold. Inputs are
    float32 and scaling is monotone, so ``raw <= folded`` decides exactly as scikit-learn
    does for every input. (The trainer's tree pipelines have no scaler: offset 0, scale 1.)
  * A split on the one-hot column of category ``k`` of input ``c`` becomes
    ``BranchOnValueNotEqual(c, k)``: true -> the side where the one-hot value is 0, so an
    unknown code (-1) or any non-category value takes the "0" side, as scikit-learn's
    ``handle_unknown="ignore"`` does. A split whose sides agree for 0 and 1 is dropped.
  * Missing values: the Imputer stage replaces NaN (documented Core ML semantics) by the
    float32-rounded median scikit-learn's imputer uses, and every numeric branch also sets
    ``missingValueTracksTrueChild`` to the side that value takes, so the tree on its own
    routes NaN as the pipeline would.
  * Multi-class: K prediction dimensions (K labels), each leaf writing the dimensions its
    tree scores; Classification_SoftMax for boosting. Regression: a TreeEnsembleRegressor,
    NoTransform. Random forest / extra trees / one tree: Core ML sums leaf values, so each
    leaf holds P(positive) / n_trees; one prediction dimension with ``NoTransform`` is Core
    ML's binary mode (the score is P(class 1), class 0 gets 1 - score). Gradient boosting:
    leaves hold raw scores, ``basePredictionValue`` the initial logit,
    ``Regression_Logistic``.

``predict`` runs the spec through :mod:`edgefleet.converters.coreml_eval` (Core ML itself only
runs on Apple platforms). Limits: a categorical code that is not an integer is truncated by
Core ML's double -> int64 conversion in the linear model's one-hot path (the trees compare
exactly); the edge encoder never produces such codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from edgefleet.converters import coreml_eval
from edgefleet.converters.coreml_linear import linear_stages
from edgefleet.converters.coreml_proto import Model_pb2, TreeEnsemble_pb2
from edgefleet.converters.coreml_spec import (
    INPUT_NAME,
    PROBABILITY_NAME,
    VALUE_NAME,
    array,
    classifier_interface,
    classifier_outputs,
    float32_constants,
    imputer,
    new_model,
    regressor_outputs,
)
from edgefleet.converters.ir import (
    LinearModel,
    ModelIR,
    Preprocessing,
    Tree,
    TreeEnsemble,
)
from edgefleet.converters.source import ConversionSource
from edgefleet.errors import ConversionError

UNKNOWN_CODE = -1.0

Float64Array = npt.NDArray[np.float64]
_TreeNode = TreeEnsemble_pb2.TreeEnsembleParameters.TreeNode
_F32_NEG_INF = -0x7F800000  # order of -inf among float32 values (see _float32_at)
_F32_POS_INF = 0x7F800000


def convert(source: ConversionSource) -> bytes:
    ir = source.ir
    positive = source.schema.classes[1] if ir.task == "binary" else None
    spec = build_spec(ir, feature_names=source.schema.names, positive_class=positive)
    data: bytes = spec.SerializeToString()
    return data


def predict(artifact: bytes, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(artifact)
    except DecodeError as error:
        raise ConversionError(f"not a Core ML model spec: {error}") from None
    x = np.asarray(inputs, dtype=np.float64)
    if x.ndim != 2:
        raise ConversionError(f"inputs must be [N, F], got shape {list(x.shape)}")
    outputs = coreml_eval.evaluate(spec, {INPUT_NAME: x})
    if spec.WhichOneof("Type") == "pipelineRegressor":
        value = outputs.get(VALUE_NAME)
        if value is None or isinstance(value, coreml_eval.DictBatch):
            raise ConversionError(f"the regressor's {VALUE_NAME} is not a double output")
        return np.asarray(value, dtype=np.float64).reshape(len(x), 1)
    probabilities = outputs[PROBABILITY_NAME]
    if not isinstance(probabilities, coreml_eval.DictBatch):
        raise ConversionError(f"{PROBABILITY_NAME} is not a dictionary output")
    return probabilities.dense(sorted(probabilities.keys))


def build_spec(
    ir: ModelIR, *, feature_names: Sequence[str] | None = None, positive_class: str | None = None
) -> Model_pb2.Model:
    """The ``pipelineClassifier`` (or, for a regressor, ``pipelineRegressor``) spec of
    ``ir``; :class:`ConversionError` if it cannot be expressed exactly."""
    n_inputs = ir.preprocessing.n_inputs
    if feature_names is not None and len(feature_names) != n_inputs:
        raise ConversionError(
            f"the model takes {n_inputs} inputs, the schema names {len(feature_names)}"
        )
    labels = tuple(range(ir.n_outputs))
    if isinstance(ir.model, LinearModel):
        stages = linear_stages(ir.preprocessing, ir.model, labels)
    elif isinstance(ir.model, TreeEnsemble):
        stages = _tree_stages(ir.preprocessing, ir.model, labels)
    else:
        raise ConversionError(f"Core ML export has no emitter for {type(ir.model).__name__}")
    regression = ir.task == "regression"
    outputs = regressor_outputs() if regression else classifier_outputs()
    spec = new_model([(INPUT_NAME, array(n_inputs))], outputs)
    if regression:
        spec.description.predictedFeatureName = VALUE_NAME
        pipeline = spec.pipelineRegressor.pipeline
    else:
        classifier_interface(spec)
        pipeline = spec.pipelineClassifier.pipeline
    _describe(spec, ir, feature_names, positive_class)
    for name, stage in stages:
        pipeline.models.add().CopyFrom(stage)
        pipeline.names.append(name)
    return spec


def _describe(
    spec: Model_pb2.Model,
    ir: ModelIR,
    feature_names: Sequence[str] | None,
    positive_class: str | None,
) -> None:
    order = ", ".join(feature_names) if feature_names else "schema order"
    inputs, outputs = spec.description.input, spec.description.output
    inputs[
        0
    ].shortDescription = (
        f"raw features [{order}]; categorical = vocabulary code, -1 unknown; NaN = missing"
    )
    if ir.task == "regression":
        summary = "the predicted value = prediction"
        outputs[0].shortDescription = "the predicted value"
    elif ir.task == "multiclass":
        summary = "P(class k) = classProbability[k], k indexing the schema's classes"
        outputs[0].shortDescription = "index of the most probable class in the schema's classes"
        outputs[1].shortDescription = "class index -> probability"
    else:
        positive = f" ({positive_class})" if positive_class else ""
        summary = f"P(positive{positive}) = classProbability[1]"
        outputs[0].shortDescription = "1 = positive class, 0 = negative"
        outputs[1].shortDescription = "class -> probability; read key 1"
    spec.description.metadata.shortDescription = f"edgefleet {ir.family} model: {summary}"
    spec.description.metadata.userDefined["edgefleet.family"] = ir.family


# --- tree ensembles ----------------------------------------------------------------------

# Per numeric split (IR node): the threshold on the raw input, and whether the imputed value
# takes the true (``<=``) side.
_Folds = dict[int, tuple[float, bool]]


def _tree_stages(
    prep: Preprocessing, ensemble: TreeEnsemble, labels: tuple[int, ...]
) -> list[tuple[str, Any]]:
    if not ensemble.trees:
        raise ConversionError("the tree ensemble has no trees")
    offsets, scales, imputed = float32_constants(prep)
    impute = np.full(prep.n_inputs, UNKNOWN_CODE)
    impute[[c.input_index for c in prep.numeric]] = imputed
    folds = [_fold_tree(tree, offsets, scales, imputed) for tree in ensemble.trees]
    trees = _tree_model(prep, ensemble, folds, labels)
    return [("impute", imputer(impute.tolist(), prep.n_inputs)), ("trees", trees)]


def _fold_tree(
    tree: Tree, offsets: Float64Array, scales: Float64Array, imputed: Float64Array
) -> _Folds:
    nodes = np.flatnonzero(~tree.is_leaf & (tree.feature < len(offsets)))
    columns = tree.feature[nodes]
    thresholds = tree.threshold[nodes]
    if np.isnan(thresholds).any():
        raise ConversionError("a split threshold is NaN")
    folded = fold_thresholds(thresholds, offsets[columns], scales[columns])
    # The imputed value is a float32 raw value like any other, so the folded threshold
    # decides it exactly as scikit-learn does.
    sides = imputed[columns] <= folded
    return {int(n): (float(t), bool(s)) for n, t, s in zip(nodes, folded, sides, strict=True)}


def _float32_at(order: npt.NDArray[np.int64]) -> Float64Array:
    """The float32 values at positions ``order`` of the ordered float32 line (0 is +0.0,
    negative positions are negative floats), as float64."""
    bits = np.where(order >= 0, order, (-order) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32).astype(np.float64)


def scaled_feature(raw: Float64Array, offsets: Float64Array, scales: Float64Array) -> Float64Array:
    """The feature scikit-learn's tree compares for a raw float32 value: ``(raw - offset) /
    scale`` in float32 arithmetic, as ``Preprocessing.transform`` computes it (an exact
    float32 value, so the trees' own float32 cast changes nothing)."""
    with np.errstate(over="ignore", invalid="ignore"):
        single = (raw.astype(np.float32) - offsets.astype(np.float32)) / scales.astype(np.float32)
    return single.astype(np.float64)


def fold_thresholds(
    thresholds: Float64Array, offsets: Float64Array, scales: Float64Array
) -> Float64Array:
    """Per split, the largest float32 raw value (or -inf) whose scaled feature is <= the
    threshold: bisection over the ordered float32 line, exact because scaling by a positive
    float32 scale is monotone. Then ``raw <= folded`` holds exactly when scikit-learn's
    ``scaled <= threshold`` does, for every float32 raw value."""
    low = np.full(len(thresholds), _F32_NEG_INF, dtype=np.int64)  # scaled(-inf) <= any
    high = np.full(len(thresholds), _F32_POS_INF + 1, dtype=np.int64)  # past +inf: never
    while (high - low > 1).any():
        middle = (low + high) // 2
        holds = scaled_feature(_float32_at(middle), offsets, scales) <= thresholds
        low = np.where(holds, middle, low)
        high = np.where(holds, high, middle)
    return _float32_at(low)


@dataclass(frozen=True)
class _Branch:
    behavior: int
    feature: int
    value: float
    missing_true: bool
    true_child: int
    false_child: int


def _resolve(prep: Preprocessing, tree: Tree, node: int, folds: _Folds) -> _Branch | int:
    """The Core ML branch for an IR split, or the one child it always takes."""
    feature = int(tree.feature[node])
    left, right = int(tree.left[node]), int(tree.right[node])
    if feature < len(prep.numeric):
        folded, imputed_goes_true = folds[node]
        return _Branch(
            _TreeNode.BranchOnValueLessThanEqual,
            prep.numeric[feature].input_index,
            folded,
            imputed_goes_true,
            left,
            right,
        )
    input_index, category = _one_hot_column(prep, feature)
    # A one-hot value is exactly 0 or 1 (also as float32), so the comparison is exact.
    zero_side = left if tree.threshold[node] >= 0.0 else right
    one_side = left if tree.threshold[node] >= 1.0 else right
    if zero_side == one_side:
        return zero_side
    # NaN codes are imputed to -1 (unknown) before the tree: the "0" side.
    return _Branch(
        _TreeNode.BranchOnValueNotEqual, input_index, float(category), True, zero_side, one_side
    )


def _one_hot_column(prep: Preprocessing, feature: int) -> tuple[int, int]:
    start = len(prep.numeric)
    for column in prep.categorical:
        if feature < start + column.categories:
            return column.input_index, feature - start
        start += column.categories
    raise ConversionError(
        f"a split reads feature {feature}; the preprocessing makes {prep.n_outputs}"
    )


def _tree_model(
    prep: Preprocessing,
    ensemble: TreeEnsemble,
    folds: Sequence[_Folds],
    labels: tuple[int, ...],
) -> Model_pb2.Model:
    regression = ensemble.link == "identity"
    outputs = regressor_outputs() if regression else classifier_outputs()
    model = new_model([("imputed", array(prep.n_inputs))], outputs)
    if regression:
        model.description.predictedFeatureName = VALUE_NAME
        head: Any = model.treeEnsembleRegressor
    else:
        classifier_interface(model)
        head = model.treeEnsembleClassifier
        head.int64ClassLabels.vector.extend(labels)
    params = head.treeEnsemble
    # One score with two labels is Core ML's binary mode (the score is P(class 1)); K scores
    # with K labels its multi-class mode.
    params.numPredictionDimensions = ensemble.n_scores
    head.postEvaluationTransform = _tree_transform(ensemble)
    if ensemble.aggregation == "average":
        # Core ML sums the trees: averaging is a sum of leaves divided by the count.
        divisor, base = float(len(ensemble.trees)), np.zeros(ensemble.n_scores)
    elif ensemble.aggregation == "additive":
        divisor, base = 1.0, ensemble.base
    else:
        raise ConversionError(f"Core ML export cannot aggregate trees by {ensemble.aggregation!r}")
    params.basePredictionValue.extend(np.broadcast_to(base, (ensemble.n_scores,)).tolist())
    for index, (tree, tree_folds) in enumerate(zip(ensemble.trees, folds, strict=True)):
        _emit_tree(params, index, prep, tree, divisor, tree_folds)
    return model


def _tree_transform(ensemble: TreeEnsemble) -> int:
    transforms = {
        "probability": TreeEnsemble_pb2.NoTransform,
        "identity": TreeEnsemble_pb2.NoTransform,
        "logistic": TreeEnsemble_pb2.Regression_Logistic,
        "softmax": TreeEnsemble_pb2.Classification_SoftMax,
    }
    if ensemble.link not in transforms:
        raise ConversionError(f"Core ML trees have no {ensemble.link} transform")
    return int(transforms[ensemble.link])


def _emit_tree(
    params: Any, index: int, prep: Preprocessing, tree: Tree, divisor: float, folds: _Folds
) -> None:
    """Depth-first, numbering nodes afresh: splits that always take one side vanish. A leaf
    writes the dimensions the tree scores (a multi-class booster's tree scores one class)."""
    dimensions = np.flatnonzero((tree.value[tree.is_leaf] != 0).any(axis=0))
    dimensions = dimensions if dimensions.size else np.zeros(1, dtype=np.int64)
    pending = [(0, 0)]  # (IR node, Core ML node id)
    next_id = 1
    while pending:
        node, node_id = pending.pop()
        target: _Branch | int = node
        while isinstance(target, int) and tree.left[target] >= 0:
            target = _resolve(prep, tree, target, folds)
        spec_node = params.nodes.add()
        spec_node.treeId = index
        spec_node.nodeId = node_id
        if isinstance(target, int):
            spec_node.nodeBehavior = _TreeNode.LeafNode
            for dimension in dimensions:
                leaf = spec_node.evaluationInfo.add()
                leaf.evaluationIndex = int(dimension)
                leaf.evaluationValue = float(tree.value[target, dimension]) / divisor
            continue
        _fill_branch(spec_node, target, next_id, next_id + 1)
        pending.extend([(target.false_child, next_id + 1), (target.true_child, next_id)])
        next_id += 2


def _fill_branch(spec_node: Any, branch: _Branch, true_id: int, false_id: int) -> None:
    spec_node.nodeBehavior = branch.behavior
    spec_node.branchFeatureIndex = branch.feature
    spec_node.branchFeatureValue = branch.value
    spec_node.trueChildNodeId = true_id
    spec_node.falseChildNodeId = false_id
    spec_node.missingValueTracksTrueChild = branch.missing_true
