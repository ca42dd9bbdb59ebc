"""An evaluator of the Core ML classic model spec, for the model types edgefleet emits.

Core ML runs only on Apple platforms, so the parity gate checks an exported ``.mlmodel``
against scikit-learn with this evaluator instead (docs/architecture.md §4). It reads the spec
(``coremltools.proto.Model_pb2.Model``) and computes, batched with numpy, what the proto
documentation (``mlmodel/format/*.proto``) and coremltools' own tree-ensemble checker
(``mlmodel/src/TreeEnsembleCommon.cpp``) say the model computes:

- ``pipeline`` / ``pipelineClassifier``: the models run in order; each reads features by name
  from the pipeline's inputs or from the outputs of the models before it.
- ``imputer``: values equal to ``replaceDoubleValue`` (NaN when unset, and NaN matches NaN)
  are replaced by ``imputedDoubleValue`` or, element-wise, by ``imputedDoubleArray``.
- ``scaler``: ``scaleValue * (x + shiftValue)``; one value broadcasts over an array, none means
  scale 1 and shift 0.
- ``arrayFeatureExtractor``: the elements at ``extractIndex``, typed as the output declares.
- ``oneHotEncoder`` (int64 categories): a 1 at the position of the input in
  ``int64Categories``, all zeros for an unknown value with ``IgnoreUnknown``; the sparse form is
  a dictionary ``{position: 1.0}``.
- ``featureVectorizer``: the inputs concatenated in ``inputList`` order, each taking
  ``inputDimensions`` slots; a dictionary fills the slots its keys name.
- ``glmRegressor``: ``w . x + offset`` per weight row, NoTransform; ``treeEnsembleRegressor``:
  the summed leaves plus ``basePredictionValue`` (NoTransform or Regression_Logistic); both
  give a double for one value, a multiArray for several (as the output declares).
- ``neuralNetworkClassifier`` with ``innerProduct``, ``softmax``, ``unary`` (on ``x' = scale
  * x + shift``: ``THRESHOLD`` ``max(x', alpha)``, ``LOG`` ``log(x')``) and ``activation``
  (``linear`` ``alpha * x + beta``; ``parametricSoftplus`` with one alpha and beta:
  ``alpha * log(1 + exp(beta * x))``) layers on a rank-1 input
  (``[C]``, Core ML's C x 1 x 1): the layers run in order over named blobs, in float32 (Core
  ML's CPU precision), and ``labelProbabilityLayerName`` (default: the last layer's output)
  holds one probability per class label.
- ``glmClassifier``: ``z = w . x + offset``; with one weight row and two class labels,
  P(labels[1]) = logistic(z) and P(labels[0]) = 1 - P(labels[1]) (both class encodings; the
  validator allows one row for two classes in each).
- ``treeEnsembleClassifier``: every tree is walked from its root (the node no other node names
  as a child); a branch goes to ``trueChildNodeId`` when ``x[branchFeatureIndex] <op>
  branchFeatureValue`` holds, compared in double precision; a leaf adds its evaluation values
  to ``basePredictionValue``. Then ``postEvaluationTransform``. One prediction dimension with two
  class labels is binary mode (the score is P(labels[1])); ``n`` dimensions with ``n`` labels is
  multiclass mode.

Where the documentation is silent, this evaluator assumes, and says so:

- A NaN feature reaching a branch is a missing value and goes to the true child exactly when
  ``missingValueTracksTrueChild`` is set, for every branch mode (the flag's documented purpose).
- A double converted to an int64 feature is truncated toward zero (C++ ``static_cast``);
  a non-finite value has no defined conversion and is refused.
- ``classLabel`` is the label of the largest probability, the first one on a tie.
- ``Classification_SoftMaxWithZeroClassReference`` in binary mode is the softmax of
  ``[0, v]``, i.e. logistic(v); plain ``Classification_SoftMax`` of a single score is refused.

Anything else (another model type, string features, probit links, ...) raises
:class:`~edgefleet.errors.ConversionError` naming what is not supported, so a spec this
evaluator cannot vouch for never passes the parity gate by accident.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.converters.coreml_eval_trees import read_forest, walk
from edgefleet.converters.coreml_proto import Model_pb2
from edgefleet.errors import ConversionError

Float64Array = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# TreeEnsemblePostEvaluationTransform
NO_TRANSFORM, SOFTMAX, LOGISTIC, SOFTMAX_ZERO_REFERENCE = range(4)
_TRANSFORM_NAMES = (
    "NoTransform",
    "Classification_SoftMax",
    "Regression_Logistic",
    "Classification_SoftMaxWithZeroClassReference",
)


@dataclass(frozen=True)
class DictBatch:
    """A batch of dictionary features: row ``i`` maps ``keys[j]`` to ``values[i, j]`` wherever
    ``present[i, j]`` (Core ML dictionaries are sparse; a batch shares one key list)."""

    keys: tuple[int, ...]
    values: Float64Array
    present: BoolArray

    def dense(self, keys: Sequence[int]) -> Float64Array:
        """The values of ``keys`` as columns; every row must hold every key."""
        columns = []
        for key in keys:
            if key not in self.keys:
                raise ConversionError(f"the dictionary output has no key {key}")
            j = self.keys.index(key)
            if not self.present[:, j].all():
                raise ConversionError(f"the dictionary output lacks key {key} in some rows")
            columns.append(self.values[:, j])
        return np.column_stack(columns).astype(np.float64)


Feature = npt.NDArray[Any] | DictBatch
Features = dict[str, Feature]
_Handler = Callable[[Model_pb2.Model, Features], Features]


def evaluate(spec: Model_pb2.Model, inputs: Mapping[str, Feature]) -> Features:
    """Run ``spec`` on a batch and return its declared outputs by name.

    Batches: a multiArray ``[D]`` feature is a float64 ``[N, D]`` array, a double or int64
    feature an ``[N]`` array, a dictionary a :class:`DictBatch`.
    """
    produced = _run(spec, dict(inputs))
    missing = [f.name for f in spec.description.output if f.name not in produced]
    if missing:
        raise ConversionError(f"the model declares outputs it never produces: {missing}")
    return {f.name: produced[f.name] for f in spec.description.output}


def _check_declared_input(kind: str, declared: Any, features: Features) -> None:
    if declared.name not in features:
        raise ConversionError(
            f"{kind} reads the feature {declared.name!r}, which neither "
            "the caller nor an earlier model of the pipeline provides"
        )
    value = features[declared.name]
    declared_kind = declared.type.WhichOneof("Type")
    if declared_kind == "dictionaryType":
        fits = isinstance(value, DictBatch)
    elif isinstance(value, DictBatch):
        fits = False
    elif declared_kind == "multiArrayType":
        width = int(np.prod(declared.type.multiArrayType.shape))
        fits = value.ndim == 2 and value.shape[1] == width
    elif declared_kind == "int64Type":
        fits = value.ndim == 1 and np.issubdtype(value.dtype, np.integer)
    else:
        fits = declared_kind == "doubleType" and value.ndim == 1
    if not fits:
        raise ConversionError(
            f"{kind}: the feature {declared.name!r} does not match its "
            f"declared type {declared_kind}"
        )


def _run(model: Model_pb2.Model, features: Features) -> Features:
    kind = model.WhichOneof("Type")
    handler = _HANDLERS.get(kind or "")
    if handler is None:
        raise ConversionError(
            f"the Core ML evaluator does not know the model type {kind!r}; "
            f"it evaluates: {', '.join(sorted(_HANDLERS))}"
        )
    for declared in model.description.input:
        _check_declared_input(str(kind), declared, features)
    return handler(model, features)


def _pipeline(model: Model_pb2.Model, features: Features) -> Features:
    kind = model.WhichOneof("Type")
    stages = model.pipeline if kind == "pipeline" else getattr(model, kind).pipeline
    if not stages.models:
        raise ConversionError(f"the {kind} holds no models")
    available = dict(features)
    for stage in stages.models:
        available.update(_run(stage, available))
    return available


def _single_input(model: Model_pb2.Model, features: Features) -> npt.NDArray[Any]:
    if len(model.description.input) != 1:
        raise ConversionError(f"{model.WhichOneof('Type')} takes exactly one input")
    value = features[model.description.input[0].name]
    if isinstance(value, DictBatch):
        raise ConversionError(f"{model.WhichOneof('Type')} does not take a dictionary here")
    return value


def _output_name(model: Model_pb2.Model) -> str:
    if len(model.description.output) != 1:
        raise ConversionError(f"{model.WhichOneof('Type')} has exactly one output")
    return str(model.description.output[0].name)


def _imputer(model: Model_pb2.Model, features: Features) -> Features:
    spec = model.imputer
    x = np.asarray(_single_input(model, features), dtype=np.float64)
    replace_kind = spec.WhichOneof("ReplaceValue")
    if replace_kind not in (None, "replaceDoubleValue"):
        raise ConversionError(f"the evaluator's imputer does not support {replace_kind}")
    # An unset replace value means NaN, the only missing marker a double array can carry.
    replace = float(spec.replaceDoubleValue) if replace_kind else float("nan")
    missing = np.isnan(x) if np.isnan(replace) else x == replace
    imputed_kind = spec.WhichOneof("ImputedValue")
    if imputed_kind == "imputedDoubleArray":
        values = np.asarray(spec.imputedDoubleArray.vector, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(values):
            raise ConversionError(
                f"imputedDoubleArray has {len(values)} values for an input "
                f"of shape {list(x.shape[1:])}"
            )
        return {_output_name(model): np.where(missing, values[None, :], x)}
    if imputed_kind == "imputedDoubleValue":
        return {_output_name(model): np.where(missing, float(spec.imputedDoubleValue), x)}
    raise ConversionError(f"the evaluator's imputer does not support {imputed_kind}")


def _broadcast(values: Sequence[float], width: int, default: float, what: str) -> Float64Array:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return np.full(width, default)
    if array.size == 1 or array.size == width:
        return np.broadcast_to(array, (width,)).astype(np.float64)
    raise ConversionError(f"scaler: {array.size} {what} values for {width} inputs")


def _scaler(model: Model_pb2.Model, features: Features) -> Features:
    x = np.asarray(_single_input(model, features), dtype=np.float64)
    width = x.shape[1] if x.ndim == 2 else 1
    shift = _broadcast(model.scaler.shiftValue, width, 0.0, "shift")
    scale = _broadcast(model.scaler.scaleValue, width, 1.0, "scale")
    if x.ndim == 1:
        return {_output_name(model): scale[0] * (x + shift[0])}
    return {_output_name(model): scale * (x + shift)}


def _to_int64(values: Float64Array) -> Int64Array:
    if not np.isfinite(values).all():
        raise ConversionError("a non-finite value cannot become an int64 feature")
    return np.trunc(values).astype(np.int64)


def _array_feature_extractor(model: Model_pb2.Model, features: Features) -> Features:
    x = np.asarray(_single_input(model, features), dtype=np.float64)
    indices = [int(i) for i in model.arrayFeatureExtractor.extractIndex]
    if x.ndim != 2 or not indices or max(indices) >= x.shape[1]:
        raise ConversionError(
            f"arrayFeatureExtractor indices {indices} do not fit an input "
            f"of shape {list(x.shape[1:])}"
        )
    picked = x[:, indices]
    kind = model.description.output[0].type.WhichOneof("Type")
    if kind == "multiArrayType":
        return {_output_name(model): picked}
    if len(indices) != 1:
        raise ConversionError(f"arrayFeatureExtractor: a {kind} output takes one index")
    if kind == "doubleType":
        return {_output_name(model): picked[:, 0]}
    if kind == "int64Type":
        return {_output_name(model): _to_int64(picked[:, 0])}
    raise ConversionError(f"arrayFeatureExtractor: the evaluator does not support {kind} output")


def _one_hot_encoder(model: Model_pb2.Model, features: Features) -> Features:
    spec = model.oneHotEncoder
    if spec.WhichOneof("CategoryType") != "int64Categories":
        raise ConversionError("the evaluator's oneHotEncoder supports int64 categories only")
    codes = _single_input(model, features)
    if codes.ndim != 1 or not np.issubdtype(codes.dtype, np.integer):
        raise ConversionError("oneHotEncoder takes an int64 feature")
    categories = np.asarray(spec.int64Categories.vector, dtype=np.int64)
    hot = codes[:, None] == categories[None, :]
    unknown = ~hot.any(axis=1)
    if spec.handleUnknown != spec.IgnoreUnknown and unknown.any():
        raise ConversionError(
            f"oneHotEncoder (ErrorOnUnknown) got the unknown value {int(codes[unknown][0])}"
        )
    declared = model.description.output[0].type.WhichOneof("Type")
    expected = "dictionaryType" if spec.outputSparse else "multiArrayType"
    if declared != expected:
        raise ConversionError(
            f"oneHotEncoder with outputSparse={spec.outputSparse} must "
            f"declare a {expected} output, not {declared}"
        )
    if spec.outputSparse:
        batch = DictBatch(tuple(range(len(categories))), np.ones(hot.shape), hot)
        return {_output_name(model): batch}
    return {_output_name(model): hot.astype(np.float64)}


def _vectorize(value: Feature, width: int, name: str) -> Float64Array:
    if isinstance(value, DictBatch):
        out = np.zeros((value.values.shape[0], width))
        for j, key in enumerate(value.keys):
            used = value.present[:, j]
            if not used.any():
                continue
            if not 0 <= key < width:
                raise ConversionError(
                    f"featureVectorizer: key {key} of {name!r} is outside its {width} dimensions"
                )
            out[used, key] = value.values[used, j]
        return out
    array = np.asarray(value, dtype=np.float64)
    array = array[:, None] if array.ndim == 1 else array
    if array.shape[1] != width:
        raise ConversionError(
            f"featureVectorizer: {name!r} has {array.shape[1]} values, inputDimensions says {width}"
        )
    return array


def _feature_vectorizer(model: Model_pb2.Model, features: Features) -> Features:
    declared = {f.name for f in model.description.input}
    blocks = []
    for column in model.featureVectorizer.inputList:
        if column.inputColumn not in declared:
            raise ConversionError(
                f"featureVectorizer reads {column.inputColumn!r}, which it "
                "does not declare as an input"
            )
        blocks.append(
            _vectorize(
                features[column.inputColumn], int(column.inputDimensions), column.inputColumn
            )
        )
    if not blocks:
        raise ConversionError("featureVectorizer has an empty inputList")
    return {_output_name(model): np.concatenate(blocks, axis=1)}


def _input_matrix(model: Model_pb2.Model, features: Features) -> Float64Array:
    """A model's inputs side by side: feature indices count through them in order."""
    columns = []
    for declared in model.description.input:
        value = features[declared.name]
        if isinstance(value, DictBatch):
            raise ConversionError(
                f"{model.WhichOneof('Type')}: dictionary inputs are not supported by the evaluator"
            )
        array = np.asarray(value, dtype=np.float64)
        columns.append(array[:, None] if array.ndim == 1 else array)
    if not columns:
        raise ConversionError(f"{model.WhichOneof('Type')} declares no input")
    return np.concatenate(columns, axis=1)


def _class_labels(spec: Any, n_default: int) -> tuple[int, ...]:
    kind = spec.WhichOneof("ClassLabels")
    if kind == "int64ClassLabels":
        labels = tuple(int(v) for v in spec.int64ClassLabels.vector)
        if len(set(labels)) != len(labels):
            raise ConversionError(f"the class labels {list(labels)} repeat a label")
        return labels
    if kind is None:
        # TreeEnsembleCommon.cpp: no labels means 0/1 in binary mode, else 0..n-1.
        return (0, 1) if n_default == 1 else tuple(range(n_default))
    raise ConversionError("the evaluator supports int64 class labels only")


def _logistic(z: Float64Array) -> Float64Array:
    with np.errstate(over="ignore"):
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def _softmax(z: Float64Array) -> Float64Array:
    shifted = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float64)


def _classifier_outputs(
    model: Model_pb2.Model, labels: tuple[int, ...], probabilities: Float64Array
) -> Features:
    description = model.description
    if not description.predictedFeatureName:
        raise ConversionError(f"{model.WhichOneof('Type')} names no predictedFeatureName")
    winners = np.asarray(labels, dtype=np.int64)[probabilities.argmax(axis=1)]
    outputs: Features = {description.predictedFeatureName: winners}
    if description.predictedProbabilitiesName:
        outputs[description.predictedProbabilitiesName] = DictBatch(
            labels, probabilities, np.ones(probabilities.shape, dtype=bool)
        )
    return outputs


def _glm_classifier(model: Model_pb2.Model, features: Features) -> Features:
    spec = model.glmClassifier
    x = _input_matrix(model, features)
    if spec.postEvaluationTransform != spec.Logit:
        raise ConversionError("the evaluator's glmClassifier supports the Logit link only")
    weights = [np.asarray(row.value, dtype=np.float64) for row in spec.weights]
    labels = _class_labels(spec, len(weights))
    if len(weights) != 1 or len(labels) != 2 or len(spec.offset) != 1:
        raise ConversionError(
            f"the evaluator's glmClassifier is binary: one weight row and "
            f"offset for two labels, got {len(weights)} rows, "
            f"{len(spec.offset)} offsets, {len(labels)} labels"
        )
    if len(weights[0]) != x.shape[1]:
        raise ConversionError(
            f"glmClassifier has {len(weights[0])} weights for {x.shape[1]} input values"
        )
    positive = _logistic(x @ weights[0] + float(spec.offset[0]))
    return _classifier_outputs(model, labels, np.column_stack([1.0 - positive, positive]))


def _tree_probabilities(raw: Float64Array, transform: int, n_labels: int) -> Float64Array:
    name = _TRANSFORM_NAMES[transform] if transform < len(_TRANSFORM_NAMES) else str(transform)
    dimensions = raw.shape[1]
    if dimensions == 1 and n_labels == 2:
        if transform == NO_TRANSFORM:
            positive = raw[:, 0]
        elif transform in (LOGISTIC, SOFTMAX_ZERO_REFERENCE):
            positive = _logistic(raw[:, 0])
        else:
            raise ConversionError(f"{name} is not defined for a single-score binary ensemble")
        return np.column_stack([1.0 - positive, positive])
    if dimensions == n_labels and dimensions >= 2:
        if transform == NO_TRANSFORM:
            return raw
        if transform == SOFTMAX:
            return _softmax(raw)
        if transform == LOGISTIC:
            return _logistic(raw)
        raise ConversionError(f"{name} is not defined for {dimensions} scores and classes")
    raise ConversionError(
        f"the tree ensemble has {dimensions} prediction dimensions for {n_labels} class labels"
    )


def _tree_ensemble_classifier(model: Model_pb2.Model, features: Features) -> Features:
    spec = model.treeEnsembleClassifier
    x = _input_matrix(model, features)
    forest = read_forest(spec.treeEnsemble, x.shape[1])
    raw = forest.base[None, :] + walk(forest, x)
    labels = _class_labels(spec, raw.shape[1])
    probabilities = _tree_probabilities(raw, int(spec.postEvaluationTransform), len(labels))
    return _classifier_outputs(model, labels, probabilities)


def _regressor_output(model: Model_pb2.Model, values: Float64Array) -> Features:
    """A regressor's prediction as its declared output: a double, or a multiArray."""
    name = model.description.predictedFeatureName or _output_name(model)
    declared = {f.name: f.type.WhichOneof("Type") for f in model.description.output}
    kind = declared.get(name)
    if kind == "doubleType" and values.shape[1] == 1:
        return {name: values[:, 0]}
    if kind == "multiArrayType":
        return {name: values}
    raise ConversionError(
        f"{model.WhichOneof('Type')}: {values.shape[1]} predicted values cannot be "
        f"the declared output {name!r} ({kind})"
    )


def _glm_regressor(model: Model_pb2.Model, features: Features) -> Features:
    spec = model.glmRegressor
    x = _input_matrix(model, features)
    if spec.postEvaluationTransform != spec.NoTransform:
        raise ConversionError("the evaluator's glmRegressor supports NoTransform only")
    weights = np.asarray([list(row.value) for row in spec.weights], dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != x.shape[1] or len(spec.offset) != len(weights):
        raise ConversionError(
            f"glmRegressor: {len(spec.weights)} weight rows and {len(spec.offset)} offsets "
            f"do not fit {x.shape[1]} input values"
        )
    offset = np.asarray(spec.offset, dtype=np.float64)
    return _regressor_output(model, x @ weights.T + offset)


def _tree_ensemble_regressor(model: Model_pb2.Model, features: Features) -> Features:
    spec = model.treeEnsembleRegressor
    x = _input_matrix(model, features)
    forest = read_forest(spec.treeEnsemble, x.shape[1])
    raw = forest.base[None, :] + walk(forest, x)
    transform = int(spec.postEvaluationTransform)
    if transform == LOGISTIC:
        raw = _logistic(raw)
    elif transform != NO_TRANSFORM:
        raise ConversionError(f"treeEnsembleRegressor: {_TRANSFORM_NAMES[transform]} is refused")
    return _regressor_output(model, raw)


def _neural_network_classifier(model: Model_pb2.Model, features: Features) -> Features:
    """Layers in order over named blobs, each a float32 ``[N, C]`` batch (a rank-1 input of
    C channels, as Core ML reads a ``[C]`` multiArray). Core ML's CPU computes neural
    networks in float32, and so does this evaluator."""
    spec = model.neuralNetworkClassifier
    if spec.preprocessing:
        raise ConversionError("the evaluator's neural networks take no image preprocessing")
    blobs: dict[str, npt.NDArray[np.float32]] = {}
    for declared in model.description.input:
        value = features[declared.name]
        if isinstance(value, DictBatch) or np.ndim(value) != 2:
            raise ConversionError(f"neuralNetworkClassifier input {declared.name!r} is not [C]")
        blobs[declared.name] = np.asarray(value, dtype=np.float32)
    if not spec.layers:
        raise ConversionError("the neural network has no layers")
    for layer in spec.layers:
        if len(layer.input) != 1 or len(layer.output) != 1 or layer.input[0] not in blobs:
            raise ConversionError(
                f"layer {layer.name!r} must read one known blob and write one; it reads "
                f"{list(layer.input)}"
            )
        blobs[layer.output[0]] = _layer(layer, blobs[layer.input[0]])
    source = spec.labelProbabilityLayerName or spec.layers[-1].output[0]
    if source not in blobs:
        raise ConversionError(f"labelProbabilityLayerName {source!r} names no blob")
    probabilities = blobs[source].astype(np.float64)
    labels = _class_labels(spec, probabilities.shape[1])
    if len(labels) != probabilities.shape[1]:
        raise ConversionError(
            f"the network gives {probabilities.shape[1]} probabilities for {len(labels)} labels"
        )
    return _classifier_outputs(model, labels, probabilities)


def _layer(layer: Any, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    kind = layer.WhichOneof("layer")
    if kind == "innerProduct":
        params = layer.innerProduct
        rows, columns = int(params.outputChannels), int(params.inputChannels)
        weights = np.asarray(params.weights.floatValue, dtype=np.float32)
        if columns != x.shape[1] or weights.size != rows * columns:
            raise ConversionError(
                f"innerProduct {layer.name!r}: {weights.size} float weights for "
                f"{rows} x {columns}, input has {x.shape[1]} channels"
            )
        out = x @ weights.reshape(rows, columns).T
        if params.hasBias:
            bias = np.asarray(params.bias.floatValue, dtype=np.float32)
            if bias.size != rows:
                raise ConversionError(f"innerProduct {layer.name!r}: {bias.size} bias values")
            out = out + bias
        return np.asarray(out, dtype=np.float32)
    if kind == "softmax":
        shifted = np.exp(x - x.max(axis=1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float32)
    if kind == "activation":
        return _activation(layer, x)
    if kind == "unary":
        return _unary(layer, x)
    raise ConversionError(f"the evaluator does not know the neural network layer {kind!r}")


def _activation(layer: Any, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``parametricSoftplus``: ``alpha * log(1 + exp(beta * x))`` (one alpha and beta for
    every channel), computed without overflow (``logaddexp``), as the function is defined
    for every float."""
    kind = layer.activation.WhichOneof("NonlinearityType")
    if kind == "linear":
        params = layer.activation.linear
        return np.asarray(np.float32(params.alpha) * x + np.float32(params.beta), np.float32)
    if kind == "parametricSoftplus":
        params = layer.activation.parametricSoftplus
        alpha, beta = list(params.alpha.floatValue), list(params.beta.floatValue)
        if len(alpha) != 1 or len(beta) != 1:
            raise ConversionError(f"layer {layer.name!r}: one alpha and one beta are read")
        inner = np.float32(beta[0]) * x
        return np.asarray(np.float32(alpha[0]) * np.logaddexp(np.float32(0.0), inner), np.float32)
    raise ConversionError(
        f"the evaluator does not know the neural network layer 'activation' ({kind})"
    )


def _unary(layer: Any, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``x' = scale * x + shift``, then ``THRESHOLD``: ``max(x', alpha)`` or ``LOG``:
    ``log(x')``."""
    params = layer.unary
    shifted = np.float32(params.scale) * x + np.float32(params.shift)
    if params.type == params.THRESHOLD:
        return np.asarray(np.maximum(shifted, np.float32(params.alpha)), dtype=np.float32)
    if params.type == params.LOG:
        with np.errstate(divide="ignore"):
            return np.asarray(np.log(shifted), dtype=np.float32)
    raise ConversionError(
        f"the evaluator does not know the neural network layer 'unary' ({params.type})"
    )


_HANDLERS: dict[str, _Handler] = {
    "pipeline": _pipeline,
    "pipelineClassifier": _pipeline,
    "pipelineRegressor": _pipeline,
    "glmRegressor": _glm_regressor,
    "treeEnsembleRegressor": _tree_ensemble_regressor,
    "neuralNetworkClassifier": _neural_network_classifier,
    "imputer": _imputer,
    "scaler": _scaler,
    "arrayFeatureExtractor": _array_feature_extractor,
    "oneHotEncoder": _one_hot_encoder,
    "featureVectorizer": _feature_vectorizer,
    "glmClassifier": _glm_classifier,
    "treeEnsembleClassifier": _tree_ensemble_classifier,
}
