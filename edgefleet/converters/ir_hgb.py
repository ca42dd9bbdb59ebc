"""HistGradientBoosting read into the IR (:mod:`edgefleet.converters.ir`): its predictors'
nodes, with native categorical splits turned into numeric ones, features numbered as the
estimator's inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.converters.ir import (
    Float64Array,
    IntArray,
    Task,
    Tree,
    TreeEnsemble,
    additive_link,
)
from edgefleet.errors import UnsupportedModelError


def read_hist_gradient_boosting(estimator: Any, task: Task) -> TreeEnsemble:
    predictors = estimator._predictors
    width = len(predictors[0])
    categories = _hgb_categories(estimator)
    columns = hgb_input_columns(estimator)
    trees = []
    for iteration in predictors:
        for k, predictor in enumerate(iteration):
            tree = _hist_tree(predictor, k, width, categories)
            trees.append(_with_features(tree, columns))
    base = np.asarray(estimator._baseline_prediction, dtype=np.float64).ravel()
    return TreeEnsemble(tuple(trees), "additive", base, False, additive_link(task))


def hgb_input_columns(estimator: Any) -> IntArray:
    """Per feature index of a HistGradientBoosting predictor, the estimator's input column:
    with native categorical features, HGB encodes them first (its ``_preprocessor``), so
    its predictors number the categorical columns before the others."""
    categorical = getattr(estimator, "is_categorical_", None)
    if getattr(estimator, "_preprocessor", None) is None or categorical is None:
        return np.arange(int(estimator.n_features_in_), dtype=np.int64)
    mask = np.asarray(categorical, dtype=bool)
    return np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)]).astype(np.int64)


@dataclass(frozen=True)
class _Categories:
    """HGB's categories per categorical feature (predictor numbering): the raw values, whose
    positions are HGB's internal codes, and which of those the model knows."""

    values: dict[int, Float64Array]
    known: Any  # (known bitsets, per feature its row)


def _hgb_categories(estimator: Any) -> _Categories:
    preprocessor = getattr(estimator, "_preprocessor", None)
    if preprocessor is None:
        return _Categories({}, None)
    encoder = preprocessor.named_transformers_["encoder"]
    values = {}
    for j, raw in enumerate(encoder.categories_):
        raw = np.asarray(raw, dtype=np.float64)
        raw = raw[~np.isnan(raw)]  # NaN is HGB's missing value, not a category
        if not np.array_equal(raw, np.round(raw)) or (raw.size and np.abs(raw).max() > 2**20):
            raise UnsupportedModelError(
                "HistGradientBoosting's native categorical features must be integer codes "
                "(an OrdinalEncoder's output)"
            )
        values[j] = raw
    return _Categories(values, estimator._bin_mapper.make_known_categories_bitsets())


def _with_features(tree: Tree, columns: IntArray) -> Tree:
    if np.array_equal(columns, np.arange(len(columns))):
        return tree
    feature = np.where(tree.feature >= 0, columns[np.maximum(tree.feature, 0)], -1)
    return Tree(feature, tree.threshold, tree.left, tree.right, tree.value, tree.missing_left)


def _hist_tree(predictor: Any, column: int, width: int, categories: _Categories) -> Tree:
    """One HGB predictor: leaf values already include the learning rate. A native
    categorical split becomes numeric splits (``_categorical_splits``)."""
    nodes = predictor.nodes
    leaf = nodes["is_leaf"].astype(bool)
    value = np.zeros((len(nodes), width))
    value[:, column] = np.asarray(nodes["value"], dtype=np.float64)
    # HGB stores children as uint32 (0 at leaves): widen before marking leaves with -1.
    tree = Tree(
        feature=np.where(leaf, -1, nodes["feature_idx"].astype(np.int64)),
        threshold=np.asarray(nodes["num_threshold"], dtype=np.float64),
        left=np.where(leaf, -1, nodes["left"].astype(np.int64)),
        right=np.where(leaf, -1, nodes["right"].astype(np.int64)),
        value=value,
        missing_left=np.asarray(nodes["missing_go_to_left"], dtype=bool),
    )
    categorical = np.flatnonzero(nodes["is_categorical"].astype(bool) & ~leaf)
    if categorical.size == 0:
        return tree
    return _categorical_splits(tree, predictor.raw_left_cat_bitsets, nodes, categorical, categories)


_BITS = np.arange(256)


def _bitset_members(bitsets: Any, row: int) -> npt.NDArray[np.bool_]:
    """Membership of the codes 0..255 in a 256-bit bitset (8 uint32 words)."""
    words = np.asarray(bitsets[row], dtype=np.uint64)
    shifted = words[_BITS // 32] >> (_BITS % 32).astype(np.uint64)
    return np.asarray(shifted & np.uint64(1), dtype=bool)


def _categorical_directions(
    tree: Tree, bitsets: Any, nodes: Any, node: int, categories: _Categories
) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """Over the integers from one below the smallest category to one above the largest,
    whether HGB sends each raw value left: a category by the split's left set (an
    unknown one, and any other value, to the missing side; ``_predictor.pyx``)."""
    f = int(tree.feature[node])
    raw = categories.values[f]
    miss_left = bool(tree.missing_left[node])
    goes_left = _bitset_members(bitsets, int(nodes["bitset_idx"][node]))
    known = _bitset_members(categories.known[0], int(categories.known[1][f]))
    codes = np.arange(len(raw))
    low, high = (int(raw.min()) - 1, int(raw.max()) + 1) if raw.size else (-1, 0)
    domain = np.arange(low, high + 1)
    direction = np.full(len(domain), miss_left)
    direction[(raw - low).astype(np.int64)] = np.where(known[codes], goes_left[codes], miss_left)
    return domain, direction


def _categorical_splits(
    tree: Tree, bitsets: Any, nodes: Any, categorical: IntArray, categories: _Categories
) -> Tree:
    """A native categorical split routes a value by set membership (``_categorical_
    directions``); over integer codes that is a step function with few steps, so it becomes
    a small search tree of numeric splits ``v <= b + 0.5`` whose leaves point at the split's
    two children (shared, not copied: the tree becomes a DAG). Every format then reads only
    numeric splits, ceil(log2(steps)) levels deeper. NaN takes the missing side."""
    feature, threshold = list(tree.feature), list(tree.threshold)
    left, right = list(tree.left), list(tree.right)
    value, missing = list(tree.value), list(tree.missing_left)

    def add(f: int, t: float, lo: int, hi: int, miss: bool) -> int:
        feature.append(f)
        threshold.append(t)
        left.append(lo)
        right.append(hi)
        value.append(np.zeros(tree.value.shape[1]))
        missing.append(miss)
        return len(feature) - 1

    for node in categorical:
        domain, direction = _categorical_directions(tree, bitsets, nodes, int(node), categories)
        steps = np.flatnonzero(direction[1:] != direction[:-1])
        bounds = [float(domain[i]) + 0.5 for i in steps]
        sides = [bool(direction[0]), *(bool(direction[i + 1]) for i in steps)]
        targets = [int(tree.left[node]) if side else int(tree.right[node]) for side in sides]
        miss = bool(tree.missing_left[node])
        root = _search(add, int(tree.feature[node]), bounds, targets, miss)
        # The split's node takes the search tree's root's place (its parent points here).
        feature[node], threshold[node] = feature[root], threshold[root]
        left[node], right[node], value[node] = left[root], right[root], value[root]
        missing[node] = missing[root]
    return Tree.of_lists((feature, threshold, left, right, missing, value))


def _search(add: Any, feature: int, bounds: list[float], targets: list[int], miss: bool) -> int:
    """A balanced search over ``bounds`` (sorted): interval i (between bounds i-1 and i) goes
    to ``targets[i]``; returns the root node (a target itself when there is no bound)."""
    if not bounds:
        return targets[0]
    middle = len(bounds) // 2
    below = _search(add, feature, bounds[:middle], targets[: middle + 1], miss)
    above = _search(add, feature, bounds[middle + 1 :], targets[middle + 1 :], miss)
    return int(add(feature, bounds[middle], below, above, miss))
