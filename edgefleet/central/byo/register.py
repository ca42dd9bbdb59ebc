"""Register a model the user brings (docs/architecture.md §4, "Bring your own pipeline"):
read it, derive its schema, check it against the reference data, rebuild it over the
model contract, prove the rebuilt pipeline agrees with the user's on every reference row,
and register it with the same card a trained model gets (reference profile, holdout
metrics on the reference rows, golden vectors).

Everything that can refuse (an uncovered step, a schema the data does not fit, a rebuilt
pipeline that disagrees) runs before the registry writes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import is_regressor

from edgefleet.central.byo.reading import ReadPipeline, contract_pipeline, read_pipeline
from edgefleet.central.byo.source import LoadedModel, load_model
from edgefleet.central.data.loader import (
    _text,
    data_sha256,
    encode_features,
    load_training_table,
    read_table,
)
from edgefleet.central.metrics import holdout_metrics
from edgefleet.central.registry import ModelVersion, Registry
from edgefleet.central.trainer import TrainedModel, golden_vectors, model_outputs, reference_for
from edgefleet.converters.decision import decision_outputs, gives_decision
from edgefleet.converters.ir import family_of
from edgefleet.edge.manifest import REGRESSION_RTOL, task_tolerance, within_tolerance
from edgefleet.edge.schema import (
    CategoricalFeature,
    Feature,
    FeatureSchema,
    NumericFeature,
    Outputs,
    Task,
)
from edgefleet.errors import DataError, UnsupportedModelError

# The rebuilt pipeline must give the user's probabilities within this on every reference
# row (a regressor's values: within this times their mean magnitude, plus REGRESSION_RTOL of
# the value), as the user holds it or rounded to float32 as the contract sends it
# (measured: below 3e-7 on the test grid).
AGREEMENT_TOLERANCE = 1e-5
# HistGradientBoosting's float32-raised splits (byo/splits.py) answer a value within one
# float32 step above a split like neither view; that many rows may, before registration is
# refused (none did on the test grid).
AGREEMENT_MAX_SHARE = 0.01
HOLDOUT_ROWS = 5000

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Agreement:
    max_abs_diff: float
    rows_over: int
    rows: int


@dataclass(frozen=True)
class Registered:
    version: ModelVersion
    model: TrainedModel
    agreement: Agreement
    source: str


def register_model(
    model: Any,
    reference: pd.DataFrame | str | Path,
    target: str,
    *,
    home: Path,
    name: str | None = None,
    version: str | None = None,
    progress: Progress = lambda _: None,
) -> Registered:
    """``model``: a fitted estimator or pipeline, or the path of a joblib/pickle file or an
    MLflow model folder (loading a pickle runs its code: pass only files you trust)."""
    loaded = (
        load_model(Path(model))
        if isinstance(model, str | Path)
        else LoadedModel(model=model, source=f"a {type(model).__name__} object")
    )
    progress(f"reading {loaded.source}")
    frame = reference if isinstance(reference, pd.DataFrame) else read_table(reference)
    trained = prepare(loaded, frame, target, progress)
    progress(f"registering {name or _default_name(model)}")
    registry = Registry(home)
    registered = registry.register(
        trained.model,
        name=name or _default_name(model),
        data_sha256=data_sha256(frame),
        version=version,
    )
    return Registered(registered, trained.model, trained.agreement, loaded.source)


@dataclass(frozen=True)
class Card:
    model: TrainedModel
    agreement: Agreement


def prepare(
    loaded: LoadedModel, frame: pd.DataFrame, target: str, progress: Progress = lambda _: None
) -> Card:
    """Everything registration needs, or the refusal; writes nothing."""
    read = read_pipeline(loaded.model, loaded.signature)
    schema = _schema(read, loaded, target)
    return build_card(read, loaded.model, schema, frame, progress)


def build_card(
    read: ReadPipeline,
    user_model: Any,
    schema: FeatureSchema,
    frame: pd.DataFrame,
    progress: Progress = lambda _: None,
) -> Card:
    frame = frame.reset_index(drop=True)
    absent = [n for n in (*read.input_names, schema.target) if n not in frame.columns]
    if absent:
        raise DataError(
            f"the reference data lacks the column(s) {', '.join(map(repr, absent))} that the "
            f"pipeline reads (or the target); it has {', '.join(map(str, frame.columns))}"
        )
    table = load_training_table(
        frame[[*schema.names, schema.target]],
        schema.target,
        schema=schema,
        positive_class=schema.classes[1] if schema.task == "binary" else None,
    )
    encoded = encode_features(table.features, schema)
    pipeline = contract_pipeline(read, schema.names, encoded)
    progress(f"checking the rebuilt pipeline against yours on {len(encoded):,} rows")
    ours = model_outputs(pipeline, schema, encoded)
    agreement = _agreement(
        _user_outputs(user_model, _as_fitted(user_model, frame, read), schema),
        _user_outputs(
            user_model, _as_fitted(user_model, _float32_values(frame, schema), read), schema
        ),
        ours,
        schema,
    )
    labels = table.labels
    keep = _holdout_rows(len(encoded))
    trained = TrainedModel(
        pipeline=pipeline,
        schema=schema,
        family=family_of(read.estimator),
        params=_params(read.estimator),
        seed=0,
        metrics=holdout_metrics(schema, labels, ours),
        reference=reference_for(schema, encoded, ours, labels),
        golden=golden_vectors(pipeline, schema, table.features, labels, seed=0),
        holdout_inputs=encoded[keep],
        holdout_labels=labels[keep],
        train_rows=len(encoded),
    )
    return Card(trained, agreement)


def _task(estimator: Any) -> tuple[Task, tuple[str, ...]]:
    """The task of the user's estimator and its classes as the schema holds them
    (docs/architecture.md §2)."""
    if is_regressor(estimator):
        return "regression", ()
    classes = [_text(c) for c in getattr(estimator, "classes_", [])]
    if len(classes) < 2 or None in classes or len(set(classes)) != len(classes):
        raise UnsupportedModelError(
            f"{type(estimator).__name__} has the classes {classes}; edgefleet registers "
            "classifiers of two or more distinct classes, and regressors"
        )
    texts = tuple(str(c) for c in classes)
    task: Task = "binary" if len(texts) == 2 else "multiclass"
    return task, texts


def _schema(read: ReadPipeline, loaded: LoadedModel, target: str) -> FeatureSchema:
    task, classes = _task(read.estimator)
    features: dict[str, Feature] = {}
    for block in read.blocks:
        for position, column in enumerate(block.columns):
            if block.kind == "onehot" or block.kind == "ordinal":
                vocabulary = block.vocabularies[position]
                features[column] = CategoricalFeature(column, vocabulary, block.allow_missing)
            elif column in loaded.text_columns:
                raise UnsupportedModelError(
                    f"the MLflow signature types {column!r} as a string, but the pipeline "
                    f"reads it as a number ({block.name!r})"
                )
            else:
                features[column] = NumericFeature(column, allow_missing=block.allow_missing)
    ordered = tuple(features[n] for n in read.used_names)
    outputs: Outputs = "decision" if gives_decision(read.estimator) else "probabilities"
    return FeatureSchema(ordered, target, classes, task=task, outputs=outputs)


def _as_fitted(model: Any, frame: pd.DataFrame, read: ReadPipeline) -> Any:
    """The reference columns as the user's model was fitted: a DataFrame, or an array for a
    model fitted on one (its names came from the MLflow signature)."""
    columns = frame[list(read.input_names)]
    first = model.steps[0][1] if type(model).__name__ == "Pipeline" else model
    named = hasattr(model, "feature_names_in_") or hasattr(first, "feature_names_in_")
    return columns if named else columns.to_numpy()


def _float32_values(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """The reference as a device sends it: every numeric feature rounded to float32."""
    rounded = frame.copy()
    for index in schema.numeric_indices():
        name = schema.features[index].name
        values = pd.to_numeric(rounded[name], errors="coerce").to_numpy(np.float64)
        rounded[name] = values.astype(np.float32).astype(np.float64)
    return rounded


def _user_outputs(model: Any, rows: Any, schema: FeatureSchema) -> npt.NDArray[np.float64]:
    """The user's model's answers in the model contract's shape ``[N, n_outputs]`` (a
    decision-function model's: the contract's map of its decision function)."""
    if schema.scores_only:
        return decision_outputs(model.decision_function(rows))
    if schema.is_classifier:
        return np.asarray(model.predict_proba(rows), np.float64)
    return np.asarray(model.predict(rows), np.float64).reshape(-1, 1)


def _agreement(
    user: npt.NDArray[Any],
    user_float32: npt.NDArray[Any],
    ours: npt.NDArray[Any],
    schema: FeatureSchema,
) -> Agreement:
    """A row agrees when the rebuilt pipeline gives the user's outputs for the row as the
    user holds it (float64) or as a device can send it (the contract's float32 values): a
    tree split can fall between a float64 value and its float32 rounding, where both
    answers are the user's model's. Probabilities agree within
    :data:`AGREEMENT_TOLERANCE`; a regressor's values within it times the mean |value|
    (at least 1), plus ``REGRESSION_RTOL`` of the value (``manifest.within_tolerance``)."""
    mine = np.asarray(ours, np.float64)
    tolerance = task_tolerance(schema.task, np.asarray(user), AGREEMENT_TOLERANCE)

    def rows_agree(theirs: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        agree = within_tolerance(
            mine, np.asarray(theirs, np.float64), task=schema.task, tolerance=tolerance
        )
        return np.asarray(agree.all(axis=1))

    agrees = rows_agree(user) | rows_agree(user_float32)
    diff = np.minimum(
        np.abs(np.asarray(user, np.float64) - mine).max(axis=1),
        np.abs(np.asarray(user_float32, np.float64) - mine).max(axis=1),
    )
    over = int((~agrees).sum())
    result = Agreement(float(diff.max(initial=0.0)), over, len(diff))
    if over > AGREEMENT_MAX_SHARE * len(diff):
        worst = int(np.where(agrees, -np.inf, diff).argmax())
        bound = f"{tolerance:.3g}" + (
            f" + {REGRESSION_RTOL:g} x |value|" if schema.task == "regression" else ""
        )
        raise UnsupportedModelError(
            f"edgefleet's reading of the pipeline differs from scikit-learn's on {over} of "
            f"{len(diff)} reference rows by more than {bound} (worst: "
            f"{diff[worst]:.3g} on row {worst + 1}); nothing was registered"
        )
    return result


def _holdout_rows(n: int) -> npt.NDArray[np.int64]:
    if n <= HOLDOUT_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, HOLDOUT_ROWS, replace=False))


def _params(estimator: Any) -> dict[str, Any]:
    """The estimator's plain parameters (JSON values only), as a trained version records."""
    plain = (bool, int, float, str, type(None))
    return {k: v for k, v in estimator.get_params(deep=False).items() if isinstance(v, plain)}


def _default_name(model: Any) -> str:
    if isinstance(model, str | Path):
        return Path(model).stem or "model"
    return "model"
