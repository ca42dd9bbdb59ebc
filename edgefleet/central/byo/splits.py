"""Tree splits moved to the raw float32 inputs of the model contract.

A user's tree model was fitted behind the user's scalers on float64 data; on a device it
reads float32 raw values. Rather than scaling in the graph (where float32 arithmetic would
flip splits that a value sits close to), each split on a numeric feature gets a threshold in
raw units, and the rebuilt pipeline has no scaler in front of the trees
(docs/architecture.md §4, "Bring your own pipeline"):

* scikit-learn's trees compare ``float32(scaled)`` with a float64 threshold ``t``: the new
  threshold is the largest float32 raw value ``r`` with ``float32(g(r)) <= t``, ``g`` being
  the user's own fitted scaler, so every float32 input takes the side it took before;
* HistGradientBoosting compares the float64 value with ``t`` (no float32 cast), and its
  thresholds can equal a training value exactly: the new threshold is the largest float64
  ``x`` with ``g(x) <= t``, raised to the next float32, so every value the user's pipeline
  sent left still goes left after the device's float32 rounding (only values within one
  float32 step above a threshold change side).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.converters.ir_hgb import hgb_input_columns

FloatArray = npt.NDArray[np.float64]
Scale = Callable[[FloatArray, npt.NDArray[np.int64]], FloatArray]
"""``scale(values, features)``: the user's scaled value of each raw value, per feature."""

_F32_INF = 0x7F800000
_F64_INF = 0x7FF0000000000000


def _at32(keys: npt.NDArray[np.int64]) -> FloatArray:
    bits = np.where(keys >= 0, keys, (-keys) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32).astype(np.float64)


def _at64(keys: npt.NDArray[np.int64]) -> FloatArray:
    magnitude = np.abs(keys).astype(np.uint64).view(np.float64)
    return np.where(keys >= 0, magnitude, -magnitude)


def _largest(
    at: Callable[[npt.NDArray[np.int64]], FloatArray],
    infinity: int,
    left: Callable[[FloatArray], npt.NDArray[np.bool_]],
    size: int,
) -> FloatArray:
    """Per split, the largest value on the ordered float line (keys -inf..+inf) that
    ``left`` accepts; ``left`` is monotone (true up to a point, false after)."""
    low = np.full(size, -infinity, dtype=np.int64)
    high = np.full(size, infinity + 1, dtype=np.int64)
    # The float64 key range spans more than int64 holds: no subtraction of keys.
    while (high > low + 1).any():
        middle = (low >> 1) + (high >> 1) + (low & high & 1)
        holds = left(at(middle))
        low = np.where(holds, middle, low)
        high = np.where(holds, high, middle)
    return at(low)


def float32_thresholds(
    thresholds: FloatArray, features: npt.NDArray[np.int64], scale: Scale
) -> FloatArray:
    """For scikit-learn's trees: the largest float32 raw value that goes left."""

    def left(raw: FloatArray) -> npt.NDArray[np.bool_]:
        scaled = scale(raw, features).astype(np.float32).astype(np.float64)
        return np.asarray(scaled <= thresholds)

    return _largest(_at32, _F32_INF, left, len(thresholds))


def float64_thresholds(
    thresholds: FloatArray, features: npt.NDArray[np.int64], scale: Scale
) -> FloatArray:
    """For HistGradientBoosting: the largest float64 that goes left, raised to a float32."""

    def left(raw: FloatArray) -> npt.NDArray[np.bool_]:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(scale(raw, features) <= thresholds)

    largest = _largest(_at64, _F64_INF, left, len(thresholds))
    with np.errstate(over="ignore"):
        rounded = largest.astype(np.float32)
    up = np.nextafter(rounded, np.float32(np.inf))
    return np.where(rounded.astype(np.float64) < largest, up, rounded).astype(np.float64)


def fold_into_trees(estimator: Any, numeric: Sequence[bool], scale: Scale) -> None:
    """Rewrite ``estimator``'s numeric split thresholds in raw units, in place (a copy of the
    user's estimator). ``numeric[j]``: whether estimator feature ``j`` is a numeric column
    (one-hot and ordinal codes are exact small integers in float32 and stay)."""
    is_numeric = np.asarray(numeric, dtype=bool)
    predictors_of = getattr(estimator, "_predictors", [])
    columns = hgb_input_columns(estimator) if predictors_of else np.zeros(0, dtype=np.int64)
    for predictors in predictors_of:
        for predictor in predictors:
            nodes = predictor.nodes
            split = ~nodes["is_leaf"].astype(bool) & ~nodes["is_categorical"].astype(bool)
            # HGB numbers its native categorical features first (ir.hgb_input_columns).
            features = columns[nodes["feature_idx"].astype(np.int64)]
            chosen = split & is_numeric[np.where(split, features, 0)]
            nodes["num_threshold"][chosen] = float64_thresholds(
                nodes["num_threshold"][chosen], features[chosen], scale
            )
    for tree in _sklearn_trees(estimator):
        state = dict(tree.__getstate__())
        nodes = state["nodes"].copy()
        features = nodes["feature"].astype(np.int64)
        split = nodes["left_child"] >= 0
        chosen = split & is_numeric[np.where(split, features, 0)]
        nodes["threshold"][chosen] = float32_thresholds(
            nodes["threshold"][chosen], features[chosen], scale
        )
        state["nodes"] = nodes
        tree.__setstate__(state)


def _sklearn_trees(estimator: Any) -> list[Any]:
    if hasattr(estimator, "tree_"):
        return [estimator.tree_]
    members = getattr(estimator, "estimators_", None)
    if members is None:
        return []
    return [m.tree_ for m in np.asarray(members, dtype=object).ravel()]
