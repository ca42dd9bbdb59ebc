"""ONNX built from the IR (docs/architecture.md §4) for the tree models skl2onnx cannot
convert: HistGradientBoosting with native categorical splits (skl2onnx 1.20 answers them
0.64 off) and trees behind merged infrequent one-hot columns. The IR already reads both as
numeric splits (``ir_hgb.py``, ``ir_sets.py``), so the graph is the contract's plain one:

    input [N, F] -> impute NaN (numeric columns) and one-hot the codes (Equal, Cast)
      -> Concat -> ai.onnx.ml TreeEnsembleRegressor (R scores) -> the link -> probabilities

Thresholds are the largest float32 values each split sends left (``thresholds.py``, as for
TFLite), compared ``x <= T`` in float32 (BRANCH_LEQ); a NaN feature follows the IR's
``missing_left``. Nodes that several parents share (the IR's chains and search trees) are
shared in the ONNX tree too: onnxruntime follows node ids. An averaged ensemble's leaves are
divided by the number of trees before they are summed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from onnx import TensorProto, helper, numpy_helper

from edgefleet.converters.ir import ModelIR, Preprocessing, TreeEnsemble
from edgefleet.converters.thresholds import tree_thresholds
from edgefleet.edge.backends.onnx import PROBABILITIES
from edgefleet.errors import ConversionError

INPUT = "input"
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]


def convert_ir(ir: ModelIR, doc: str) -> bytes:
    """The ONNX model of a tree IR (module docstring)."""
    if not isinstance(ir.model, TreeEnsemble):
        raise ConversionError("the IR-built ONNX graph takes tree ensembles only")
    nodes: list[Any] = []
    initializers: list[Any] = []
    features = _features(ir.preprocessing, nodes, initializers)
    nodes.append(_ensemble(ir.preprocessing, ir.model, features, "scores"))
    _link(ir, "scores", nodes, initializers)
    graph = helper.make_graph(
        nodes,
        "edgefleet",
        [
            helper.make_tensor_value_info(
                INPUT, TensorProto.FLOAT, [None, ir.preprocessing.n_inputs]
            )
        ],
        [helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, [None, ir.n_outputs])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=OPSETS, producer_name="edgefleet")
    model.ir_version = 8
    model.doc_string = doc
    data: bytes = model.SerializeToString()
    return data


def _const(name: str, values: Any, initializers: list[Any], dtype: Any = np.float32) -> str:
    initializers.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
    return name


def _features(prep: Preprocessing, nodes: list[Any], initializers: list[Any]) -> str:
    """The estimator's features: numeric columns first (NaN imputed with float32(impute),
    scaled where the IR scales), then a one-hot block per categorical column."""
    parts = []
    if prep.numeric:
        columns = _const(
            "numeric_columns", [c.input_index for c in prep.numeric], initializers, np.int64
        )
        impute = _const("impute", [c.impute for c in prep.numeric], initializers)
        nodes.append(helper.make_node("Gather", [INPUT, columns], ["numeric"], axis=1))
        nodes.append(helper.make_node("IsNaN", ["numeric"], ["numeric_nan"]))
        nodes.append(helper.make_node("Where", ["numeric_nan", impute, "numeric"], ["imputed"]))
        last = "imputed"
        if any(c.offset != 0.0 or c.scale != 1.0 for c in prep.numeric):
            offset = _const("offset", [c.offset for c in prep.numeric], initializers)
            scale = _const("scale", [c.scale for c in prep.numeric], initializers)
            nodes.append(helper.make_node("Sub", [last, offset], ["centred"]))
            nodes.append(helper.make_node("Div", ["centred", scale], ["scaled"]))
            last = "scaled"
        parts.append(last)
    if prep.categorical:
        inputs = [c.input_index for c in prep.categorical for _ in range(c.categories)]
        codes = [float(k) for c in prep.categorical for k in range(c.categories)]
        index = _const("onehot_columns", inputs, initializers, np.int64)
        nodes.append(helper.make_node("Gather", [INPUT, index], ["codes"], axis=1))
        equal = _const("onehot_codes", codes, initializers)
        nodes.append(helper.make_node("Equal", ["codes", equal], ["is_code"]))
        nodes.append(helper.make_node("Cast", ["is_code"], ["onehot"], to=TensorProto.FLOAT))
        parts.append("onehot")
    if len(parts) == 1:
        return parts[0]
    nodes.append(helper.make_node("Concat", parts, ["features"], axis=1))
    return "features"


def _ensemble(prep: Preprocessing, ensemble: TreeEnsemble, features: str, output: str) -> Any:
    attributes: dict[str, list[Any]] = {
        key: []
        for key in (
            "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
            "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
            "target_treeids", "target_nodeids", "target_ids", "target_weights",
        )
    }  # fmt: skip
    scale = 1.0 / len(ensemble.trees) if ensemble.aggregation == "average" else 1.0
    for tree_id, (tree, raw) in enumerate(
        zip(ensemble.trees, tree_thresholds(prep, ensemble), strict=True)
    ):
        _add_tree(attributes, tree_id, tree, raw, scale)
    base = ensemble.base if ensemble.aggregation == "additive" else np.zeros(ensemble.n_scores)
    attributes_all: dict[str, Any] = {
        **attributes,
        "n_targets": ensemble.n_scores,
        "aggregate_function": "SUM",
        "base_values": [float(b) for b in np.broadcast_to(base, (ensemble.n_scores,))],
    }
    return helper.make_node(
        "TreeEnsembleRegressor", [features], [output], domain="ai.onnx.ml", **attributes_all
    )


def _add_tree(
    attributes: dict[str, list[Any]],
    tree_id: int,
    tree: Any,
    raw: npt.NDArray[np.float32],
    scale: float,
) -> None:
    leaf = tree.is_leaf
    for node in range(len(tree.feature)):
        attributes["nodes_treeids"].append(tree_id)
        attributes["nodes_nodeids"].append(node)
        attributes["nodes_featureids"].append(0 if leaf[node] else int(tree.feature[node]))
        attributes["nodes_values"].append(0.0 if leaf[node] else float(raw[node]))
        attributes["nodes_modes"].append("LEAF" if leaf[node] else "BRANCH_LEQ")
        attributes["nodes_truenodeids"].append(0 if leaf[node] else int(tree.left[node]))
        attributes["nodes_falsenodeids"].append(0 if leaf[node] else int(tree.right[node]))
        attributes["nodes_missing_value_tracks_true"].append(int(bool(tree.missing_left[node])))
        if leaf[node]:
            for k, value in enumerate(tree.value[node]):
                attributes["target_treeids"].append(tree_id)
                attributes["target_nodeids"].append(node)
                attributes["target_ids"].append(k)
                attributes["target_weights"].append(float(value) * scale)


def _link(ir: ModelIR, scores: str, nodes: list[Any], initializers: list[Any]) -> None:
    """``probabilities`` from the ``[N, R]`` scores (ir.outputs)."""
    link = ir.model.link
    if link == "softmax":
        nodes.append(helper.make_node("Softmax", [scores], [PROBABILITIES], axis=1))
        return
    if link in ("identity",) or (
        link == "probability" and ir.n_outputs > 1 and ir.model.n_scores > 1
    ):
        nodes.append(helper.make_node("Identity", [scores], [PROBABILITIES]))
        return
    if link not in ("logistic", "probability"):
        raise ConversionError(f"the IR-built ONNX graph has no {link} link")
    positive = scores
    if link == "logistic":
        nodes.append(helper.make_node("Sigmoid", [scores], ["positive"]))
        positive = "positive"
    one = _const("one", [1.0], initializers)
    nodes.append(helper.make_node("Sub", [one, positive], ["negative"]))
    nodes.append(helper.make_node("Concat", ["negative", positive], [PROBABILITIES], axis=1))
