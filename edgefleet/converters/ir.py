"""A small neutral description of a fitted pipeline (the "IR"), read once from
scikit-learn, from which each backend emits its format (docs/architecture.md §4: the practice
of skl2onnx and hummingbird).

The IR has two parts. ``Preprocessing`` maps the contract's raw float32 inputs to the
estimator's feature vector: numeric columns first (impute NaN, then ``(x - offset) / scale``),
then one one-hot block per categorical column (codes outside ``0..k-1`` give all zeros).
The model is either a ``LinearModel`` (R score rows ``w.x + b``) or a ``TreeEnsemble`` (each
leaf holds R values). R is 1 for a binary classifier (the positive class's score) and for a
regressor (the value), K for a K-class classifier. Then the ``link`` makes the outputs
(docs/architecture.md §2: ``[N, n_outputs]``):

* ``logistic`` (binary): P(positive) = sigmoid(score), outputs ``[1 - p, p]``;
* ``softmax`` (multi-class): the K probabilities, in the estimator's ``classes_`` order;
* ``ovr_logistic`` (SGDClassifier, multi-class): sigmoid per class, normalised to sum 1;
* ``modified_huber`` (SGDClassifier's loss): ``(clip(score, -1, 1) + 1) / 2``, binary
  ``[1 - p, p]``, multi-class normalised to sum 1 (uniform where all are 0), as
  scikit-learn's ``predict_proba``;
* ``probability``: the scores are probabilities already (forests: ``[1 - p, p]`` binary);
* ``identity`` (regression): the value, one column.

Tree semantics follow scikit-learn exactly: at a split, go left when ``x <= threshold``
(float64 threshold), NaN goes left when ``missing_left``. ``average`` ensembles (random
forest, extra trees, one decision tree) average the leaf vectors (class probabilities, or
values); ``additive`` ensembles (gradient boosting) add ``base`` and the leaves (learning
rate already applied; a multi-class booster's tree for class k holds its leaves in column k).

``predict_proba`` here is the numpy reference evaluator of the IR: the tests hold it equal
to scikit-learn (``predict_proba``, or ``predict`` as one column for a regressor), so any
backend that matches the IR matches scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgefleet.errors import UnsupportedModelError

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Task = Literal["binary", "multiclass", "regression"]
Link = Literal["logistic", "softmax", "ovr_logistic", "modified_huber", "probability", "identity"]
Aggregation = Literal["average", "additive"]

CLASSIFIER_FAMILIES = {
    "LogisticRegression": "logreg",
    "RandomForestClassifier": "rf",
    "GradientBoostingClassifier": "gb",
    "HistGradientBoostingClassifier": "hgb",
    "ExtraTreesClassifier": "et",
    "DecisionTreeClassifier": "dt",
    # Brought by users (edgefleet register); the trainer does not fit these.
    "SGDClassifier": "sgd",
    # A decision function only: its outputs are scores (converters/decision.py).
    "LinearSVC": "linsvc",
}
REGRESSOR_FAMILIES = {
    "LinearRegression": "linear",
    "Ridge": "ridge",
    "Lasso": "lasso",
    "ElasticNet": "enet",
    "RandomForestRegressor": "rf",
    "GradientBoostingRegressor": "gb",
    "HistGradientBoostingRegressor": "hgb",
    "ExtraTreesRegressor": "et",
    "DecisionTreeRegressor": "dt",
}
ESTIMATOR_FAMILIES = {**CLASSIFIER_FAMILIES, **REGRESSOR_FAMILIES}
LINEAR_FAMILIES = ("logreg", "sgd", "linsvc", "linear", "ridge", "lasso", "enet")
CLASSIFIER_TASKS: tuple[Task, ...] = ("binary", "multiclass")
REGRESSOR_TASKS: tuple[Task, ...] = ("regression",)
# Estimators users bring that edgefleet refuses, and why (named in the refusal and in
# ``edgefleet formats``).
REFUSED_ESTIMATORS: dict[str, str] = {}
# Settings of a converted estimator that edgefleet refuses, and why (``edgefleet formats``).
REFUSED_SETTINGS: dict[str, str] = {}


def estimator_tasks(name: str) -> tuple[Task, ...]:
    """The tasks an estimator class (by name) is converted for."""
    return REGRESSOR_TASKS if name in REGRESSOR_FAMILIES else CLASSIFIER_TASKS


def family_of(estimator: Any) -> str:
    name = type(estimator).__name__
    if name == "DecisionScores":  # converters/decision.py: the user's estimator inside
        return family_of(estimator.estimator)
    try:
        return ESTIMATOR_FAMILIES[name]
    except KeyError:
        known = ", ".join(ESTIMATOR_FAMILIES)
        why = f" ({name} {REFUSED_ESTIMATORS[name]})" if name in REFUSED_ESTIMATORS else ""
        raise UnsupportedModelError(
            f"edgefleet has no converter for {name}{why}; it converts: {known}"
        ) from None


def task_of(estimator: Any) -> Task:
    """The task of a fitted estimator: regression, or binary / multi-class by its classes."""
    name = type(estimator).__name__
    if name in REGRESSOR_FAMILIES:
        if np.ndim(getattr(estimator, "coef_", np.zeros(1))) > 1 and estimator.coef_.shape[0] > 1:
            raise UnsupportedModelError(f"{name} predicts several targets; edgefleet takes one")
        return "regression"
    classes = getattr(estimator, "classes_", None)
    if classes is None or np.ndim(classes) != 1 or len(classes) < 2:
        raise UnsupportedModelError(
            f"{name} has no single list of at least 2 classes (multi-output classifiers "
            "are not converted)"
        )
    return "binary" if len(classes) == 2 else "multiclass"


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


def _rows(values: Any, what: str) -> Float64Array:
    array = np.asarray(values, dtype=np.float64)
    return array[None, :] if array.ndim == 1 and what == "coefficients" else array


@dataclass(frozen=True)
class LinearModel:
    """``scores = features @ coefficients.T + intercept`` (``[R, F]`` and ``[R]``), then
    ``link``. A 1-D coefficient vector and a scalar intercept are one row."""

    coefficients: Float64Array
    intercept: Float64Array
    link: Link = "logistic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "coefficients", _rows(self.coefficients, "coefficients"))
        object.__setattr__(self, "intercept", np.atleast_1d(np.asarray(self.intercept, float)))

    @property
    def n_scores(self) -> int:
        return int(self.coefficients.shape[0])

    def scores(self, features: Float64Array) -> Float64Array:
        return np.asarray(features @ self.coefficients.T + self.intercept, dtype=np.float64)


@dataclass(frozen=True)
class Tree:
    feature: IntArray  # -1 at leaves
    threshold: Float64Array
    left: IntArray  # -1 at leaves
    right: IntArray
    value: Float64Array  # [nodes, R]: per node R values (a 1-D array is one column)
    missing_left: npt.NDArray[np.bool_]

    def __post_init__(self) -> None:
        value = np.asarray(self.value, dtype=np.float64)
        object.__setattr__(self, "value", value[:, None] if value.ndim == 1 else value)

    @classmethod
    def of_lists(cls, arrays: tuple[list[Any], ...]) -> Tree:
        """A tree from the node lists a rewrite grows: ``(feature, threshold, left,
        right, missing_left, value)``."""
        feature, threshold, left, right, missing, value = arrays
        return cls(
            feature=np.asarray(feature, dtype=np.int64),
            threshold=np.asarray(threshold, dtype=np.float64),
            left=np.asarray(left, dtype=np.int64),
            right=np.asarray(right, dtype=np.int64),
            value=np.asarray(value, dtype=np.float64),
            missing_left=np.asarray(missing, dtype=bool),
        )

    @property
    def is_leaf(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.left < 0)

    def depth(self) -> int:
        """The longest root-to-leaf path (nodes may share children: see
        ``_categorical_splits``)."""
        below = np.zeros(len(self.feature), dtype=np.int64)  # levels under each node
        for node in _bottom_up(self):
            if self.left[node] >= 0:
                below[node] = 1 + max(below[self.left[node]], below[self.right[node]])
        return int(below[0])

    def leaf_values(self, features: Float64Array, float32_compare: bool) -> Float64Array:
        """``[N, R]``: the values of the leaf each row reaches."""
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


def _bottom_up(tree: Tree) -> list[int]:
    """The nodes reachable from the root, every node after all its children."""
    order: list[int] = []
    seen = np.zeros(len(tree.feature), dtype=bool)
    stack = [(0, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if seen[node]:
            continue
        seen[node] = True
        stack.append((node, True))
        if tree.left[node] >= 0:
            stack.extend([(int(tree.left[node]), False), (int(tree.right[node]), False)])
    return order


@dataclass(frozen=True)
class TreeEnsemble:
    trees: tuple[Tree, ...]
    aggregation: Aggregation
    base: Float64Array  # [R], added to an additive ensemble's sum (a scalar is one value)
    # scikit-learn's trees (not HGB) compare the float32-cast feature against the threshold.
    float32_compare: bool
    link: Link = "probability"

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", np.atleast_1d(np.asarray(self.base, dtype=np.float64)))

    @property
    def n_scores(self) -> int:
        return int(self.trees[0].value.shape[1]) if self.trees else len(self.base)

    def max_depth(self) -> int:
        return max(t.depth() for t in self.trees)

    def scores(self, features: Float64Array) -> Float64Array:
        total = np.zeros((len(features), self.n_scores), dtype=np.float64)
        for tree in self.trees:
            total += tree.leaf_values(features, self.float32_compare)
        if self.aggregation == "average":
            return total / len(self.trees)
        return self.base + total


@dataclass(frozen=True)
class ModelIR:
    family: str
    preprocessing: Preprocessing
    model: LinearModel | TreeEnsemble
    task: Task = "binary"
    # The estimator's class labels as text (classification), in its ``classes_`` order.
    classes: tuple[str, ...] = field(default=())

    @property
    def n_outputs(self) -> int:
        """Columns of the model's output: classes, or 1 for a regressor's value."""
        if self.task == "regression":
            return 1
        return 2 if self.task == "binary" else self.model.n_scores

    def predict_proba(self, inputs: Float32Array) -> Float64Array:
        """``[N, n_outputs]``: class probabilities, or a regressor's value in one column."""
        scores = self.model.scores(self.preprocessing.transform(inputs))
        return outputs(self.model.link, scores)

    predict = predict_proba


def outputs(link: Link, scores: Float64Array) -> Float64Array:
    """The model's outputs from its ``[N, R]`` scores (see the module docstring)."""
    if link == "identity":
        return scores
    if link == "ovr_logistic" and scores.shape[1] > 1:
        # scikit-learn's one-vs-rest normalisation: uniform where every sigmoid underflows
        # to 0 (all scores below OVR_UNDERFLOW; an unscaled SGD model's reach -1e5).
        probabilities = _sigmoid(scores)
        total = probabilities.sum(axis=1, keepdims=True)
        uniform = np.full_like(probabilities, 1.0 / probabilities.shape[1])
        with np.errstate(invalid="ignore"):
            return np.where(total > 0, probabilities / total, uniform)
    if link == "modified_huber":
        return _modified_huber(scores)
    if link == "softmax":
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float64)
    probabilities = _sigmoid(scores) if link in ("logistic", "ovr_logistic") else scores
    if probabilities.shape[1] == 1:
        return np.column_stack([1.0 - probabilities[:, 0], probabilities[:, 0]])
    return probabilities


def _modified_huber(scores: Float64Array) -> Float64Array:
    """scikit-learn's ``SGDClassifier(loss='modified_huber').predict_proba``."""
    p = (np.clip(scores, -1.0, 1.0) + 1.0) / 2.0
    if p.shape[1] == 1:
        return np.column_stack([1.0 - p[:, 0], p[:, 0]])
    total = p.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        return np.asarray(np.where(total > 0, p / total, 1.0 / p.shape[1]), dtype=np.float64)


OVR_UNDERFLOW = -709.782712893384
"""Below this score, scikit-learn's float64 sigmoid (scipy's ``expit``) is exactly 0."""


def _f32(values: Float64Array) -> Float64Array:
    return values.astype(np.float32).astype(np.float64)


def _sigmoid(z: Float64Array) -> Float64Array:
    with np.errstate(over="ignore"):
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def read_pipeline(pipeline: Any) -> ModelIR:
    """The IR of a fitted ``Pipeline([("prep", ColumnTransformer), ("model", estimator)])``
    as edgefleet's trainer (or ``edgefleet register``'s rebuild) makes it."""
    steps = getattr(pipeline, "steps", None)
    if not steps or len(steps) != 2:
        raise UnsupportedModelError(
            "edgefleet converts pipelines of two steps: a ColumnTransformer and an estimator"
        )
    (_, prep), (_, estimator) = steps
    family = family_of(estimator)
    task = check_estimator(estimator)
    preprocessing = _read_preprocessing(prep)
    order = _ir_positions(prep, preprocessing)
    linear = family in LINEAR_FAMILIES
    model = _read_linear(estimator, task) if linear else _read_trees(estimator, family, task)
    classes = () if task == "regression" else tuple(str(c) for c in estimator.classes_)
    if isinstance(model, TreeEnsemble) and merges_categories(prep):
        from edgefleet.converters.ir_sets import category_sets, split_on_sets  # imports ir

        trees = split_on_sets(model, order, category_sets(prep, len(preprocessing.numeric)))
        return ModelIR(family, preprocessing, trees, task, classes)
    return ModelIR(family, preprocessing, _reorder(model, order), task, classes)


def merges_categories(prep: Any) -> bool:
    """Whether a one-hot encoder of ``prep`` merges infrequent categories into a column."""
    return any(getattr(t, "_infrequent_enabled", False) for _, t, _ in prep.transformers_)


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
            # A dropped category has no feature of its own (edgefleet register keeps the
            # user's ``drop`` in front of trees): the IR's block still has its column.
            drops = getattr(transformer, "drop_idx_", None)
            if getattr(transformer, "_infrequent_enabled", False):
                # A merged column stands at its first category (ir_sets rewrites its splits).
                from edgefleet.converters.ir_sets import encoder_layout

                for position, layout in enumerate(encoder_layout(transformer)):
                    positions.extend(block_at + (m[0] if m else 0) for m, _ in layout)
                    block_at += len(transformer.categories_[position])
                continue
            for position, categories in enumerate(transformer.categories_):
                dropped = None if drops is None else drops[position]
                positions.extend(
                    block_at + c for c in range(len(categories)) if dropped is None or c != dropped
                )
                block_at += len(categories)
    return np.asarray(positions, dtype=np.int64)


def _reorder(model: LinearModel | TreeEnsemble, order: IntArray) -> LinearModel | TreeEnsemble:
    if np.array_equal(order, np.arange(len(order))):
        return model
    if isinstance(model, LinearModel):
        coefficients = np.zeros_like(model.coefficients)
        coefficients[:, order] = model.coefficients
        return LinearModel(coefficients, model.intercept, model.link)
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
    return TreeEnsemble(trees, model.aggregation, model.base, model.float32_compare, model.link)


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


def _read_linear(estimator: Any, task: Task) -> LinearModel:
    name = type(estimator).__name__
    coefficients = np.asarray(estimator.coef_, dtype=np.float64)
    intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
    if task == "regression":
        return LinearModel(coefficients.reshape(1, -1), intercept.reshape(1), "identity")
    if getattr(estimator, "loss", None) == "modified_huber" and name == "SGDClassifier":
        rows = 1 if task == "binary" else len(coefficients)
        return LinearModel(coefficients[:rows], intercept[:rows], "modified_huber")
    if task == "binary":
        return LinearModel(coefficients[:1], intercept[:1], "logistic")
    link: Link = "ovr_logistic" if name == "SGDClassifier" else "softmax"
    return LinearModel(coefficients, intercept, link)


def _sklearn_tree(tree: Any, value: Float64Array) -> Tree:
    if tree.n_outputs != 1:
        raise UnsupportedModelError("a tree with several outputs is not converted")
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


def _read_trees(estimator: Any, family: str, task: Task) -> TreeEnsemble:
    if family in ("rf", "et", "dt"):
        return _read_forest(estimator, family, task)
    if family == "gb":
        return _read_gradient_boosting(estimator, task)
    from edgefleet.converters.ir_hgb import read_hist_gradient_boosting  # it imports this module

    return read_hist_gradient_boosting(estimator, task)


def _read_forest(estimator: Any, family: str, task: Task) -> TreeEnsemble:
    members = estimator.estimators_ if family != "dt" else [estimator]
    trees = []
    for member in members:
        raw = np.asarray(member.tree_.value[:, 0, :], dtype=np.float64)
        if task != "regression":
            # Class fractions per node (scikit-learn >= 1.4 stores them normalised already).
            raw = raw / raw.sum(axis=1, keepdims=True)
            raw = raw[:, 1:] if task == "binary" else raw
        trees.append(_sklearn_tree(member.tree_, raw))
    link: Link = "identity" if task == "regression" else "probability"
    return TreeEnsemble(tuple(trees), "average", np.zeros(1), float32_compare=True, link=link)


_ADDITIVE_LINKS: dict[Task, Link] = {
    "binary": "logistic",
    "multiclass": "softmax",
    "regression": "identity",
}
# Regression losses whose raw sum is the prediction (no link function).
GB_IDENTITY_LOSSES = ("squared_error", "absolute_error", "huber", "quantile")
HGB_IDENTITY_LOSSES = ("squared_error", "absolute_error", "quantile")


def additive_link(task: Task) -> Link:
    return _ADDITIVE_LINKS[task]


def _read_gradient_boosting(estimator: Any, task: Task) -> TreeEnsemble:
    _require_identity_loss(
        estimator, task, ("squared_error", "absolute_error", "huber", "quantile")
    )
    rate = float(estimator.learning_rate)
    stages = np.asarray(estimator.estimators_, dtype=object)
    width = stages.shape[1]
    trees = []
    for stage in stages:
        for k, member in enumerate(stage):
            value = np.zeros((member.tree_.node_count, width))
            value[:, k] = rate * np.asarray(member.tree_.value[:, 0, 0], dtype=np.float64)
            trees.append(_sklearn_tree(member.tree_, value))
    zeros = np.zeros((1, estimator.n_features_in_))
    base = np.asarray(estimator._raw_predict_init(zeros), dtype=np.float64).ravel()
    return TreeEnsemble(tuple(trees), "additive", base, True, additive_link(task))


def check_estimator(estimator: Any) -> Task:
    """Refuse, naming why, an estimator the IR cannot read (before anything is fitted or
    written: ``edgefleet register`` calls it); its task otherwise."""
    family = family_of(estimator)
    task = task_of(estimator)
    if family == "sgd":
        loss = getattr(estimator, "loss", "log_loss")
        setting = f"SGDClassifier(loss={loss!r})"
        if setting in REFUSED_SETTINGS:
            raise UnsupportedModelError(f"{setting} is not converted: {REFUSED_SETTINGS[setting]}")
    elif family == "gb":
        _require_identity_loss(estimator, task, GB_IDENTITY_LOSSES)
    elif family == "hgb":
        _require_identity_loss(estimator, task, HGB_IDENTITY_LOSSES)
    return task


def _require_identity_loss(estimator: Any, task: Task, identity: tuple[str, ...]) -> None:
    """A regressor's raw sum is its prediction only for losses without a link function."""
    loss = getattr(estimator, "loss", "squared_error")
    if task == "regression" and loss not in identity:
        raise UnsupportedModelError(
            f"{type(estimator).__name__}(loss={loss!r}) predicts through a link function "
            f"edgefleet does not convert; losses converted: {', '.join(identity)}"
        )
