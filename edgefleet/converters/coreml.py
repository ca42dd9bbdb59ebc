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

The spec is a ``pipelineClassifier`` (preprocessing lives inside the model, never in app glue):

- Linear model: Imputer (NaN -> median; NaN codes -> -1) -> Scaler (``(x - mean) / scale`` as
  ``(x + shift) * scale``) -> ArrayFeatureExtractor of the numeric columns, and per
  categorical column ArrayFeatureExtractor (int64) -> OneHotEncoder (``IgnoreUnknown``, so -1
  gives all zeros) -> FeatureVectorizer -> GLMClassifier (one weight row, Logit): the layout
  coremltools' own scikit-learn converters produce. scikit-learn scales float32 input in
  float32, Core ML in double: the two differ by a float32 ulp of a feature (~3e-8 in P).
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
  * Random forest / extra trees / one tree: Core ML sums leaf values, so each leaf holds
    P(positive) / n_trees; one prediction dimension with ``NoTransform`` is Core ML's binary
    mode (the score is P(class 1), class 0 gets 1 - score). Gradient boosting: leaves hold
    raw scores, ``basePredictionValue`` the initial logit, ``Regression_Logistic``.

``predict`` runs the spec through :mod:`edgefleet.converters.coreml_eval` (Core ML itself only
runs on Apple platforms). Limits: a categorical code that is not an integer is truncated by
Core ML's double -> int64 conversion in the linear model's one-hot path (the trees compare
exactly); the edge encoder never produces such codes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from edgefleet.converters import coreml_eval
from edgefleet.converters.coreml_proto import FeatureTypes_pb2, Model_pb2, TreeEnsemble_pb2
from edgefleet.converters.ir import (
    LinearModel,
    ModelIR,
    Preprocessing,
    Tree,
    TreeEnsemble,
)
from edgefleet.converters.source import ConversionSource
from edgefleet.errors import ConversionError

INPUT_NAME = "input"
LABEL_NAME = "classLabel"
PROBABILITY_NAME = "classProbability"
VALUE_NAME = "prediction"  # a regressor's output (double)
CLASS_LABELS = (0, 1)
# Every model type used here exists since Core ML 1; the lowest version loads everywhere.
SPECIFICATION_VERSION = 1
UNKNOWN_CODE = -1.0

Float64Array = npt.NDArray[np.float64]
_TreeNode = TreeEnsemble_pb2.TreeEnsembleParameters.TreeNode
_DOUBLE = FeatureTypes_pb2.ArrayFeatureType.DOUBLE
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
        stages = _linear_stages(ir.preprocessing, ir.model, labels)
    elif isinstance(ir.model, TreeEnsemble):
        stages = _tree_stages(ir.preprocessing, ir.model, labels)
    else:
        raise ConversionError(f"Core ML export has no emitter for {type(ir.model).__name__}")
    regression = ir.task == "regression"
    outputs = _regressor_outputs() if regression else _classifier_outputs()
    spec = _model([(INPUT_NAME, _array(n_inputs))], outputs)
    if regression:
        spec.description.predictedFeatureName = VALUE_NAME
        pipeline = spec.pipelineRegressor.pipeline
    else:
        _classifier_interface(spec)
        pipeline = spec.pipelineClassifier.pipeline
    _describe(spec, ir, feature_names, positive_class)
    for name, stage in stages:
        pipeline.models.add().CopyFrom(stage)
        pipeline.names.append(name)
    return spec


# --- spec plumbing -----------------------------------------------------------------------

_TypeSetter = Callable[[Any], None]


def _array(size: int) -> _TypeSetter:
    def set_type(feature_type: Any) -> None:
        feature_type.multiArrayType.shape.append(size)
        feature_type.multiArrayType.dataType = _DOUBLE

    return set_type


def _int64(feature_type: Any) -> None:
    feature_type.int64Type.SetInParent()


def _int64_dictionary(feature_type: Any) -> None:
    feature_type.dictionaryType.int64KeyType.SetInParent()


def _double(feature_type: Any) -> None:
    feature_type.doubleType.SetInParent()


def _classifier_outputs() -> list[tuple[str, _TypeSetter]]:
    return [(LABEL_NAME, _int64), (PROBABILITY_NAME, _int64_dictionary)]


def _regressor_outputs() -> list[tuple[str, _TypeSetter]]:
    return [(VALUE_NAME, _double)]


def _model(
    inputs: Sequence[tuple[str, _TypeSetter]], outputs: Sequence[tuple[str, _TypeSetter]]
) -> Model_pb2.Model:
    model = Model_pb2.Model()
    model.specificationVersion = SPECIFICATION_VERSION
    for features, declared in (
        (model.description.input, inputs),
        (model.description.output, outputs),
    ):
        for name, set_type in declared:
            feature = features.add()
            feature.name = name
            set_type(feature.type)
    return model


def _classifier_interface(model: Model_pb2.Model) -> None:
    model.description.predictedFeatureName = LABEL_NAME
    model.description.predictedProbabilitiesName = PROBABILITY_NAME


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


def _imputer(values: Sequence[float], width: int) -> Model_pb2.Model:
    model = _model([(INPUT_NAME, _array(width))], [("imputed", _array(width))])
    model.imputer.imputedDoubleArray.vector.extend(values)
    model.imputer.replaceDoubleValue = float("nan")
    return model


def _float32_constants(prep: Preprocessing) -> tuple[Float64Array, Float64Array, Float64Array]:
    """Offsets, scales and imputed values of the numeric columns as scikit-learn applies them
    to float32 input: rounded to float32 (see ``Preprocessing.transform``)."""
    offsets = _as_float32([c.offset for c in prep.numeric])
    scales = _as_float32([c.scale for c in prep.numeric])
    imputed = _as_float32([c.impute for c in prep.numeric])
    for position, column in enumerate(prep.numeric):
        if not (np.isfinite(offsets[position]) and np.isfinite(imputed[position])):
            raise ConversionError(
                f"input {column.input_index}: the offset {column.offset} or "
                f"imputed value {column.impute} is not a finite float32"
            )
        if not (np.isfinite(scales[position]) and scales[position] > 0):
            raise ConversionError(
                f"input {column.input_index}: a scale of {column.scale} "
                "cannot be inverted or folded (it must be > 0)"
            )
    return offsets, scales, imputed


def _as_float32(values: Sequence[float]) -> Float64Array:
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)


# --- linear model ------------------------------------------------------------------------


def _linear_stages(
    prep: Preprocessing, linear: LinearModel, labels: tuple[int, ...]
) -> list[tuple[str, Any]]:
    weights = np.asarray(linear.coefficients, dtype=np.float64)
    if weights.shape[1:] != (prep.n_outputs,) or prep.n_outputs == 0:
        raise ConversionError(
            f"the linear model has {weights.shape[-1]} coefficients for {prep.n_outputs} features"
        )
    if not (np.isfinite(weights).all() and np.isfinite(linear.intercept).all()):
        raise ConversionError("the linear model has non-finite coefficients")
    offsets, scales, imputed = _float32_constants(prep)
    impute = np.full(prep.n_inputs, UNKNOWN_CODE)
    impute[[c.input_index for c in prep.numeric]] = imputed
    stages: list[tuple[str, Any]] = [("impute", _imputer(impute.tolist(), prep.n_inputs))]
    scaled = "imputed"
    if (offsets != 0.0).any() or (scales != 1.0).any():
        stages.append(("scale", _scaler(prep, offsets, scales)))
        scaled = "scaled"
    encoding, blocks = _encoding_stages(prep, scaled)
    return [
        *stages,
        *encoding,
        ("features", _vectorizer(blocks)),
        _linear_head(linear, labels),
    ]


def _linear_head(linear: LinearModel, labels: tuple[int, ...]) -> tuple[str, Any]:
    """The last stage: a GLM (binary, regression) or a softmax network (multi-class)."""
    weights, intercept = linear.coefficients, linear.intercept
    if linear.link == "logistic":
        return "glm", _glm(weights[0], float(intercept[0]))
    if linear.link == "identity":
        return "glm", _glm_regressor(weights[0], float(intercept[0]))
    if linear.link == "softmax":
        return "softmax", _softmax_network(weights, intercept, labels)
    raise ConversionError(
        f"Core ML has no linear classifier with the {linear.link} link (normalised "
        "one-vs-rest probabilities); export this model as onnx, tflite or web"
    )


_Block = tuple[str, int, _TypeSetter]  # a FeatureVectorizer input: name, width, type


def _encoding_stages(
    prep: Preprocessing, scaled: str
) -> tuple[list[tuple[str, Any]], list[_Block]]:
    """The stages that lay out the estimator's features as the IR does: the numeric columns,
    then one one-hot block per categorical column."""
    stages: list[tuple[str, Any]] = []
    blocks: list[_Block] = []
    if prep.numeric:
        indices = [c.input_index for c in prep.numeric]
        numeric = _array(len(indices))
        stages.append(("numeric", _extractor(scaled, prep.n_inputs, ("numeric", numeric), indices)))
        blocks.append(("numeric", len(indices), numeric))
    for position, onehot in enumerate(prep.categorical):
        code, encoded = f"code_{position}", f"onehot_{position}"
        # The one-hot encoder takes an int64 scalar: the extractor converts the code.
        extractor = _extractor("imputed", prep.n_inputs, (code, _int64), [onehot.input_index])
        stages.append((code, extractor))
        stages.append((encoded, _one_hot(code, encoded, onehot.categories)))
        blocks.append((encoded, onehot.categories, _int64_dictionary))
    return stages, blocks


def _scaler(prep: Preprocessing, offsets: Float64Array, scales: Float64Array) -> Model_pb2.Model:
    # scikit-learn subtracts and divides by the float32-rounded mean and scale for float32
    # input; Core ML computes in double, within a float32 ulp of it.
    shift = np.zeros(prep.n_inputs)
    scale = np.ones(prep.n_inputs)
    indices = [c.input_index for c in prep.numeric]
    shift[indices] = -offsets
    scale[indices] = 1.0 / scales
    model = _model([("imputed", _array(prep.n_inputs))], [("scaled", _array(prep.n_inputs))])
    model.scaler.shiftValue.extend(shift.tolist())
    model.scaler.scaleValue.extend(scale.tolist())
    return model


def _extractor(
    source: str, width: int, output: tuple[str, _TypeSetter], indices: Sequence[int]
) -> Model_pb2.Model:
    model = _model([(source, _array(width))], [output])
    model.arrayFeatureExtractor.extractIndex.extend(indices)
    return model


def _one_hot(source: str, name: str, categories: int) -> Model_pb2.Model:
    model = _model([(source, _int64)], [(name, _int64_dictionary)])
    encoder = model.oneHotEncoder
    encoder.int64Categories.vector.extend(range(categories))
    encoder.outputSparse = True
    encoder.handleUnknown = encoder.IgnoreUnknown
    return model


def _vectorizer(blocks: Sequence[_Block]) -> Model_pb2.Model:
    inputs = [(name, set_type) for name, _, set_type in blocks]
    model = _model(inputs, [("features", _array(sum(width for _, width, _ in blocks)))])
    for name, width, _ in blocks:
        column = model.featureVectorizer.inputList.add()
        column.inputColumn = name
        column.inputDimensions = width
    return model


def _glm(weights: Float64Array, intercept: float) -> Model_pb2.Model:
    model = _model([("features", _array(len(weights)))], _classifier_outputs())
    _classifier_interface(model)
    glm = model.glmClassifier
    glm.weights.add().value.extend(weights.tolist())
    glm.offset.append(intercept)
    glm.postEvaluationTransform = glm.Logit
    glm.classEncoding = glm.ReferenceClass
    glm.int64ClassLabels.vector.extend(CLASS_LABELS)
    return model


def _glm_regressor(weights: Float64Array, intercept: float) -> Model_pb2.Model:
    model = _model([("features", _array(len(weights)))], _regressor_outputs())
    model.description.predictedFeatureName = VALUE_NAME
    glm = model.glmRegressor
    glm.weights.add().value.extend(weights.tolist())
    glm.offset.append(intercept)
    glm.postEvaluationTransform = glm.NoTransform
    return model


def _softmax_network(
    weights: Float64Array, intercept: Float64Array, labels: tuple[int, ...]
) -> Model_pb2.Model:
    """A ``neuralNetworkClassifier`` of two layers, innerProduct (the K score rows) and
    softmax: Core ML's GLM classifier has no multinomial link. Its weights are float32
    (Core ML's neural networks compute in float32 on the CPU)."""
    n_classes, n_features = weights.shape
    model = _model([("features", _array(n_features))], _classifier_outputs())
    _classifier_interface(model)
    network = model.neuralNetworkClassifier
    dense = network.layers.add()
    dense.name = "scores"
    dense.input.append("features")
    dense.output.append("scores")
    product = dense.innerProduct
    product.inputChannels = n_features
    product.outputChannels = n_classes
    product.hasBias = True
    product.weights.floatValue.extend(weights.astype(np.float32).ravel().tolist())
    product.bias.floatValue.extend(intercept.astype(np.float32).tolist())
    softmax = network.layers.add()
    softmax.name = "probabilities"
    softmax.input.append("scores")
    softmax.output.append("probabilities")
    softmax.softmax.SetInParent()
    network.labelProbabilityLayerName = "probabilities"
    network.int64ClassLabels.vector.extend(labels)
    return model


# --- tree ensembles ----------------------------------------------------------------------

# Per numeric split (IR node): the threshold on the raw input, and whether the imputed value
# takes the true (``<=``) side.
_Folds = dict[int, tuple[float, bool]]


def _tree_stages(
    prep: Preprocessing, ensemble: TreeEnsemble, labels: tuple[int, ...]
) -> list[tuple[str, Any]]:
    if not ensemble.trees:
        raise ConversionError("the tree ensemble has no trees")
    offsets, scales, imputed = _float32_constants(prep)
    impute = np.full(prep.n_inputs, UNKNOWN_CODE)
    impute[[c.input_index for c in prep.numeric]] = imputed
    folds = [_fold_tree(tree, offsets, scales, imputed) for tree in ensemble.trees]
    trees = _tree_model(prep, ensemble, folds, labels)
    return [("impute", _imputer(impute.tolist(), prep.n_inputs)), ("trees", trees)]


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
    outputs = _regressor_outputs() if regression else _classifier_outputs()
    model = _model([("imputed", _array(prep.n_inputs))], outputs)
    if regression:
        model.description.predictedFeatureName = VALUE_NAME
        head: Any = model.treeEnsembleRegressor
    else:
        _classifier_interface(model)
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
