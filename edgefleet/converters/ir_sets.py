"""One-hot columns that stand for several categories, in front of trees
(docs/architecture.md §4, "Bring your own pipeline": infrequent categories).

A ``OneHotEncoder`` with infrequent categories sets one column for any of them (and, under
``handle_unknown='infrequent_if_exist'``, for an unknown category too). A tree's split on
that column is a test of set membership on the category. The IR's one-hot block has a
column per category, so the split becomes a chain of numeric splits on the members'
columns that share their children (as HistGradientBoosting's categorical splits do,
``ir_hgb.py``): the first member found set sends the row where the merged column's 1 went;
none set sends it where its 0 went. Where an unknown category sets the merged column, an
unknown code (all the block's columns 0) must go with the members, so the chain tests the
other known categories instead and sends the row the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.converters.ir import IntArray, Tree, TreeEnsemble


@dataclass(frozen=True)
class CategorySet:
    """The IR columns of the categories that set one encoder output column."""

    members: tuple[int, ...]
    unknown: bool  # an unknown category sets it too
    block: tuple[int, ...]  # every IR column of the input's one-hot block


def encoder_layout(encoder: Any) -> list[list[tuple[tuple[int, ...], bool]]]:
    """Per input column of a fitted ``OneHotEncoder`` over codes, per output column: the
    codes that set it and whether an unknown code does (scikit-learn is the authority:
    each code is encoded)."""
    widths = [int(w) for w in encoder._n_features_outs]
    starts = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    first = [float(cats[0]) for cats in encoder.categories_]
    layout = []
    for i, cats in enumerate(encoder.categories_):
        probe = np.array([first] * (len(cats) + 1), dtype=np.float64)
        probe[:, i] = [*range(len(cats)), -1.0]
        if encoder.handle_unknown == "error":
            probe = probe[:-1]
        out = np.asarray(encoder.transform(probe))[:, starts[i] : starts[i + 1]]
        unknown_row = out[len(cats)] if len(out) > len(cats) else np.zeros(widths[i])
        layout.append(
            [
                (tuple(int(c) for c in np.flatnonzero(out[: len(cats), u])), bool(unknown_row[u]))
                for u in range(widths[i])
            ]
        )
    return layout


def category_sets(prep: Any, n_numeric: int) -> dict[int, CategorySet]:
    """Per feature of the fitted ColumnTransformer ``prep`` that stands for a set of
    categories (or for unknown ones), the IR columns of that set (the IR's one-hot blocks
    follow its ``n_numeric`` numeric columns)."""
    sets: dict[int, CategorySet] = {}
    feature, block_at = 0, n_numeric
    for name, transformer, columns in prep.transformers_:
        if name == "remainder":
            continue
        if type(transformer).__name__ == "Pipeline":
            feature += len(columns)
            continue
        for position, layout in enumerate(encoder_layout(transformer)):
            block = tuple(range(block_at, block_at + len(transformer.categories_[position])))
            for members, unknown in layout:
                if len(members) != 1 or unknown:
                    shifted = tuple(block_at + c for c in members)
                    sets[feature] = CategorySet(shifted, unknown, block)
                feature += 1
            block_at += len(block)
    return sets


def split_on_sets(
    ensemble: TreeEnsemble, order: IntArray, sets: dict[int, CategorySet]
) -> TreeEnsemble:
    """The ensemble over the IR's layout: features mapped by ``order``, and each split on a
    merged column (a feature in ``sets``) a chain of splits on its categories' columns."""
    trees = tuple(_rewrite(tree, order, sets) for tree in ensemble.trees)
    return TreeEnsemble(
        trees, ensemble.aggregation, ensemble.base, ensemble.float32_compare, ensemble.link
    )


def _rewrite(tree: Tree, order: IntArray, sets: dict[int, CategorySet]) -> Tree:
    feature = [int(order[f]) if f >= 0 else -1 for f in tree.feature]
    threshold = [float(t) for t in tree.threshold]
    left, right = [int(n) for n in tree.left], [int(n) for n in tree.right]
    missing = [bool(m) for m in tree.missing_left]
    value = [tree.value[n] for n in range(len(feature))]
    for node in range(len(tree.feature)):
        merged = sets.get(int(tree.feature[node]))
        if tree.left[node] < 0 or merged is None:
            continue
        t = float(tree.threshold[node])
        to_one = left[node] if t >= 1.0 else right[node]
        to_zero = left[node] if t >= 0.0 else right[node]
        if merged.unknown:  # test the other known categories: unknown goes with the members
            tests = [c for c in merged.block if c not in merged.members]
            hit, miss = to_zero, to_one
        else:
            tests, hit, miss = list(merged.members), to_one, to_zero
        _chain(node, tests, hit, miss, (feature, threshold, left, right, missing, value))
    return Tree.of_lists((feature, threshold, left, right, missing, value))


def _chain(node: int, tests: list[int], hit: int, miss: int, arrays: tuple[list[Any], ...]) -> None:
    """Node ``node`` and new nodes after it test ``tests`` in turn (``x <= 0.5`` goes on,
    a set column goes to ``hit``); past the last, rows go to ``miss``. Without a test every
    row goes to ``miss`` (a split no value fails: ``x <= inf``, NaN left)."""
    feature, threshold, left, right, missing, value = arrays
    if not tests:
        feature[node], threshold[node], left[node], right[node] = 0, np.inf, miss, miss
        missing[node] = True
        return
    current = node
    for i, column in enumerate(tests):
        last = i == len(tests) - 1
        following = miss if last else len(feature)
        feature[current], threshold[current], missing[current] = column, 0.5, True
        left[current], right[current] = following, hit
        if not last:
            for array, fill in zip(arrays, (0, 0.0, -1, -1, True, value[node]), strict=True):
                array.append(fill)
            current = following
