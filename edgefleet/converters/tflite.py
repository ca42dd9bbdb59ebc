"""TensorFlow Lite export: the IR written as a ``tf.function`` and converted with
``TFLiteConverter`` to builtin ops only, with a dynamic batch (docs/architecture.md §4).

The graph takes ``input`` float32 ``[N, F]`` and returns ``probabilities`` float32
``[N, n_outputs]`` (the signature's output key; docs/architecture.md §2): ``[1 - p, p]`` for
a binary classifier, the K class probabilities (softmax, or normalised one-vs-rest
sigmoids) for a multi-class one, the value in one column for a regressor (the name is the
contract's for every task). Everything the pipeline does happens inside it:
NaN -> the imputed value, ``(x - offset) / scale``, one-hot by equality with the codes
``0..k-1`` (so an unknown code, -1, gives all zeros).

Trees are evaluated by gathers, all trees of the ensemble at once, in one of two forms:

* **perfect**: every tree padded to the ensemble's depth D, in heap order (the children
  of node i are 2i+1 and 2i+2), so a step is ``i = 2i + 1 + (x[feature[i]] > threshold[i])``
  and needs no child arrays. A leaf above depth D is padded with internal nodes whose
  threshold is +inf and whose descendant leaves all carry its value, so any path below
  it ends on that value. Size grows as ``trees * 2**D``.
* **sparse**: the nodes as scikit-learn stores them plus a child table; a leaf is its own
  child, so D steps leave every row on its leaf. Size grows with the real node count,
  but a step needs one gather more.

``choose_form`` compares the two sizes: perfect unless it is bigger than
``PERFECT_FREE_BYTES`` and more than ``PERFECT_MAX_RATIO`` times the sparse form. Measured
here (2 cores, 20,000 training rows): the default forest (100 trees, depth 10) is 1.25 MB
perfect / 1.42 MB sparse (near-full trees), perfect ~10% faster on 5,000 rows and equal on
one row (20 us); boosting (depth 3-6) is 2x smaller perfect; an unpruned forest (30 trees,
depth 32) is 3.0 MB sparse where perfect would need 1.5 TB. So boosting and forests up to
depth ~12 stay perfect, deep trees go sparse instead of exploding.

Parity with scikit-learn depends on the comparisons, not on the arithmetic: one float32
ulp on the wrong side of a threshold flips a branch. Given float32 input, scikit-learn
imputes and scales in float32 (``ir.Preprocessing.transform`` reproduces it exactly), so a
split compares a float32 value with a float64 threshold (trees cast to float32, HGB widens
to float64: the same thing for a float32 value). Each threshold therefore becomes the
largest float32 raw value ``T`` whose feature value is ``<= threshold``: for every float32
``x``, ``x <= T`` exactly when scikit-learn goes left. Without a scaler that is the
threshold rounded down to float32 (rounding to nearest would send ``x == float32(t) > t``
left). A scaler is folded into ``T`` the same way instead of being computed in the graph,
because the converter rewrites ``x / scale`` as ``x * (1 / scale)``, one ulp off
scikit-learn's division. NaN becomes ``float32(statistic)``, the value scikit-learn's
imputer writes, before any tree sees it; were a NaN to reach a tree, ``x > T`` is false
and it would go left, identically in both forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from edgefleet.converters.ir import (
    OVR_UNDERFLOW,
    LinearModel,
    Link,
    ModelIR,
    TreeEnsemble,
)
from edgefleet.converters.source import ConversionSource
from edgefleet.converters.thresholds import tree_thresholds
from edgefleet.edge.backends.tflite import INPUT, PROBABILITIES, TFLiteBackend
from edgefleet.errors import ConversionError

Form = Literal["perfect", "sparse"]
Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
Int32Array = npt.NDArray[np.int32]
IntArray64 = npt.NDArray[np.int64]

# The perfect form wins on speed (one gather less per level, no child table); it may cost
# this many times the sparse form's bytes before sparse is chosen ...
PERFECT_MAX_RATIO = 2.0
# ... and below this size the choice does not matter for a device, so perfect it is.
PERFECT_FREE_BYTES = 1024 * 1024
# Beyond this the perfect form is refused even when asked for (it would not fit in memory).
PERFECT_MAX_BYTES = 256 * 1024 * 1024


# --- tree forms -------------------------------------------------------------------------


@dataclass(frozen=True)
class PerfectForest:
    depth: int
    feature: Int32Array  # [trees, 2**depth - 1]
    threshold: Float32Array  # [trees, 2**depth - 1]
    leaf: Float32Array  # [trees * 2**depth, R]

    @property
    def nbytes(self) -> int:
        return int(self.feature.nbytes + self.threshold.nbytes + self.leaf.nbytes)


@dataclass(frozen=True)
class SparseForest:
    depth: int
    roots: Int32Array  # [trees], index of each tree's root in the node arrays
    feature: Int32Array  # [nodes]
    threshold: Float32Array  # [nodes]
    children: Int32Array  # [2 * nodes]: left of node i at 2i, right at 2i + 1
    value: Float32Array  # [nodes, R]

    @property
    def nbytes(self) -> int:
        return int(
            self.roots.nbytes
            + self.feature.nbytes
            + self.threshold.nbytes
            + self.children.nbytes
            + self.value.nbytes
        )


def ensemble_depth(ensemble: TreeEnsemble) -> int:
    return max(tree.depth() for tree in ensemble.trees)


def perfect_forest(
    ensemble: TreeEnsemble, thresholds: list[Float32Array], depth: int
) -> PerfectForest:
    n_trees, n_internal = len(ensemble.trees), (1 << depth) - 1
    size = perfect_nbytes(n_trees, depth, ensemble.n_scores)
    if size > PERFECT_MAX_BYTES:
        raise ConversionError(
            f"{n_trees} trees of depth {depth} padded to perfect trees would take "
            f"{size / 2**20:.0f} MiB; use the sparse form"
        )
    feature = np.zeros((n_trees, n_internal), dtype=np.int32)
    threshold = np.full((n_trees, n_internal), np.inf, dtype=np.float32)
    leaf = np.zeros((n_trees, 1 << depth, ensemble.n_scores), dtype=np.float32)
    for t, (tree, raw) in enumerate(zip(ensemble.trees, thresholds, strict=True)):
        leaves = tree.is_leaf
        nodes, slots, level = np.array([0]), np.array([0]), 0
        while nodes.size:
            internal = ~leaves[nodes]
            # A leaf at this level covers 2**(depth - level) leaves of the padded tree.
            span = 1 << (depth - level)
            first = slots[~internal] * span + (span - 1) - n_internal
            cover = (first[:, None] + np.arange(span)).ravel()
            leaf[t, cover] = np.repeat(tree.value[nodes[~internal]], span, axis=0)
            parents, parent_slots = nodes[internal], slots[internal]
            feature[t, parent_slots] = tree.feature[parents]
            threshold[t, parent_slots] = raw[parents]
            nodes = np.concatenate([tree.left[parents], tree.right[parents]])
            slots = np.concatenate([2 * parent_slots + 1, 2 * parent_slots + 2])
            level += 1
    return PerfectForest(depth, feature, threshold, leaf.reshape(-1, ensemble.n_scores))


def sparse_forest(
    ensemble: TreeEnsemble, thresholds: list[Float32Array], depth: int
) -> SparseForest:
    roots, features, raws, children, values = [], [], [], [], []
    start = 0
    for tree, raw in zip(ensemble.trees, thresholds, strict=True):
        n = len(tree.left)
        leaves = tree.is_leaf
        own = np.arange(n)
        left = np.where(leaves, own, tree.left) + start
        right = np.where(leaves, own, tree.right) + start
        roots.append(start)
        features.append(np.where(leaves, 0, tree.feature))
        raws.append(np.where(leaves, np.float32(np.inf), raw))
        children.append(np.column_stack([left, right]).ravel())
        values.append(tree.value)
        start += n
    if start >= 2**30:
        raise ConversionError(f"the ensemble has {start} nodes; TFLite indices are int32")
    return SparseForest(
        depth=depth,
        roots=np.array(roots, dtype=np.int32),
        feature=np.concatenate(features).astype(np.int32),
        threshold=np.concatenate(raws).astype(np.float32),
        children=np.concatenate(children).astype(np.int32),
        value=np.concatenate(values, axis=0).astype(np.float32),
    )


def perfect_nbytes(n_trees: int, depth: int, n_scores: int = 1) -> int:
    return n_trees * (((1 << depth) - 1) * 8 + (1 << depth) * 4 * n_scores)


def sparse_nbytes(n_nodes: int, n_trees: int, n_scores: int = 1) -> int:
    return n_nodes * (16 + 4 * n_scores) + n_trees * 4


def choose_form(ensemble: TreeEnsemble, depth: int) -> Form:
    width = ensemble.n_scores
    perfect = perfect_nbytes(len(ensemble.trees), depth, width)
    sparse = sparse_nbytes(sum(len(t.left) for t in ensemble.trees), len(ensemble.trees), width)
    if perfect <= PERFECT_FREE_BYTES or perfect <= PERFECT_MAX_RATIO * sparse:
        return "perfect"
    return "sparse"


# --- the TensorFlow graph ---------------------------------------------------------------


def _graph(ir: ModelIR, form: Form | None) -> tuple[Any, Any]:
    """The model as a tf.function of one float32 ``[None, F]`` input; returns it with the
    module that owns it (the converter wants both)."""
    prep = ir.preprocessing
    n_inputs = prep.n_inputs
    numeric_columns = [c.input_index for c in prep.numeric]
    onehot_columns = [c.input_index for c in prep.categorical for _ in range(c.categories)]
    onehot_codes = [float(k) for c in prep.categorical for k in range(c.categories)]
    model = ir.model

    # float32(impute) is the value scikit-learn's imputer writes into float32 input.
    impute = np.array([c.impute for c in prep.numeric], dtype=np.float32)
    if isinstance(model, LinearModel):
        if model.coefficients.shape[1:] != (prep.n_outputs,):
            raise ConversionError(
                f"the linear model has {model.coefficients.shape[-1]} coefficients for "
                f"{prep.n_outputs} features"
            )
    else:
        thresholds = tree_thresholds(prep, model)
        depth = ensemble_depth(model)
        chosen = form or choose_form(model, depth)
        forest: PerfectForest | SparseForest = (
            perfect_forest(model, thresholds, depth)
            if chosen == "perfect"
            else sparse_forest(model, thresholds, depth)
        )

    def features(x: Any, scaled: bool) -> Any:
        parts = []
        if numeric_columns:
            values = tf.gather(x, numeric_columns, axis=1)
            values = tf.where(tf.math.is_nan(values), tf.constant(impute)[None, :], values)
            if scaled:
                offset = np.array([c.offset for c in prep.numeric], dtype=np.float32)
                scale = np.array([c.scale for c in prep.numeric], dtype=np.float32)
                values = (values - offset) / scale
            parts.append(values)
        if onehot_columns:
            codes = tf.gather(x, onehot_columns, axis=1)
            parts.append(
                tf.cast(tf.equal(codes, tf.constant(onehot_codes, tf.float32)), tf.float32)
            )
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)

    def linear(x: Any) -> Any:
        assert isinstance(model, LinearModel)
        # The converter turns the division by the constant scale into a multiplication by
        # its reciprocal: harmless for a linear model (~1e-7 on the logit), and the reason
        # trees never see scaled values (their scaling is folded into the thresholds).
        weights = tf.constant(model.coefficients.T.astype(np.float32))
        return tf.matmul(features(x, scaled=True), weights) + model.intercept.astype(np.float32)

    def trees(x: Any) -> Any:
        assert isinstance(model, TreeEnsemble)
        values = features(x, scaled=False)
        n_features = prep.n_outputs
        # Rows are read through one flat gather: [N * F] at row * F + feature.
        flat = tf.reshape(values, [-1])
        row_base = tf.range(tf.shape(values)[0], dtype=tf.int32)[:, None] * n_features
        n_trees = len(model.trees)
        if isinstance(forest, PerfectForest):
            n_internal = (1 << forest.depth) - 1
            node_feature = tf.constant(forest.feature.ravel())
            node_threshold = tf.constant(forest.threshold.ravel())
            tree_base = tf.constant(np.arange(n_trees, dtype=np.int32) * n_internal)
            slot = tf.zeros_like(row_base) + tf.zeros([n_trees], tf.int32)  # [N, trees]
            for _ in range(forest.depth):
                node = slot + tree_base
                value = tf.gather(flat, row_base + tf.gather(node_feature, node))
                right = tf.cast(value > tf.gather(node_threshold, node), tf.int32)
                slot = 2 * slot + 1 + right
            leaf_base = tf.constant(np.arange(n_trees, dtype=np.int32) * (n_internal + 1))
            leaf = tf.gather(tf.constant(forest.leaf), slot - n_internal + leaf_base)
        else:
            node_feature = tf.constant(forest.feature)
            node_threshold = tf.constant(forest.threshold)
            children = tf.constant(forest.children)
            node = tf.zeros_like(row_base) + tf.constant(forest.roots)[None, :]
            for _ in range(forest.depth):
                value = tf.gather(flat, row_base + tf.gather(node_feature, node))
                right = tf.cast(value > tf.gather(node_threshold, node), tf.int32)
                node = tf.gather(children, 2 * node + right)
            leaf = tf.gather(tf.constant(forest.value), node)
        total = tf.reduce_sum(leaf, axis=1)  # [N, trees, R] -> [N, R]
        if model.aggregation == "average":
            return total / np.float32(n_trees)
        return total + model.base.astype(np.float32)

    body = linear if isinstance(model, LinearModel) else trees

    def serve(x: Any) -> dict[str, Any]:
        return {PROBABILITIES: _link(model.link, body(x))}

    # The converter reads signatures (input and output names) from a trackable owner.
    module = tf.Module()
    module.serve = tf.function(
        serve, input_signature=[tf.TensorSpec([None, n_inputs], tf.float32, name=INPUT)]
    )
    return module.serve.get_concrete_function(), module


def _link(link: Link, scores: Any) -> Any:
    """The outputs from the ``[N, R]`` scores, as ``ir.outputs`` makes them."""
    if link == "identity":
        return scores
    if link == "ovr_logistic" and scores.shape[1] > 1:
        # sigmoid(z_k) / sum_j sigmoid(z_j) as softmax(log sigmoid(z)): float32 sigmoids
        # underflow below -88, scikit-learn's float64 ones only below OVR_UNDERFLOW, where
        # it answers uniform probabilities (as ir.outputs).
        log_sigmoid = tf.minimum(scores, 0.0) - tf.math.log(1.0 + tf.exp(-tf.abs(scores)))
        normalised = tf.nn.softmax(log_sigmoid, axis=1)
        underflow = tf.reduce_max(scores, axis=1, keepdims=True) < np.float32(OVR_UNDERFLOW)
        uniform = tf.ones_like(scores) / np.float32(scores.shape[1])
        return tf.where(underflow, uniform, normalised)
    if link == "modified_huber":
        return _modified_huber(scores)
    if link == "softmax":
        return tf.nn.softmax(scores, axis=1)
    probabilities = tf.sigmoid(scores) if link in ("logistic", "ovr_logistic") else scores
    if scores.shape[1] == 1:
        return tf.concat([1.0 - probabilities, probabilities], axis=1)
    return probabilities


def _modified_huber(scores: Any) -> Any:
    """``(clip(s, -1, 1) + 1) / 2``, then ``[1 - p, p]`` or normalised (uniform where all
    are 0), as ``ir.outputs``."""
    p = (tf.clip_by_value(scores, -1.0, 1.0) + 1.0) / 2.0
    if scores.shape[1] == 1:
        return tf.concat([1.0 - p, p], axis=1)
    total = tf.reduce_sum(p, axis=1, keepdims=True)
    some = total > 0.0
    uniform = tf.ones_like(p) / np.float32(scores.shape[1])
    return tf.where(some, p / tf.where(some, total, tf.ones_like(total)), uniform)


def convert_ir(ir: ModelIR, form: Form | None = None) -> bytes:
    """The .tflite bytes of ``ir``; ``form`` forces a tree form (default: ``choose_form``)."""
    function, module = _graph(ir, form)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    # Builtins only: a Flex (select TF) op would need the TensorFlow runtime on the device.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        artifact: bytes = converter.convert()
    except Exception as error:  # the converter raises its own untyped errors
        raise ConversionError(
            f"TFLiteConverter could not convert the {ir.family} model: {error}"
        ) from None
    return artifact


def convert(source: ConversionSource) -> bytes:
    return convert_ir(source.ir)


def predict(artifact: bytes, inputs: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
    return TFLiteBackend(artifact).predict_proba(inputs)
