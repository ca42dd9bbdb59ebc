"""Read a user's fitted scikit-learn pipeline into edgefleet's form (docs/architecture.md §4,
"Bring your own pipeline").

A user's pipeline takes a DataFrame (text categories, columns by name, any order of
transformers); the model contract (§2) is one float32 tensor with categories as vocabulary
codes. So the pipeline is *read*, step by step, into the pieces the converters know
(imputed and scaled numeric columns, one-hot or ordinal codes) and rebuilt as an equivalent
contract pipeline ``Pipeline([("prep", ColumnTransformer), ("model", estimator)])`` over
codes, around the user's own fitted estimator. Nothing is refitted: the rebuilt steps carry
the user's fitted statistics. Any step outside :data:`COVERED_STEPS` is refused with its
name, before anything is written.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from edgefleet.central.byo.splits import FloatArray, Scale, fold_into_trees
from edgefleet.central.data.loader import _text
from edgefleet.converters.decision import gives_decision, probability_surrogate
from edgefleet.converters.ir import (
    ESTIMATOR_FAMILIES,
    LINEAR_FAMILIES,
    REFUSED_ESTIMATORS,
    check_estimator,
    family_of,
)
from edgefleet.edge.schema import UNKNOWN_CODE
from edgefleet.errors import UnsupportedModelError

COVERED_STEPS: dict[str, str] = {
    "ColumnTransformer": "columns by name, 'passthrough' and 'drop', remainder",
    "SimpleImputer": "mean, median, most_frequent, constant (before a scaler or encoder)",
    "StandardScaler": "with or without mean / std",
    "MinMaxScaler": "without clip",
    "RobustScaler": "with or without centering / scaling",
    "OneHotEncoder": "handle_unknown 'ignore', 'error' or 'infrequent_if_exist'; drop; "
    "infrequent categories (min_frequency / max_categories; in front of trees not together "
    "with drop)",
    "OrdinalEncoder": "handle_unknown 'error', or 'use_encoded_value' with unknown_value=-1",
    "Pipeline": "of the steps above, then one estimator",
}
SCALERS = ("StandardScaler", "MinMaxScaler", "RobustScaler")
ENCODERS = ("OneHotEncoder", "OrdinalEncoder")


def covered_text() -> str:
    steps = ", ".join(COVERED_STEPS)
    estimators = ", ".join(ESTIMATOR_FAMILIES)
    return f"edgefleet covers the steps {steps} and the estimators {estimators}"


def unsupported(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{what}; {covered_text()} (edgefleet formats lists them)")


@dataclass
class Block:
    """One ColumnTransformer entry as edgefleet reads it."""

    name: str
    columns: list[str]
    kind: str  # "numeric", "onehot" or "ordinal"
    impute: list[float] | None = None
    offset: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    vocabularies: list[tuple[str, ...]] = field(default_factory=list)
    allow_missing: bool = False
    # MinMaxScaler computes x * multiply + add: kept as is to fold it into tree splits exactly.
    affine: tuple[list[float], list[float]] | None = None
    # A OneHotEncoder's own layout, per column: for each category the output column it sets
    # (None: it sets none, a dropped category), the column an unknown category sets (None:
    # none), and the count of output columns. Empty when the layout is one column per
    # category. ``drop`` or infrequent categories make it differ.
    groups: list[list[int | None]] = field(default_factory=list)
    unknown_to: list[int | None] = field(default_factory=list)
    group_widths: list[int] = field(default_factory=list)
    # Per column, the codes of its infrequent categories (empty: none are).
    infrequent: list[tuple[int, ...]] = field(default_factory=list)
    layout_text: str = ""

    def scale_values(self, values: FloatArray, positions: npt.NDArray[np.int64]) -> FloatArray:
        """The user's scaled values (float64, as scikit-learn computes them) of raw values of
        this block's columns at ``positions``."""
        with np.errstate(over="ignore", invalid="ignore"):
            if self.affine is not None:
                multiply, add = (np.asarray(a, np.float64)[positions] for a in self.affine)
                return np.asarray(values * multiply + add, dtype=np.float64)
            offset = np.asarray(self.offset, np.float64)[positions]
            return np.asarray((values - offset) / np.asarray(self.scale, np.float64)[positions])

    @property
    def width(self) -> int:
        """How many features the rebuilt block gives (one per category for one-hot)."""
        return sum(map(len, self.vocabularies)) if self.kind == "onehot" else len(self.columns)

    @property
    def user_width(self) -> int:
        """How many features the user's block gave the estimator."""
        return sum(self.group_widths) if self.groups else self.width

    @property
    def merges(self) -> bool:
        """Whether some output column stands for several categories (infrequent ones)."""
        return any(
            len([g for g in groups if g is not None]) != len({g for g in groups if g is not None})
            for groups in self.groups
        )


@dataclass(frozen=True)
class ReadPipeline:
    """What a user's pipeline is, in edgefleet's terms."""

    input_names: tuple[str, ...]  # every column the user's pipeline takes, in its order
    blocks: tuple[Block, ...]
    estimator: Any

    @property
    def used_names(self) -> list[str]:
        """The schema's features: the input columns some block reads, in input order."""
        used = {c for b in self.blocks for c in b.columns}
        return [n for n in self.input_names if n in used]


def split_pipeline(model: Any) -> tuple[list[tuple[str, Any]], Any]:
    """(preprocessing steps, final estimator) of a Pipeline or a bare estimator."""
    if type(model).__name__ == "Pipeline":
        steps = [(n, s) for n, s in model.steps if s not in (None, "passthrough")]
        if not steps:
            raise unsupported("the pipeline has no steps")
        return steps[:-1], steps[-1][1]
    return [], model


def input_names(model: Any, signature: Sequence[str] | None) -> tuple[str, ...]:
    names = getattr(model, "feature_names_in_", None)
    if names is None and type(model).__name__ == "Pipeline":
        names = getattr(model.steps[0][1], "feature_names_in_", None)
    if names is not None:
        found = tuple(str(n) for n in names)
        if signature is not None and set(signature) != set(found):
            raise unsupported(
                f"the MLflow signature names {sorted(signature)} but the pipeline was fitted "
                f"on {sorted(found)}"
            )
        return found
    if signature is not None:
        return tuple(signature)
    raise UnsupportedModelError(
        "the pipeline was fitted on an array without column names, so edgefleet cannot tell "
        "which column is which: fit it on a pandas DataFrame (or save it with an MLflow "
        "signature)"
    )


def read_pipeline(model: Any, signature: Sequence[str] | None = None) -> ReadPipeline:
    prep_steps, estimator = split_pipeline(model)
    name = type(estimator).__name__
    if name not in ESTIMATOR_FAMILIES:
        why = f" ({REFUSED_ESTIMATORS[name]})" if name in REFUSED_ESTIMATORS else ""
        raise unsupported(f"the estimator {name} is not converted{why}")
    try:
        check_estimator(estimator)
    except UnsupportedModelError as error:
        raise unsupported(str(error)) from None
    names = input_names(model, signature)
    if not prep_steps:
        blocks = [_numeric_block("passthrough", list(names), [])]
    elif type(prep_steps[0][1]).__name__ == "ColumnTransformer":
        if len(prep_steps) > 1:
            after = type(prep_steps[1][1]).__name__
            raise unsupported(f"step {prep_steps[1][0]!r} ({after}) after a ColumnTransformer")
        blocks = _column_blocks(prep_steps[0][1], names)
    else:
        blocks = [_block("steps", list(names), prep_steps)]
    _check_disjoint(blocks)
    both = [b for b in blocks if any(b.infrequent) and any(None in g for g in b.groups)]
    if both and ESTIMATOR_FAMILIES[name] not in LINEAR_FAMILIES:
        raise unsupported(
            f"step {both[0].name!r}: {both[0].layout_text} in front of {name} (infrequent "
            "categories and a dropped category together are converted for linear models; "
            "in front of trees, use one of the two)"
        )
    return ReadPipeline(input_names=names, blocks=tuple(blocks), estimator=estimator)


def _column_blocks(transformer: Any, names: tuple[str, ...]) -> list[Block]:
    blocks = []
    for entry, step, columns in transformer.transformers_:
        selected = _column_names(columns, names, entry)
        if step == "drop" or not selected:
            continue
        steps = [] if step == "passthrough" else _flatten(entry, step)
        blocks.append(_block(entry, selected, steps))
    return blocks


def _column_names(columns: Any, names: tuple[str, ...], entry: str) -> list[str]:
    values = list(np.atleast_1d(np.asarray(columns, dtype=object)))
    if values and all(isinstance(v, bool | np.bool_) for v in values):
        return [n for n, keep in zip(names, values, strict=True) if keep]
    if all(isinstance(v, int | np.integer) for v in values):
        return [names[int(v)] for v in values]
    if all(isinstance(v, str) for v in values):
        return [str(v) for v in values]
    raise unsupported(f"ColumnTransformer entry {entry!r} selects columns by {columns!r}")


def _flatten(entry: str, step: Any) -> list[tuple[str, Any]]:
    if _identity(step):
        return []  # how scikit-learn stores a 'passthrough' remainder
    if type(step).__name__ != "Pipeline":
        return [(entry, step)]
    flat: list[tuple[str, Any]] = []
    for name, inner in step.steps:
        if inner not in (None, "passthrough"):
            flat.extend(_flatten(f"{entry}/{name}", inner))
    return flat


def _identity(step: Any) -> bool:
    return (
        type(step).__name__ == "FunctionTransformer"
        and step.func is None
        and step.inverse_func is None
    )


def _block(entry: str, columns: list[str], steps: list[tuple[str, Any]]) -> Block:
    for name, step in steps:
        kind = type(step).__name__
        if kind not in COVERED_STEPS:
            raise unsupported(f"step {name!r} ({kind}) is not converted")
    if steps and type(steps[-1][1]).__name__ in ENCODERS:
        return _encoded_block(entry, columns, steps)
    return _numeric_block(entry, columns, steps)


def _numeric_block(entry: str, columns: list[str], steps: list[tuple[str, Any]]) -> Block:
    width = len(columns)
    block = Block(entry, columns, "numeric", None, [0.0] * width, [1.0] * width)
    scaled = False
    for name, step in steps:
        kind = type(step).__name__
        if kind == "SimpleImputer":
            if scaled or block.impute is not None:
                raise unsupported(f"step {name!r}: an imputer after a scaler or another imputer")
            block.impute = _statistics(name, step)
            block.allow_missing = True
        elif kind in SCALERS:
            if scaled:
                raise unsupported(f"step {name!r}: a second scaler")
            block.offset, block.scale = _scaler(name, step, width)
            if kind == "MinMaxScaler":
                block.affine = (_floats(step.scale_), _floats(step.min_))
            scaled = True
        else:
            raise unsupported(f"step {name!r} ({kind}) where numeric steps were expected")
    return block


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64)]


def _statistics(name: str, imputer: Any) -> list[float]:
    if getattr(imputer, "add_indicator", False):
        raise unsupported(f"step {name!r}: SimpleImputer(add_indicator=True)")
    try:
        values = np.asarray(imputer.statistics_, dtype=np.float64)
    except (TypeError, ValueError):
        raise unsupported(f"step {name!r}: SimpleImputer with non-numeric statistics") from None
    if not np.isfinite(values).all():
        raise unsupported(f"step {name!r}: SimpleImputer left a column without a statistic")
    return [float(v) for v in values]


def _scaler(name: str, step: Any, width: int) -> tuple[list[float], list[float]]:
    """As ``(x - offset) / scale``, the form the converters emit."""
    kind = type(step).__name__
    zeros, ones = np.zeros(width), np.ones(width)
    if kind == "StandardScaler":
        offset = step.mean_ if step.with_mean else zeros
        scale = step.scale_ if step.with_std else ones
    elif kind == "RobustScaler":
        offset = step.center_ if step.with_centering else zeros
        scale = step.scale_ if step.with_scaling else ones
    else:  # MinMaxScaler: x * s + m
        if step.clip:
            raise unsupported(f"step {name!r}: MinMaxScaler(clip=True)")
        offset = -np.asarray(step.min_) / np.asarray(step.scale_)
        scale = 1.0 / np.asarray(step.scale_)
    offset, scale = np.asarray(offset, np.float64), np.asarray(scale, np.float64)
    if not (np.isfinite(offset).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise unsupported(f"step {name!r}: {kind} with a zero or non-finite scale")
    return offset.tolist(), scale.tolist()


def _encoded_block(entry: str, columns: list[str], steps: list[tuple[str, Any]]) -> Block:
    *before, (name, encoder) = steps
    imputed = False
    for step_name, step in before:
        if type(step).__name__ != "SimpleImputer" or step.strategy not in (
            "most_frequent",
            "constant",
        ):
            raise unsupported(
                f"step {step_name!r} ({type(step).__name__}) before the encoder {name!r}; "
                "only SimpleImputer(strategy='most_frequent' or 'constant') is converted there"
            )
        imputed = True
    kind = type(encoder).__name__
    vocabularies = [
        _vocabulary(name, column, cats)
        for column, cats in zip(columns, encoder.categories_, strict=True)
    ]
    block = Block(entry, columns, "ordinal", vocabularies=vocabularies)
    if kind == "OneHotEncoder":
        block.kind = "onehot"
        unknown = encoder.handle_unknown
        block.allow_missing = unknown in ("ignore", "infrequent_if_exist") and not imputed
        _read_layout(encoder, block)
        return block
    if encoder.handle_unknown != "error" and encoder.unknown_value != UNKNOWN_CODE:
        raise unsupported(
            f"step {name!r}: OrdinalEncoder(unknown_value={encoder.unknown_value!r}); "
            "edgefleet's code for an unknown category is -1"
        )
    if getattr(encoder, "_infrequent_enabled", False):
        raise unsupported(f"step {name!r}: OrdinalEncoder with infrequent categories")
    block.allow_missing = encoder.handle_unknown != "error" and not imputed
    return block


def _read_layout(encoder: Any, block: Block) -> None:
    """The user's one-hot layout (``Block.groups``), read by encoding each category: the
    encoder's ``drop`` and infrequent categories decide it, and scikit-learn is the
    authority on both."""
    infrequent = bool(getattr(encoder, "_infrequent_enabled", False))
    if encoder.drop is None and not infrequent:
        return
    widths = [int(w) for w in encoder._n_features_outs]
    starts = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    first = [cats[0] for cats in encoder.categories_]
    for i, cats in enumerate(encoder.categories_):
        probe = np.array([first] * len(cats), dtype=object)
        probe[:, i] = list(cats)
        names = getattr(encoder, "feature_names_in_", None)
        rows = probe if names is None else pd.DataFrame(probe, columns=list(names))
        encoded = encoder.transform(rows)
        encoded = np.asarray(encoded.toarray() if hasattr(encoded, "toarray") else encoded)
        block_i = encoded[:, starts[i] : starts[i + 1]]
        groups = [int(np.argmax(row)) if row.any() else None for row in block_i]
        block.groups.append(groups)
        block.group_widths.append(widths[i])
        rare = encoder.infrequent_categories_[i] if infrequent else None
        to_infrequent = encoder.handle_unknown == "infrequent_if_exist" and rare is not None
        block.unknown_to.append(widths[i] - 1 if to_infrequent else None)
        codes = [] if rare is None else [list(cats).index(c) for c in rare]
        block.infrequent.append(tuple(int(c) for c in codes))
    parts = [f"drop={encoder.drop!r}"] if encoder.drop is not None else []
    if infrequent:
        parts.append(
            f"min_frequency={encoder.min_frequency!r}, max_categories={encoder.max_categories!r}"
        )
    block.layout_text = f"OneHotEncoder({', '.join(parts)})"


def _vocabulary(step: str, column: str, categories: Any) -> tuple[str, ...]:
    texts = [_text(c) for c in list(categories)]
    if any(t is None for t in texts):
        raise unsupported(
            f"step {step!r}: a missing value is a category of column {column!r}; impute it "
            "before the encoder"
        )
    vocabulary = tuple(str(t) for t in texts)
    if len(set(vocabulary)) != len(vocabulary):
        raise unsupported(f"step {step!r}: categories of {column!r} collide as text")
    return vocabulary


def _check_disjoint(blocks: Sequence[Block]) -> None:
    seen: dict[str, str] = {}
    for block in blocks:
        for column in block.columns:
            if column in seen:
                raise unsupported(
                    f"column {column!r} is read by both {seen[column]!r} and {block.name!r}"
                )
            seen[column] = block.name


# --- the contract pipeline ---------------------------------------------------------------


def contract_pipeline(
    read: ReadPipeline, schema_names: Sequence[str], encoded: npt.NDArray[np.float32]
) -> Pipeline:
    """The equivalent pipeline over the model contract's tensor (``encoded``: the reference
    rows, used only so scikit-learn marks the rebuilt steps fitted; their statistics are
    then replaced by the user's). In front of trees there is no scaler: the scaling is
    folded into the splits (``splits.fold_into_trees``)."""
    trees = family_of(read.estimator) not in LINEAR_FAMILIES
    index = {name: i for i, name in enumerate(schema_names)}
    entries, owners = [], []
    synthetic: dict[int, npt.NDArray[np.float64]] = {}
    for position, block in enumerate(read.blocks):
        columns = [index[c] for c in block.columns]
        if trees and block.groups:
            # A tree reads the user's layout: each column keeps the category it dropped,
            # or merges its infrequent categories into one column.
            for j, column in enumerate(columns):
                encoder = _dropping(block, j)
                if block.infrequent[j]:
                    encoder, synthetic[column] = _merging(block, j)
                entries.append((f"onehot_{position}_{j}", encoder, [column]))
                owners.append(block)
            continue
        entries.append((f"{block.kind}_{position}", _fresh(block, trees), columns))
        owners.append(block)
    prep = ColumnTransformer(entries, remainder="drop", sparse_threshold=0.0)
    prep.fit(_fitting_rows(encoded, synthetic))
    for block, (_, fitted, _) in zip(owners, prep.transformers_, strict=False):
        _patch(block, fitted, trees)
    estimator = copy.deepcopy(read.estimator)
    # The estimator now receives an array; its fitted column names would only warn.
    if hasattr(estimator, "feature_names_in_"):
        del estimator.feature_names_in_
    if trees:
        numeric, scale = _feature_scaling(read.blocks)
        fold_into_trees(estimator, numeric, scale)
    else:
        _widen_to_categories(estimator, read.blocks)
    if gives_decision(estimator):
        # Same decision function; its predict_proba is the contract's map of it.
        estimator = probability_surrogate(estimator)
    return Pipeline([("prep", prep), ("model", estimator)])


def _dropping(block: Block, column: int) -> OneHotEncoder:
    groups = block.groups[column]
    dropped = [float(c) for c, group in enumerate(groups) if group is None]
    return OneHotEncoder(
        categories=[np.arange(len(groups), dtype=np.float64)],
        drop=dropped or None,
        handle_unknown="ignore",
        sparse_output=False,
    )


def _merging(block: Block, column: int) -> tuple[OneHotEncoder, npt.NDArray[np.float64]]:
    """An encoder over codes with the user's infrequent categories for column ``column``
    of ``block``, and the codes to fit it on: ``min_frequency`` cannot name categories, so
    each frequent code appears at least twice and each infrequent one once (or, when all
    are infrequent, ``min_frequency`` is above any count; :func:`_fitting_rows` pads with
    the first code, frequent where one is). scikit-learn then lays out the columns as the
    user's encoder did (the infrequent column last; an unknown category in it under
    ``'infrequent_if_exist'``)."""
    k = len(block.groups[column])
    rare = set(block.infrequent[column])
    frequent = [c for c in range(k) if c not in rare]
    codes = np.array([*frequent, *frequent, *sorted(rare)], dtype=np.float64)
    unknown = "ignore" if block.unknown_to[column] is None else "infrequent_if_exist"
    encoder = OneHotEncoder(
        categories=[np.arange(k, dtype=np.float64)],
        handle_unknown=unknown,
        min_frequency=2 if frequent else 2**31,
        sparse_output=False,
    )
    return encoder, codes


def _fitting_rows(
    encoded: npt.NDArray[np.float32], synthetic: dict[int, npt.NDArray[np.float64]]
) -> npt.NDArray[np.float64]:
    """The rows the rebuilt ColumnTransformer is fitted on: the reference rows, with the
    codes :func:`_merging` needs in its columns (the other steps' statistics are replaced
    by the user's afterwards, so repeating reference rows to that length is harmless)."""
    if not synthetic:
        return np.asarray(encoded, dtype=np.float64)
    rows = max(len(encoded), *(len(codes) for codes in synthetic.values()))
    fitting = np.resize(np.asarray(encoded, dtype=np.float64), (rows, encoded.shape[1]))
    for column, codes in synthetic.items():
        fitting[:, column] = np.concatenate([codes, np.full(rows - len(codes), codes[0])])
    return fitting


def _widen_to_categories(estimator: Any, blocks: Sequence[Block]) -> None:
    """The rebuilt one-hot blocks in front of a linear model have one feature per category.
    A category's weight is that of the user's column it sets: 0 for a dropped category (what
    dropping it means; an unknown category, all zeros under ``handle_unknown='ignore'``,
    scores as the dropped one did), the infrequent column's for each infrequent category.
    Where an unknown category sets the infrequent column (``'infrequent_if_exist'``; the
    contract's unknown code -1 gives all zeros), that column's weight moves into the
    intercept and off every category's weight, so all zeros scores as infrequent."""
    if not any(b.groups for b in blocks):
        return
    old = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
    source: list[int | None] = []  # per new feature, the user's feature it copies
    subtract: list[int | None] = []  # ... and the one whose weight moved into the intercept
    at = 0
    for block in blocks:
        if not block.groups:
            source.extend(range(at, at + block.user_width))
            subtract.extend([None] * block.user_width)
            at += block.user_width
            continue
        for groups, unknown, width in zip(
            block.groups, block.unknown_to, block.group_widths, strict=True
        ):
            source.extend(None if g is None else at + g for g in groups)
            subtract.extend([None if unknown is None else at + unknown] * len(groups))
            at += width
    coefficients = np.zeros((old.shape[0], len(source)))
    for j, (copied, moved) in enumerate(zip(source, subtract, strict=True)):
        coefficients[:, j] = (0.0 if copied is None else old[:, copied]) - (
            0.0 if moved is None else old[:, moved]
        )
    moved_columns = sorted({m for m in subtract if m is not None})
    intercept = np.asarray(estimator.intercept_, dtype=np.float64)
    estimator.intercept_ = intercept + old[:, moved_columns].sum(axis=1).reshape(intercept.shape)
    estimator.coef_ = coefficients.reshape(
        (-1,) if np.ndim(estimator.coef_) == 1 else (-1, len(source))
    )
    estimator.n_features_in_ = len(source)


def _feature_scaling(blocks: Sequence[Block]) -> tuple[list[bool], Scale]:
    """Per estimator feature whether it is numeric, and the user's scaling of each."""
    owner: list[tuple[Block, int]] = []
    for block in blocks:
        owner.extend((block, position) for position in range(block.user_width))
    numeric = [block.kind == "numeric" for block, _ in owner]

    def scale(values: FloatArray, features: npt.NDArray[np.int64]) -> FloatArray:
        out = np.array(values, dtype=np.float64)
        for feature in np.unique(features):
            block, position = owner[int(feature)]
            rows = features == feature
            positions = np.full(int(rows.sum()), position, dtype=np.int64)
            out[rows] = block.scale_values(out[rows], positions)
        return out

    return numeric, scale


def _fresh(block: Block, trees: bool) -> Any:
    if block.kind == "onehot":
        return OneHotEncoder(
            categories=[np.arange(len(v), dtype=np.float64) for v in block.vocabularies],
            handle_unknown="ignore",
            sparse_output=False,
        )
    steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if block.kind == "numeric" and _scaled(block) and not trees:
        steps.append(("scale", StandardScaler()))
    return Pipeline(steps)


def _patch(block: Block, fitted: Any, trees: bool) -> None:
    if block.kind == "onehot":
        return
    imputer = fitted.named_steps["impute"]
    width = len(block.columns)
    if block.kind == "ordinal":
        # Codes are never NaN: a missing or unseen category is already -1 (UNKNOWN_CODE).
        imputer.statistics_ = np.full(width, UNKNOWN_CODE)
        return
    # Without an imputer the schema refuses missing values, so the statistic is never used.
    imputer.statistics_ = np.asarray(block.impute or [0.0] * width, dtype=np.float64)
    if trees or not _scaled(block):
        return
    scaler = fitted.named_steps["scale"]
    scaler.mean_ = np.asarray(block.offset, dtype=np.float64)
    scaler.scale_ = np.asarray(block.scale, dtype=np.float64)
    scaler.var_ = scaler.scale_**2


def _scaled(block: Block) -> bool:
    return any(o != 0.0 for o in block.offset) or any(s != 1.0 for s in block.scale)
