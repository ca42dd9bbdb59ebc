"""Core ML stages of a linear model (:mod:`edgefleet.converters.coreml`): impute, scale,
lay out the numeric columns and the one-hot blocks as the IR does, then the head: a GLM
classifier (binary, Logit), a GLM regressor, or for K classes a neural-network classifier
(innerProduct + softmax: the GLM classifier has no multinomial link; normalised one-vs-rest
sigmoids as the softmax of log-sigmoids)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.converters.coreml_proto import Model_pb2
from edgefleet.converters.coreml_spec import (
    VALUE_NAME,
    TypeSetter,
    array,
    classifier_interface,
    classifier_outputs,
    float32_constants,
    imputer,
    int64,
    int64_dictionary,
    new_model,
    regressor_outputs,
)
from edgefleet.converters.ir import OVR_UNDERFLOW, LinearModel, Preprocessing
from edgefleet.errors import ConversionError

CLASS_LABELS = (0, 1)
UNKNOWN_CODE = -1.0
Float64Array = npt.NDArray[np.float64]


def linear_stages(
    prep: Preprocessing, linear: LinearModel, labels: tuple[int, ...]
) -> list[tuple[str, Any]]:
    weights = np.asarray(linear.coefficients, dtype=np.float64)
    if weights.shape[1:] != (prep.n_outputs,) or prep.n_outputs == 0:
        raise ConversionError(
            f"the linear model has {weights.shape[-1]} coefficients for {prep.n_outputs} features"
        )
    if not (np.isfinite(weights).all() and np.isfinite(linear.intercept).all()):
        raise ConversionError("the linear model has non-finite coefficients")
    offsets, scales, imputed = float32_constants(prep)
    impute = np.full(prep.n_inputs, UNKNOWN_CODE)
    impute[[c.input_index for c in prep.numeric]] = imputed
    stages: list[tuple[str, Any]] = [("impute", imputer(impute.tolist(), prep.n_inputs))]
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
    if linear.link == "ovr_logistic":
        return "softmax", _ovr_network(weights, intercept, labels)
    if linear.link == "modified_huber":
        return "softmax", _modified_huber_network(weights, intercept, labels)
    raise ConversionError(f"Core ML has no linear classifier with the {linear.link} link")


_Block = tuple[str, int, TypeSetter]  # a FeatureVectorizer input: name, width, type


def _encoding_stages(
    prep: Preprocessing, scaled: str
) -> tuple[list[tuple[str, Any]], list[_Block]]:
    """The stages that lay out the estimator's features as the IR does: the numeric columns,
    then one one-hot block per categorical column."""
    stages: list[tuple[str, Any]] = []
    blocks: list[_Block] = []
    if prep.numeric:
        indices = [c.input_index for c in prep.numeric]
        numeric = array(len(indices))
        stages.append(("numeric", _extractor(scaled, prep.n_inputs, ("numeric", numeric), indices)))
        blocks.append(("numeric", len(indices), numeric))
    for position, onehot in enumerate(prep.categorical):
        code, encoded = f"code_{position}", f"onehot_{position}"
        # The one-hot encoder takes an int64 scalar: the extractor converts the code.
        extractor = _extractor("imputed", prep.n_inputs, (code, int64), [onehot.input_index])
        stages.append((code, extractor))
        stages.append((encoded, _one_hot(code, encoded, onehot.categories)))
        blocks.append((encoded, onehot.categories, int64_dictionary))
    return stages, blocks


def _scaler(prep: Preprocessing, offsets: Float64Array, scales: Float64Array) -> Model_pb2.Model:
    # scikit-learn subtracts and divides by the float32-rounded mean and scale for float32
    # input; Core ML computes in double, within a float32 ulp of it.
    shift = np.zeros(prep.n_inputs)
    scale = np.ones(prep.n_inputs)
    indices = [c.input_index for c in prep.numeric]
    shift[indices] = -offsets
    scale[indices] = 1.0 / scales
    model = new_model([("imputed", array(prep.n_inputs))], [("scaled", array(prep.n_inputs))])
    model.scaler.shiftValue.extend(shift.tolist())
    model.scaler.scaleValue.extend(scale.tolist())
    return model


def _extractor(
    source: str, width: int, output: tuple[str, TypeSetter], indices: Sequence[int]
) -> Model_pb2.Model:
    model = new_model([(source, array(width))], [output])
    model.arrayFeatureExtractor.extractIndex.extend(indices)
    return model


def _one_hot(source: str, name: str, categories: int) -> Model_pb2.Model:
    model = new_model([(source, int64)], [(name, int64_dictionary)])
    encoder = model.oneHotEncoder
    encoder.int64Categories.vector.extend(range(categories))
    encoder.outputSparse = True
    encoder.handleUnknown = encoder.IgnoreUnknown
    return model


def _vectorizer(blocks: Sequence[_Block]) -> Model_pb2.Model:
    inputs = [(name, set_type) for name, _, set_type in blocks]
    model = new_model(inputs, [("features", array(sum(width for _, width, _ in blocks)))])
    for name, width, _ in blocks:
        column = model.featureVectorizer.inputList.add()
        column.inputColumn = name
        column.inputDimensions = width
    return model


def _glm(weights: Float64Array, intercept: float) -> Model_pb2.Model:
    model = new_model([("features", array(len(weights)))], classifier_outputs())
    classifier_interface(model)
    glm = model.glmClassifier
    glm.weights.add().value.extend(weights.tolist())
    glm.offset.append(intercept)
    glm.postEvaluationTransform = glm.Logit
    glm.classEncoding = glm.ReferenceClass
    glm.int64ClassLabels.vector.extend(CLASS_LABELS)
    return model


def _glm_regressor(weights: Float64Array, intercept: float) -> Model_pb2.Model:
    model = new_model([("features", array(len(weights)))], regressor_outputs())
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
    model, network = _network(weights, intercept, labels, "scores")
    _layer(network, "probabilities", "scores").softmax.SetInParent()
    return model


def _ovr_network(
    weights: Float64Array, intercept: Float64Array, labels: tuple[int, ...]
) -> Model_pb2.Model:
    """Normalised one-vs-rest sigmoids (multi-class ``SGDClassifier``): ``sigmoid(z_k) /
    sum_j sigmoid(z_j)`` is the softmax of ``log sigmoid(z)``. Layers: innerProduct (the
    scores), a unary threshold ``max(z, OVR_UNDERFLOW)``, a parametric softplus with
    alpha = beta = -1 (``-log(1 + exp(-z)) = log sigmoid(z)``), softmax. The threshold makes
    a row whose every score is below ``OVR_UNDERFLOW`` (all of scikit-learn's float64
    sigmoids 0) uniform, as scikit-learn answers it. It errs only where the top score is
    within about 100 above the floor and another is below it (scikit-learn gives that class
    0, this ``exp(floor - top)``); the parity gate checks the reference rows."""
    model, network = _network(weights, intercept, labels, "scores")
    _unary(network, "floored_scores", "scores", "THRESHOLD", alpha=OVR_UNDERFLOW)
    softplus = _layer(network, "log_sigmoid", "floored_scores").activation.parametricSoftplus
    softplus.alpha.floatValue.append(-1.0)
    softplus.beta.floatValue.append(-1.0)
    _layer(network, "probabilities", "log_sigmoid").softmax.SetInParent()
    return model


def _modified_huber_network(
    weights: Float64Array, intercept: Float64Array, labels: tuple[int, ...]
) -> Model_pb2.Model:
    """``SGDClassifier(loss='modified_huber')``: ``p = (clip(z, -1, 1) + 1) / 2``, then
    normalised (uniform where all are 0). Binary scores ``[-z, z]`` (their two ``p`` sum to
    1). Layers: innerProduct, threshold ``max(z, -1)``, times -1, threshold ``max(., -1)``
    (now ``-clip(z, -1, 1)``), ``-0.5 x + 0.5`` (``p``), ``log(p + 1e-30)``, softmax: the
    softmax of log p is p normalised, and all-zero p's are all ``log(1e-30)``, so uniform
    (a positive float32 ``p`` is at least ~3e-8, where adding 1e-30 changes nothing)."""
    if len(weights) == 1:
        weights = np.vstack([-weights, weights])
        intercept = np.concatenate([-intercept, intercept])
    model, network = _network(weights, intercept, labels, "scores")
    _unary(network, "at_least_minus_one", "scores", "THRESHOLD", alpha=-1.0)
    _affine(network, "negated", "at_least_minus_one", -1.0, 0.0)
    _unary(network, "minus_clipped", "negated", "THRESHOLD", alpha=-1.0)
    _affine(network, "halves", "minus_clipped", -0.5, 0.5)
    _unary(network, "log_halves", "halves", "LOG", shift=1e-30)
    _layer(network, "probabilities", "log_halves").softmax.SetInParent()
    return model


def _unary(
    network: Any, name: str, source: str, kind: str, alpha: float = 0.0, shift: float = 0.0
) -> None:
    unary = _layer(network, name, source).unary
    unary.type = getattr(unary, kind)
    unary.alpha, unary.shift, unary.scale = alpha, shift, 1.0


def _affine(network: Any, name: str, source: str, alpha: float, beta: float) -> None:
    linear = _layer(network, name, source).activation.linear
    linear.alpha, linear.beta = alpha, beta


def _network(
    weights: Float64Array, intercept: Float64Array, labels: tuple[int, ...], scores: str
) -> tuple[Model_pb2.Model, Any]:
    """A ``neuralNetworkClassifier`` whose first layer writes the K score rows to
    ``scores`` (float32 weights: Core ML's neural networks compute in float32 on the CPU),
    and whose probabilities are the blob ``probabilities``."""
    n_classes, n_features = weights.shape
    model = new_model([("features", array(n_features))], classifier_outputs())
    classifier_interface(model)
    network = model.neuralNetworkClassifier
    product = _layer(network, scores, "features").innerProduct
    product.inputChannels = n_features
    product.outputChannels = n_classes
    product.hasBias = True
    product.weights.floatValue.extend(weights.astype(np.float32).ravel().tolist())
    product.bias.floatValue.extend(intercept.astype(np.float32).tolist())
    network.labelProbabilityLayerName = "probabilities"
    network.int64ClassLabels.vector.extend(labels)
    return model, network


def _layer(network: Any, name: str, source: str) -> Any:
    """A new layer reading blob ``source`` and writing blob ``name``."""
    layer = network.layers.add()
    layer.name = name
    layer.input.append(source)
    layer.output.append(name)
    return layer
