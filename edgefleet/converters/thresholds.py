"""Tree split thresholds for float32 runtimes (docs/architecture.md §4; used by the TFLite
and the IR-built ONNX converters): per split, the largest float32 raw value that the split
sends left, so that ``x <= T`` in float32 reproduces scikit-learn's decision for every
float32 input (see :mod:`edgefleet.converters.tflite`'s docstring)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgefleet.converters.ir import Preprocessing, TreeEnsemble
from edgefleet.errors import ConversionError

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
IntArray64 = npt.NDArray[np.int64]

_F32_INF_KEY = 0x7F800000  # the order key of float32 +inf (and minus it of -inf)


def _from_key(keys: IntArray64) -> Float32Array:
    """The float32 value of an order key: the bit pattern for keys >= 0, the negated
    magnitude with the sign bit for keys < 0 (so the integer order is the float order)."""
    bits = np.where(keys >= 0, keys, (-keys) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def _feature_value(raw: Float32Array, offset: Float64Array, scale: Float64Array) -> Float64Array:
    """The feature value a split compares, from a raw (imputed) input value, rounded as
    ``ir.Preprocessing.transform`` (and scikit-learn on float32 input) rounds it: scaled,
    where there is a scaler, in float32 with float32 constants."""
    value = raw.astype(np.float32)
    scaled = (offset != 0.0) | (scale != 1.0)
    with np.errstate(over="ignore", invalid="ignore"):  # +-inf stay +-inf, as in float32
        single = (value - offset.astype(np.float32)) / scale.astype(np.float32)
    return np.where(scaled, single, value).astype(np.float64)


def raw_thresholds(
    threshold: Float64Array, offset: Float64Array, scale: Float64Array
) -> Float32Array:
    """Per split, the largest float32 raw value ``T`` that the split sends left, so that
    ``x <= T`` (float32) reproduces its decision for every float32 ``x``.

    Without a scaler this is ``threshold`` rounded down to float32. Found by bisection
    over the float32 values in order, all splits at once (a float32 subtraction and
    division by a positive scale never reverse the order of two values).
    """
    threshold = np.asarray(threshold, dtype=np.float64)
    offset = np.broadcast_to(np.asarray(offset, dtype=np.float64), threshold.shape)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), threshold.shape)
    if np.isnan(threshold).any() or (scale.astype(np.float32) <= 0).any():
        raise ConversionError("a tree split has a NaN threshold or a non-positive scale")

    def left(keys: IntArray64) -> npt.NDArray[np.bool_]:
        return _feature_value(_from_key(keys), offset, scale) <= threshold

    low = np.full(threshold.shape, -_F32_INF_KEY, dtype=np.int64)  # left(-inf) holds
    high = np.full(threshold.shape, _F32_INF_KEY, dtype=np.int64)
    everything_left = left(high)
    # Invariant: left(low) and not left(high); 2**32 keys -> at most 32 halvings.
    while True:
        open_ = (high - low > 1) & ~everything_left
        if not open_.any():
            break
        middle = (low + high) // 2
        goes_left = left(middle)
        low = np.where(open_ & goes_left, middle, low)
        high = np.where(open_ & ~goes_left, middle, high)
    return _from_key(np.where(everything_left, high, low))


def tree_thresholds(preprocessing: Preprocessing, ensemble: TreeEnsemble) -> list[Float32Array]:
    """Per tree, per node, the raw-value threshold (+inf at leaves): the trees read the
    graph's unscaled feature vector (numeric columns first, then the one-hot blocks)."""
    n_features = preprocessing.n_outputs
    offset = np.zeros(n_features)
    scale = np.ones(n_features)
    for position, column in enumerate(preprocessing.numeric):
        offset[position], scale[position] = column.offset, column.scale
    thresholds = []
    for tree in ensemble.trees:
        internal = ~tree.is_leaf
        feature = tree.feature[internal]
        if ((feature < 0) | (feature >= n_features)).any():
            raise ConversionError("a tree splits on a feature the preprocessing does not make")
        raw = np.full(len(tree.feature), np.inf, dtype=np.float32)
        raw[internal] = raw_thresholds(tree.threshold[internal], offset[feature], scale[feature])
        thresholds.append(raw)
    return thresholds
