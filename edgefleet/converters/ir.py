"""A small neutral description of a fitted pipeline (the "IR"), read once from
scikit-learn, from which each backend emits its format (docs/architecture.md §4: the practice
of skl2onnx and hummingbird).

The IR has two parts. ``Preprocessing`` maps the contract's raw float32 inputs to the
estimator's feature vector: numeric columns first (impute NaN, then ``(x - offset) / scale``),
then one one-hot block per categorical column (codes outside ``0..k-1`` give all zeros).
The model is either a ``LinearModel`` (logit = w.x + b) or a ``TreeEnsemble``.

Tree semantics follow scikit-learn exactly: at a split, go left when
``x <= threshold`` (float64 threshold), NaN goes left when ``missing_left``. For
``average_probability`` ensembles (random forest, extra trees, one decision tree) each
leaf holds P(positive) and the ensemble averages; for ``additive_logit`` ensembles
(gradient boosting) logit = base + sum of leaves (learning rate already applied) and
P(positive) = sigmoid(logit).

``predict_proba`` here is the numpy reference evaluator of the IR: the tests hold it equal
to scikit-learn, so any backend that matches the IR matches scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgefleet.errors import UnsupportedModelError

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

ESTIMATOR_FAMILIES = {
    "LogisticRegression": "logreg",
    "RandomForestClassifier": "rf",
    "GradientBoostingClassifier": "gb",
    "HistGradientBoostingClassifier": "hgb",
    "ExtraTreesClassifier": "et",
    "DecisionTreeClassifier": "dt",
    # Brought by users (edgefleet register); the trainer does not fit it.
    "SGDClassifier": "sgd",
}
LINEAR_FAMILIES = ("logreg", "sgd")


def family_of(estimator: Any) -> str:
    name = type(estimator).__name__
    try:
        return ESTIMATOR_FAMILIES[name]
    except KeyError:
        known = ", ".join(ESTIMATOR_FAMILIES)
        raise UnsupportedModelError(
            f"edgefleet has no converter for {name}; it converts: {known}"
        ) from None


@dataclass(frozen=True)
class NumericColumn:
    input_index: int
    impute: float
    offset: float
    scale: float


@dataclass(frozen=True)
class OneHotColumn:
    input_index: int
    categories: int


@dataclass(frozen=True)
class Preprocessing:
    n_inputs: int
    numeric: tuple[NumericColumn, ...]
    categorical: tuple[OneHotColumn, ...]

    @property
    def n_outputs(self) -> int:
        return len(self.numeric) + sum(c.categories for c in self.categorical)

    def transform(self, inputs: Float32Array) -> Float64Array:
        """Raw inputs -> the estimator's features, rounded as scikit-learn rounds them.

        For float32 input, scikit-learn's imputer and scaler keep float32: the scaler casts
        its mean and scale to float32 and subtracts and divides in float32 (measured with
        scikit-learn 1.9; exact, not approximate).
        """
        x = np.asarray(inputs, dtype=np.float64)
        out = np.zeros((x.shape[0], self.n_outputs), dtype=np.float64)
        for position, numeric in enumerate(self.numeric):
            values = x[:, numeric.input_index]
            values = _f32(np.where(np.isnan(values), numeric.impute, values))
            if numeric.offset != 0.0 or numeric.scale != 1.0:
                single = values.astype(np.float32)
                single = (single - np.float32(numeric.offset)) / np.float32(numeric.scale)
                values = single.astype(np.float64)
            out[:, position] = values
        position = len(self.numeric)
        for column in self.categorical:
            codes = x[:, column.input_index]
            for category in range(column.categories):
                out[:, position + category] = codes == category
            position += column.categories
        return out


@dataclass(frozen=True)
class LinearModel:
    coefficients: Float64Array
    intercept: float


@dataclass(frozen=True)
class Tree:
    feature: IntArray  # -1 at leaves
    threshold: Float64Array
    left: IntArray  # -1 at leaves
    right: IntArray
    value: Float64Array  # P(positive) or additive raw score, per node
    missing_left: npt.NDArray[np.bool_]

    @property
    def is_leaf(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.left < 0)

    def depth(self) -> int:
        depth = np.zeros(len(self.feature), dtype=np.int64)
        for node in range(len(self.feature)):  # parents precede children in sklearn's order
            if self.left[node] >= 0:
                depth[self.left[node]] = depth[self.right[node]] = depth[node] + 1
        return int(depth.max())

    def leaf_values(self, features: Float64Array, float32_compare: bool) -> Float64Array:
        x = features.astype(np.float32).astype(np.float64) if float32_compare else features
        node = np.zeros(len(x), dtype=np.int64)
        rows = np.arange(len(x))
        while True:
            active = self.left[node] >= 0
            if not active.any():
                return self.value[node]
            f = self.feature[node[active]]
            v = x[rows[active], f]
            go_left = np.where(
                np.isnan(v), self.missing_left[node[active]], v <= self.threshold[node[active]]
            )
            node[active] = np.where(go_left, self.left[node[active]], self.right[node[active]])


@dataclass(frozen=True)
class TreeEnsemble:
    trees: tuple[Tree, ...]
    aggregation: Literal["average_probability", "additive_logit"]
    base: float
    # scikit-learn's trees (not HGB) compare the float32-cast feature against the threshold.
    float32_compare: bool

    def max_depth(self) -> int:
        return max(t.depth() for t in self.trees)


@dataclass(frozen=True)
class ModelIR:
    family: str
    preprocessing: Preprocessing
    model: LinearModel | TreeEnsemble

    def predict_proba(self, inputs: Float32Array) -> Float64Array:
        features = self.preprocessing.transform(inputs)
        if isinstance(self.model, LinearModel):
            positive = _sigmoid(features @ self.model.coefficients + self.model.intercept)
        elif self.model.aggregation == "average_probability":
            total = sum(
                t.leaf_values(features, self.model.float32_compare) for t in self.model.trees
            )
            positive = np.asarray(total, dtype=np.float64) / len(self.model.trees)
        else:
            total = sum(
                t.leaf_values(features, self.model.float32_compare) for t in self.model.trees
            )
            positive = _sigmoid(self.model.base + np.asarray(total, dtype=np.float64))
        return np.column_stack([1.0 - positive, positive])


def _f32(values: Float64Array) -> Float64Array:
    return values.astype(np.float32).astype(np.float64)


def _sigmoid(z: Float64Array) -> Float64Array:
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def read_pipeline(pipeline: Any) -> ModelIR:
    """The IR of a fitted ``Pipeline([("prep", ColumnTransformer), ("model", estimator)])``
    as edgefleet's trainer builds it."""
    steps = getattr(pipeline, "steps", None)
    if not steps or len(steps) != 2:
        raise UnsupportedModelError(
            "edgefleet converts pipelines of two steps: a ColumnTransformer and a classifier"
        )
    (_, prep), (_, estimator) = steps
    family = family_of(estimator)
    classes = list(getattr(estimator, "classes_", []))
    if len(classes) != 2:
        raise UnsupportedModelError(
            f"{type(estimator).__name__} has {len(classes)} classes; "
            "edgefleet converts binary classifiers"
        )
    preprocessing = _read_preprocessing(prep)
    order = _ir_positions(prep, preprocessing)
    linear = family in LINEAR_FAMILIES
    model = _read_linear(estimator) if linear else _read_trees(estimator, family)
    return ModelIR(family=family, preprocessing=preprocessing, model=_reorder(model, order))


def _ir_positions(prep: Any, preprocessing: Preprocessing) -> IntArray:
    """Per feature the ColumnTransformer outputs (in its transformers' order), its position
    in the IR's layout (numeric columns first, then the one-hot blocks). A pipeline the
    trainer built is in that layout already; one a user brought may interleave them."""
    numeric_at, block_at = 0, len(preprocessing.numeric)
    positions: list[int] = []
    for name, transformer, columns in prep.transformers_:
        if name == "remainder":
            continue
        if type(transformer).__name__ == "Pipeline":
            positions.extend(range(numeric_at, numeric_at + len(columns)))
            numeric_at += len(columns)
        else:
            width = sum(len(c) for c in transformer.categories_)
            positions.extend(range(block_at, block_at + width))
            block_at += width
    return np.asarray(positions, dtype=np.int64)


def _reorder(model: LinearModel | TreeEnsemble, order: IntArray) -> LinearModel | TreeEnsemble:
    if np.array_equal(order, np.arange(len(order))):
        return model
    if isinstance(model, LinearModel):
        coefficients = np.zeros_like(model.coefficients)
        coefficients[order] = model.coefficients
        return LinearModel(coefficients=coefficients, intercept=model.intercept)
    trees = tuple(
        Tree(
            feature=np.where(t.feature >= 0, order[np.maximum(t.feature, 0)], -1),
            threshold=t.threshold,
            left=t.left,
            right=t.right,
            value=t.value,
            missing_left=t.missing_left,
        )
        for t in model.trees
    )
    return TreeEnsemble(trees, model.aggregation, model.base, model.float32_compare)


def _read_preprocessing(prep: Any) -> Preprocessing:
    numeric: list[NumericColumn] = []
    categorical: list[OneHotColumn] = []
    n_inputs = int(prep.n_features_in_)
    for name, transformer, columns in prep.transformers_:
        if name == "remainder":
            continue
        kind = type(transformer).__name__
        if kind == "Pipeline":
            steps = dict(transformer.steps)
            imputer, scaler = steps.get("impute"), steps.get("scale")
            unknown = set(steps) - {"impute", "scale"}
            if unknown or imputer is None:
                raise UnsupportedModelError(f"numeric steps {sorted(steps)} are not supported")
            for position, column in enumerate(columns):
                numeric.append(
                    NumericColumn(
                        input_index=int(column),
                        impute=float(imputer.statistics_[position]),
                        offset=float(scaler.mean_[position]) if scaler is not None else 0.0,
                        scale=float(scaler.scale_[position]) if scaler is not None else 1.0,
                    )
                )
        elif kind == "OneHotEncoder":
            for position, column in enumerate(columns):
                cats = np.asarray(transformer.categories_[position], dtype=np.float64)
                if not np.array_equal(cats, np.arange(len(cats))):
                    raise UnsupportedModelError("one-hot categories must be the codes 0..k-1")
                categorical.append(OneHotColumn(input_index=int(column), categories=len(cats)))
        else:
            raise UnsupportedModelError(f"preprocessing step {kind} is not supported")
    return Preprocessing(n_inputs=n_inputs, numeric=tuple(numeric), categorical=tuple(categorical))


def _read_linear(estimator: Any) -> LinearModel:
    loss = getattr(estimator, "loss", "log_loss")
    if loss != "log_loss":
        raise UnsupportedModelError(
            f"{type(estimator).__name__}(loss={loss!r}) gives no probabilities of the "
            "logistic form; edgefleet converts SGDClassifier(loss='log_loss')"
        )
    return LinearModel(
        coefficients=np.asarray(estimator.coef_[0], dtype=np.float64),
        intercept=float(estimator.intercept_[0]),
    )


def _sklearn_tree(tree: Any, value: Float64Array) -> Tree:
    missing = getattr(tree, "missing_go_to_left", None)
    return Tree(
        feature=np.where(tree.children_left < 0, -1, tree.feature).astype(np.int64),
        threshold=np.asarray(tree.threshold, dtype=np.float64),
        left=np.asarray(tree.children_left, dtype=np.int64),
        right=np.asarray(tree.children_right, dtype=np.int64),
        value=value,
        missing_left=(
            np.zeros(tree.node_count, dtype=bool)
            if missing is None
            else np.asarray(missing, dtype=bool)
        ),
    )


def _read_trees(estimator: Any, family: str) -> TreeEnsemble:
    if family in ("rf", "et", "dt"):
        members = estimator.estimators_ if family != "dt" else [estimator]
        trees = []
        for member in members:
            raw = np.asarray(member.tree_.value[:, 0, :], dtype=np.float64)
            probability = raw[:, 1] / raw.sum(axis=1)
            trees.append(_sklearn_tree(member.tree_, probability))
        return TreeEnsemble(tuple(trees), "average_probability", 0.0, float32_compare=True)
    if family == "gb":
        rate = float(estimator.learning_rate)
        trees = [
            _sklearn_tree(
                stage[0].tree_, rate * np.asarray(stage[0].tree_.value[:, 0, 0], dtype=np.float64)
            )
            for stage in estimator.estimators_
        ]
        base = float(
            np.asarray(
                estimator._raw_predict_init(np.zeros((1, estimator.n_features_in_)))
            ).ravel()[0]
        )
        return TreeEnsemble(tuple(trees), "additive_logit", base, float32_compare=True)
    # hgb: leaf values already include the learning rate.
    trees = []
    for (predictor,) in estimator._predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise UnsupportedModelError(
                "HistGradientBoosting with native categorical splits "
                "is not supported; one-hot encode instead"
            )
        leaf = nodes["is_leaf"].astype(bool)
        # HGB stores children as uint32 (0 at leaves): widen before marking leaves with -1.
        trees.append(
            Tree(
                feature=np.where(leaf, -1, nodes["feature_idx"].astype(np.int64)),
                threshold=np.asarray(nodes["num_threshold"], dtype=np.float64),
                left=np.where(leaf, -1, nodes["left"].astype(np.int64)),
                right=np.where(leaf, -1, nodes["right"].astype(np.int64)),
                value=np.asarray(nodes["value"], dtype=np.float64),
                missing_left=np.asarray(nodes["missing_go_to_left"], dtype=bool),
            )
        )
    base = float(np.asarray(estimator._baseline_prediction).ravel()[0])
    return TreeEnsemble(tuple(trees), "additive_logit", base, float32_compare=False)
