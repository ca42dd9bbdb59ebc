"""PMML for multi-class and regression models (docs/architecture.md §16), emitted from the IR
with pmml.py's writers (derived fields, mining schemas, split predicates):

- a linear regressor (identity link): a ``regression`` ``RegressionModel``, one table;
- a multinomial linear classifier (softmax link): a ``classification`` ``RegressionModel``
  with ``softmax`` normalisation and one table per class;
- averaged trees (forests, extra trees, one tree): a ``MiningModel`` averaging regression
  trees (leaf = the value) or classification trees whose leaves carry every class's
  probability;
- additive trees (gradient boosting, both kinds): a regressor's summed regression trees and
  a one-node tree holding the base score; a classifier's ``modelChain`` of one summed
  ensemble per class (the trees of its column, and its base) and a ``softmax``
  ``RegressionModel`` over their sums.

A multi-class SGDClassifier (one-vs-rest sigmoids normalised to sum 1) is refused by name
(registry.py): PMML's ``RegressionModel`` normalisations do not include that map.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np

from edgefleet.converters.ir import LinearModel, ModelIR, Tree, TreeEnsemble
from edgefleet.converters.pmml import _el, _mining_schema, _num


def task_model(
    root: ET.Element, ir: ModelIR, features: list[str], classes: list[str], inputs: list[str]
) -> ET.Element:
    """The estimator of a multi-class (``classes``) or regression (none) model."""
    if isinstance(ir.model, LinearModel):
        return _linear(root, ir.model, features, classes)
    if ir.model.aggregation == "average":
        return _averaged(root, ir.model, features, classes, inputs)
    if not classes:
        return _summed(root, ir.model, features, 0, inputs)
    return _boosted_classes(root, ir.model, features, classes, inputs)


def _linear(
    root: ET.Element, linear: LinearModel, features: list[str], classes: list[str]
) -> ET.Element:
    if not classes:
        model = _el(root, "RegressionModel", functionName="regression")
        _table(model, linear, 0, features, None)
        return model
    model = _el(root, "RegressionModel", functionName="classification")
    model.set("normalizationMethod", "softmax")
    for k, label in enumerate(classes):
        _table(model, linear, k, features, label)
    return model


def _table(
    model: ET.Element, linear: LinearModel, row: int, features: list[str], label: str | None
) -> None:
    table = _el(model, "RegressionTable", intercept=_num(linear.intercept[row]))
    if label is not None:
        table.set("targetCategory", label)
    for name, coefficient in zip(features, linear.coefficients[row], strict=True):
        _el(table, "NumericPredictor", name=name, coefficient=_num(coefficient))


def _averaged(
    root: ET.Element,
    ensemble: TreeEnsemble,
    features: list[str],
    classes: list[str],
    inputs: list[str],
) -> ET.Element:
    kind = "classification" if classes else "regression"
    model = _el(root, "MiningModel", functionName=kind)
    segmentation = _el(model, "Segmentation", multipleModelMethod="average")
    for index, tree in enumerate(ensemble.trees):
        _tree_segment(segmentation, index, tree, features, classes, 0, inputs)
    return model


def _summed(
    parent: ET.Element, ensemble: TreeEnsemble, features: list[str], column: int, inputs: list[str]
) -> ET.Element:
    """``base[column]`` plus the sum of the trees' leaf values in ``column``: a regression
    ``MiningModel`` (a tree of one leaf carries the base)."""
    model = _el(parent, "MiningModel", functionName="regression")
    segmentation = _el(model, "Segmentation", multipleModelMethod="sum")
    _constant(segmentation, float(ensemble.base[column]), inputs)
    trees = [t for t in ensemble.trees if np.any(t.value[:, column] != 0.0)]
    for index, tree in enumerate(trees):
        _tree_segment(segmentation, index + 1, tree, features, [], column, inputs)
    return model


def _boosted_classes(
    root: ET.Element,
    ensemble: TreeEnsemble,
    features: list[str],
    classes: list[str],
    inputs: list[str],
) -> ET.Element:
    model = _el(root, "MiningModel", functionName="classification")
    chain = _el(model, "Segmentation", multipleModelMethod="modelChain")
    sums = [f"decision{k}" for k in range(len(classes))]
    for k, name in enumerate(sums):
        segment = _el(chain, "Segment", id=str(k + 1))
        _el(segment, "True")
        summed = _summed(segment, ensemble, features, k, inputs)
        _mining_schema(summed, inputs, target=False)
        output = ET.Element("Output")
        _el(output, "OutputField", name=name, optype="continuous", dataType="double")
        output[-1].set("feature", "predictedValue")
        summed.insert(1, output)
    last = _el(chain, "Segment", id=str(len(classes) + 1))
    _el(last, "True")
    softmax = _el(last, "RegressionModel", functionName="classification")
    softmax.set("normalizationMethod", "softmax")
    for name, label in zip(sums, classes, strict=True):
        table = _el(softmax, "RegressionTable", intercept="0.0", targetCategory=label)
        _el(table, "NumericPredictor", name=name, coefficient="1.0")
    _mining_schema(softmax, sums, target=True)
    return model


def _constant(segmentation: ET.Element, value: float, inputs: list[str]) -> None:
    segment = _el(segmentation, "Segment", id="0")
    _el(segment, "True")
    model = _el(segment, "TreeModel", functionName="regression")
    _mining_schema(model, inputs, target=False)
    node = _el(model, "Node", score=_num(value))
    _el(node, "True")


def _tree_segment(
    segmentation: ET.Element,
    index: int,
    tree: Tree,
    features: list[str],
    classes: list[str],
    column: int,
    inputs: list[str],
) -> None:
    """One tree: classification (leaves carry every class's probability) when ``classes``
    is given, else regression (leaf = the value in ``column``)."""
    segment = _el(segmentation, "Segment", id=str(index + 1))
    _el(segment, "True")
    kind = "classification" if classes else "regression"
    model = _el(segment, "TreeModel", functionName=kind, splitCharacteristic="binarySplit")
    model.set("noTrueChildStrategy", "returnLastPrediction")
    _mining_schema(model, inputs, target=bool(classes))
    root = _el(model, "Node")
    _el(root, "True")
    _node(root, tree, 0, features, classes, column)


def _node(
    element: ET.Element,
    tree: Tree,
    node: int,
    features: list[str],
    classes: list[str],
    column: int,
) -> None:
    if tree.left[node] < 0:
        _leaf(element, tree.value[node], classes, column)
        return
    field = features[int(tree.feature[node])]
    threshold = _num(tree.threshold[node])
    for child, operator in ((tree.left[node], "lessOrEqual"), (tree.right[node], "greaterThan")):
        branch = _el(element, "Node")
        _el(branch, "SimplePredicate", field=field, operator=operator, value=threshold)
        _node(branch, tree, int(child), features, classes, column)


def _leaf(element: ET.Element, values: np.ndarray, classes: list[str], column: int) -> None:
    if not classes:
        element.set("score", _num(values[column]))
        return
    element.set("score", classes[int(np.argmax(values))])
    for label, probability in zip(classes, values, strict=True):
        _el(element, "ScoreDistribution", value=label, recordCount="0")
        element[-1].set("probability", _num(probability))
