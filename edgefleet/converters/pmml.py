"""PMML 4.4 export from the IR, and its check by a real PMML evaluator (JPMML-Evaluator).

PMML is for the central side's scoring engines (JVM services, databases, Spark with a PMML
evaluator): a device never loads it, and the edge runtime has no PMML backend.

Why a writer of our own rather than sklearn2pmml: the newest sklearn2pmml (0.133.1, with
JPMML-SkLearn 1.9.41) refuses the installed scikit-learn ("Scikit-Learn version '1.9.1' is not
supported"), as it refuses every release it was not built against, so an export would break
at every scikit-learn upgrade. The IR is already the one reading of a fitted pipeline that
every format is emitted from (docs/architecture.md §4), and the parity gate runs the
artifact in JPMML-Evaluator, the reference implementation of PMML, so what is written is
proven to mean what scikit-learn computes.

The document takes the model contract's inputs (docs/architecture.md §2): one continuous
double field per feature, named as in the schema and in schema order, categoricals as their
vocabulary code (-1 or any other value: no category). Inside it:

- numeric features: ``if(isMissing(x), median, x)``, the imputer's median (rounded to float32, as
  the imputer keeps float32 input), then ``(x - mean) / scale`` for the linear model;
- categorical codes: one derived 0/1 field per category, ``if(equal(x, code), 1, 0)``;
- logistic regression: a ``RegressionModel`` with ``logit`` normalisation;
- random forest, extra trees, one tree: a ``MiningModel`` averaging classification trees
  whose leaves carry the positive-class probability (``ScoreDistribution probability``);
- gradient boosting (both kinds): a ``modelChain`` of a summed regression ensemble and a
  ``logit`` ``RegressionModel`` with the ensemble's base score as intercept.

Splits are ``x <= threshold`` with the threshold written exactly (``repr`` of the double):
scikit-learn compares the float32 feature, promoted to double, with the double threshold,
and every feature here is float32-exact, so the comparison in double is the same one.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.converters.ir import LinearModel, ModelIR, Preprocessing, Tree, TreeEnsemble
from edgefleet.converters.source import ConversionSource
from edgefleet.errors import ConversionError, UnsupportedModelError

NAMESPACE = "http://www.dmg.org/PMML-4_4"
TARGET = "target"
VALUE = "value"
"""A regressor's output field."""


def _num(value: float) -> str:
    return repr(float(value))


def _el(parent: ET.Element, tag: str, **attributes: str) -> ET.Element:
    return ET.SubElement(parent, tag, attributes)


def convert(source: ConversionSource) -> bytes:
    ir = source.ir
    if isinstance(ir.model, LinearModel) and ir.model.link == "modified_huber":
        raise UnsupportedModelError(
            "PMML's RegressionModel has no modified Huber normalisation "
            "(SGDClassifier(loss='modified_huber')): export it as onnx, tflite, coreml or web"
        )
    names = list(source.schema.names)
    classes = [str(c) for c in source.schema.classes]
    root = ET.Element("PMML", {"xmlns": NAMESPACE, "version": "4.4"})
    header = _el(root, "Header", description=f"edgefleet {source.family} model")
    _el(header, "Application", name="edgefleet")
    dictionary = _el(root, "DataDictionary", numberOfFields=str(len(names) + 1))
    for name in names:
        _el(dictionary, "DataField", name=name, optype="continuous", dataType="double")
    if ir.task == "regression":
        _el(dictionary, "DataField", name=TARGET, optype="continuous", dataType="double")
    else:
        target = _el(dictionary, "DataField", name=TARGET, optype="categorical", dataType="string")
        for label in classes:
            _el(target, "Value", value=label)
    features = _transformations(root, ir.preprocessing, names, scaled=_scaled(ir))
    model = _model(root, ir, features, classes, names)
    _mining_schema(model, names, target=True)
    _output(model, classes)
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def _scaled(ir: ModelIR) -> bool:
    return any(c.offset != 0.0 or c.scale != 1.0 for c in ir.preprocessing.numeric)


def _transformations(
    root: ET.Element, prep: Preprocessing, names: list[str], *, scaled: bool
) -> list[str]:
    """Derived fields for the estimator's feature vector; their names, in IR order."""
    block = _el(root, "TransformationDictionary")
    features: list[str] = []
    for column in prep.numeric:
        name = f"num({names[column.input_index]})"
        field = _el(block, "DerivedField", name=name, optype="continuous", dataType="double")
        imputed = float(np.float32(column.impute))
        parent = field
        if scaled:
            divide = _el(field, "Apply", function="/")
            parent = _el(divide, "Apply", function="-")
        _imputed(parent, names[column.input_index], imputed)
        if scaled:
            _el(parent, "Constant", dataType="double").text = _num(column.offset)
            _el(divide, "Constant", dataType="double").text = _num(column.scale)
        features.append(name)
    for onehot in prep.categorical:
        source = names[onehot.input_index]
        for code in range(onehot.categories):
            name = f"{source}=={code}"
            field = _el(block, "DerivedField", name=name, optype="continuous", dataType="double")
            condition = _el(field, "Apply", function="if")
            equal = _el(condition, "Apply", function="equal")
            _el(equal, "FieldRef", field=source)
            _el(equal, "Constant", dataType="double").text = _num(code)
            _el(condition, "Constant", dataType="double").text = "1"
            _el(condition, "Constant", dataType="double").text = "0"
            features.append(name)
    return features


def _imputed(parent: ET.Element, field: str, value: float) -> None:
    """``if(isMissing(field), value, field)``: the imputer, typed double throughout (a
    FieldRef's ``mapMissingTo`` would be a string)."""
    condition = _el(parent, "Apply", function="if")
    _el(_el(condition, "Apply", function="isMissing"), "FieldRef", field=field)
    _el(condition, "Constant", dataType="double").text = _num(value)
    _el(condition, "FieldRef", field=field)


def _mining_schema(model: ET.Element, fields: Sequence[str], *, target: bool) -> None:
    # The schema must be a model's first child: insert it in front.
    schema = ET.Element("MiningSchema")
    if target:
        _el(schema, "MiningField", name=TARGET, usageType="target")
    for name in fields:
        _el(schema, "MiningField", name=name)
    model.insert(0, schema)


def _model(
    root: ET.Element, ir: ModelIR, features: list[str], classes: list[str], inputs: list[str]
) -> ET.Element:
    """The estimator, per task (binary: the forms of the module docstring; pmml_tasks.py:
    multi-class and regression)."""
    if ir.task != "binary":
        # pmml_tasks builds on this module's writers: imported here, not at the top.
        from edgefleet.converters.pmml_tasks import task_model

        return task_model(root, ir, features, classes, inputs)
    if isinstance(ir.model, LinearModel):
        return _linear(root, ir.model, features, classes)
    return _ensemble(root, ir.model, features, classes, inputs)


def _output(model: ET.Element, classes: list[str]) -> None:
    """Each class's probability, or a regressor's predicted value (no classes)."""
    output = ET.Element("Output")
    if not classes:
        _el(output, "OutputField", name=VALUE, optype="continuous", dataType="double")
        output[-1].set("feature", "predictedValue")
    for label in classes:
        _el(
            output,
            "OutputField",
            name=f"probability({label})",
            optype="continuous",
            dataType="double",
            feature="probability",
            value=label,
        )
    model.insert(1, output)


def _logit_regression(
    parent: ET.Element, classes: list[str], intercept: float, terms: list[tuple[str, float]]
) -> ET.Element:
    model = _el(parent, "RegressionModel", functionName="classification")
    model.set("normalizationMethod", "logit")
    positive = _el(model, "RegressionTable", intercept=_num(intercept), targetCategory=classes[1])
    for name, coefficient in terms:
        _el(positive, "NumericPredictor", name=name, coefficient=_num(coefficient))
    _el(model, "RegressionTable", intercept="0.0", targetCategory=classes[0])
    return model


def _linear(
    root: ET.Element, linear: LinearModel, features: list[str], classes: list[str]
) -> ET.Element:
    terms = [(name, float(c)) for name, c in zip(features, linear.coefficients[0], strict=True)]
    return _logit_regression(root, classes, float(linear.intercept[0]), terms)


def _ensemble(
    root: ET.Element,
    ensemble: TreeEnsemble,
    features: list[str],
    classes: list[str],
    inputs: list[str],
) -> ET.Element:
    """Nested models list the document's input fields in their mining schemas: derived
    fields are visible everywhere, but JPMML resolves a nested schema's fields as inputs."""
    model = _el(root, "MiningModel", functionName="classification")
    if ensemble.aggregation == "average":
        segmentation = _el(model, "Segmentation", multipleModelMethod="average")
        for index, tree in enumerate(ensemble.trees):
            segment = _el(segmentation, "Segment", id=str(index + 1))
            _el(segment, "True")
            _tree_model(segment, tree, features, classes, inputs)
        return model
    chain = _el(model, "Segmentation", multipleModelMethod="modelChain")
    first = _el(chain, "Segment", id="1")
    _el(first, "True")
    summed = _el(first, "MiningModel", functionName="regression")
    _mining_schema(summed, inputs, target=False)
    output = _el(summed, "Output")
    _el(output, "OutputField", name="decision", optype="continuous", dataType="double")
    output[-1].set("feature", "predictedValue")
    segmentation = _el(summed, "Segmentation", multipleModelMethod="sum")
    for index, tree in enumerate(ensemble.trees):
        segment = _el(segmentation, "Segment", id=str(index + 1))
        _el(segment, "True")
        _tree_model(segment, tree, features, None, inputs)
    second = _el(chain, "Segment", id="2")
    _el(second, "True")
    logit = _logit_regression(second, classes, float(ensemble.base[0]), [("decision", 1.0)])
    _mining_schema(logit, ["decision"], target=True)
    return model


def _tree_model(
    parent: ET.Element,
    tree: Tree,
    features: list[str],
    classes: list[str] | None,
    inputs: list[str],
) -> None:
    """A TreeModel: classification (leaf = P(positive)) when ``classes`` is given, else
    regression (leaf = the additive score)."""
    kind = "regression" if classes is None else "classification"
    model = _el(parent, "TreeModel", functionName=kind, splitCharacteristic="binarySplit")
    model.set("noTrueChildStrategy", "returnLastPrediction")
    _mining_schema(model, inputs, target=classes is not None)
    root = _el(model, "Node")
    _el(root, "True")
    _node(root, tree, 0, features, classes)


def _node(
    element: ET.Element, tree: Tree, node: int, features: list[str], classes: list[str] | None
) -> None:
    if tree.left[node] < 0:
        _leaf(element, float(tree.value[node, 0]), classes)
        return
    field = features[int(tree.feature[node])]
    threshold = _num(tree.threshold[node])
    for child, operator in ((tree.left[node], "lessOrEqual"), (tree.right[node], "greaterThan")):
        branch = _el(element, "Node")
        _el(branch, "SimplePredicate", field=field, operator=operator, value=threshold)
        _node(branch, tree, int(child), features, classes)


def _leaf(element: ET.Element, value: float, classes: list[str] | None) -> None:
    if classes is None:
        element.set("score", _num(value))
        return
    element.set("score", classes[1] if value >= 0.5 else classes[0])
    for label, probability in ((classes[0], 1.0 - value), (classes[1], value)):
        _el(element, "ScoreDistribution", value=label, recordCount="0")
        element[-1].set("probability", _num(probability))


# -- the evaluator -------------------------------------------------------------------------

_jvm_lock = threading.Lock()


def _evaluator(artifact: bytes) -> Any:
    """A verified JPMML evaluator of ``artifact`` (JPype: the JVM runs in this process,
    started once)."""
    try:
        from jpmml_evaluator import make_evaluator
    except ImportError as error:
        raise ConversionError(
            f"the PMML check needs jpmml-evaluator and a Java runtime ({error.name} is "
            "missing): run scripts/setup"
        ) from None
    with _jvm_lock:
        try:
            return make_evaluator(artifact, backend="jpype").verify()
        except Exception as error:  # JVM start-up and JPMML raise untyped errors
            raise ConversionError(f"JPMML-Evaluator refused the PMML document: {error}") from None


def predict(artifact: bytes, inputs: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
    """The model's outputs ``[N, n_outputs]`` computed by JPMML-Evaluator: the class
    probabilities, or a regressor's value in one column."""
    import pandas as pd

    evaluator = _evaluator(artifact)
    names = [field.getName() for field in evaluator.getInputFields()]
    frame = pd.DataFrame(np.asarray(inputs, dtype=np.float64), columns=_document_fields(artifact))
    results = evaluator.evaluateAll(frame[names])
    errors = results.get("errors")
    if errors is not None and errors.notna().any():
        row = int(np.flatnonzero(errors.notna().to_numpy())[0])
        raise ConversionError(f"JPMML-Evaluator failed on row {row}: {errors.iloc[row]}")
    columns = [c for c in results.columns if str(c).startswith("probability(")] or [VALUE]
    return np.asarray(results[columns].to_numpy(dtype=np.float64))


def _document_fields(artifact: bytes) -> list[str]:
    """The input fields in schema order: the DataDictionary's, less the target."""
    root = ET.fromstring(artifact)
    dictionary = root.find(f"{{{NAMESPACE}}}DataDictionary")
    if dictionary is None:
        raise ConversionError("the PMML document has no DataDictionary")
    return [
        str(field.get("name"))
        for field in dictionary.findall(f"{{{NAMESPACE}}}DataField")
        if field.get("name") != TARGET
    ]
