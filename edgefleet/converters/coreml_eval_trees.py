"""The tree ensembles of the Core ML spec, for :mod:`edgefleet.converters.coreml_eval`: the
node table read and checked (every node reachable from one root per tree, no node two
nodes' child), and every tree walked for a batch at once.

A branch goes to ``trueChildNodeId`` when ``x[branchFeatureIndex] <op> branchFeatureValue``
holds, compared in double precision; a NaN feature goes to the true child exactly when
``missingValueTracksTrueChild`` is set; a leaf adds its evaluation values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.errors import ConversionError

Float64Array = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# TreeEnsembleParameters.TreeNode.TreeNodeBehavior
LESS_THAN_EQUAL, LESS_THAN, GREATER_THAN_EQUAL, GREATER_THAN, EQUAL, NOT_EQUAL, LEAF = range(7)


@dataclass(frozen=True)
class Forest:
    """Every tree of an ensemble in one node table (rows follow the spec's node order)."""

    behavior: Int64Array
    feature: Int64Array
    value: Float64Array
    true_child: Int64Array
    false_child: Int64Array
    missing_true: BoolArray
    leaf_values: Float64Array  # [nodes, dimensions]
    roots: Int64Array
    base: Float64Array


def _node_table(nodes: Any, dimensions: int) -> tuple[dict[tuple[int, int], int], Float64Array]:
    index: dict[tuple[int, int], int] = {}
    leaf_values = np.zeros((len(nodes), dimensions))
    for row, node in enumerate(nodes):
        key = (int(node.treeId), int(node.nodeId))
        if key in index:
            raise ConversionError(f"tree node (tree {key[0]}, node {key[1]}) is duplicated")
        index[key] = row
        behavior = int(node.nodeBehavior)
        if behavior == LEAF:
            _read_leaf(node, leaf_values[row], key)
        elif behavior not in range(LEAF):
            raise ConversionError(f"tree node {key} has the unknown behavior {behavior}")
    return index, leaf_values


def _read_leaf(node: Any, out: Float64Array, key: tuple[int, int]) -> None:
    if not node.evaluationInfo:
        raise ConversionError(f"leaf {key} has no evaluation value")
    seen: set[int] = set()
    for info in node.evaluationInfo:
        dimension = int(info.evaluationIndex)
        if dimension >= len(out) or dimension in seen:
            raise ConversionError(
                f"leaf {key} writes dimension {dimension} twice or out of "
                f"range (the ensemble has {len(out)})"
            )
        seen.add(dimension)
        out[dimension] = float(info.evaluationValue)


def _link_children(nodes: Any, index: dict[tuple[int, int], int]) -> tuple[Int64Array, Int64Array]:
    true_child = np.full(len(nodes), -1, dtype=np.int64)
    false_child = np.full(len(nodes), -1, dtype=np.int64)
    parent = np.full(len(nodes), -1, dtype=np.int64)
    for row, node in enumerate(nodes):
        if int(node.nodeBehavior) == LEAF:
            continue
        for child_id, out in (
            (node.trueChildNodeId, true_child),
            (node.falseChildNodeId, false_child),
        ):
            child = index.get((int(node.treeId), int(child_id)))
            if child is None or child == row or parent[child] >= 0:
                raise ConversionError(
                    f"tree {node.treeId} node {node.nodeId}: child {child_id} "
                    "is missing, itself, or already another node's child"
                )
            parent[child] = row
            out[row] = child
    return true_child, false_child


def _roots(nodes: Any, true_child: Int64Array, false_child: Int64Array) -> Int64Array:
    has_parent = np.zeros(len(nodes), dtype=bool)
    has_parent[true_child[true_child >= 0]] = True
    has_parent[false_child[false_child >= 0]] = True
    roots = np.flatnonzero(~has_parent)
    trees = [int(nodes[int(r)].treeId) for r in roots]
    if len(set(trees)) != len(trees):
        raise ConversionError("a tree has more than one root node")
    reached = np.zeros(len(nodes), dtype=bool)
    stack = [int(r) for r in roots]
    while stack:
        row = stack.pop()
        reached[row] = True
        stack.extend(int(c) for c in (true_child[row], false_child[row]) if c >= 0)
    if not reached.all():
        raise ConversionError("some tree nodes are not connected to a root (a cycle)")
    return roots.astype(np.int64)


def read_forest(params: Any, n_inputs: int) -> Forest:
    dimensions = int(params.numPredictionDimensions)
    if dimensions == 0:
        raise ConversionError("the tree ensemble has 0 prediction dimensions")
    base = np.asarray(params.basePredictionValue, dtype=np.float64)
    if base.size not in (0, dimensions):
        raise ConversionError(f"{base.size} base prediction values for {dimensions} dimensions")
    nodes = params.nodes
    if not nodes:
        raise ConversionError("the tree ensemble has no nodes")
    index, leaf_values = _node_table(nodes, dimensions)
    true_child, false_child = _link_children(nodes, index)
    behavior = np.array([int(n.nodeBehavior) for n in nodes], dtype=np.int64)
    feature = np.array([int(n.branchFeatureIndex) for n in nodes], dtype=np.int64)
    if (feature[behavior != LEAF] >= n_inputs).any():
        raise ConversionError(f"a branch reads a feature index beyond the {n_inputs} inputs")
    return Forest(
        behavior=behavior,
        feature=np.where(behavior == LEAF, 0, feature),
        value=np.array([float(n.branchFeatureValue) for n in nodes], dtype=np.float64),
        true_child=true_child,
        false_child=false_child,
        missing_true=np.array([bool(n.missingValueTracksTrueChild) for n in nodes]),
        leaf_values=leaf_values,
        roots=_roots(nodes, true_child, false_child),
        base=base if base.size else np.zeros(dimensions),
    )


def _branch_holds(behavior: Int64Array, x: Float64Array, value: Float64Array) -> BoolArray:
    outcomes = {
        LESS_THAN_EQUAL: x <= value,
        LESS_THAN: x < value,
        GREATER_THAN_EQUAL: x >= value,
        GREATER_THAN: x > value,
        EQUAL: x == value,
        NOT_EQUAL: x != value,
    }
    chosen = np.select([behavior == mode for mode in outcomes], list(outcomes.values()), False)
    return np.asarray(chosen, dtype=bool)


def walk(forest: Forest, x: Float64Array) -> Float64Array:
    """Sum of the leaf values each row reaches, all trees walked together."""
    node = np.broadcast_to(forest.roots, (len(x), len(forest.roots))).copy()
    rows = np.broadcast_to(np.arange(len(x))[:, None], node.shape)
    for _ in range(len(forest.behavior)):
        active = forest.behavior[node] != LEAF
        if not active.any():
            break
        at = node[active]
        values = x[rows[active], forest.feature[at]]
        holds = np.where(
            np.isnan(values),
            forest.missing_true[at],
            _branch_holds(forest.behavior[at], values, forest.value[at]),
        )
        node[active] = np.where(holds, forest.true_child[at], forest.false_child[at])
    return np.asarray(forest.leaf_values[node].sum(axis=1), dtype=np.float64)
