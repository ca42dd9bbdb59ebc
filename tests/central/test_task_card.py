"""A model's card per task (docs/architecture.md §2): holdout metrics equal to
scikit-learn's, golden vectors of ``n_outputs`` values covering every class, the reference
profile's prediction histogram; and a user's multi-class pipeline registered end to end."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from edgefleet.central.byo.register import register_model
from edgefleet.central.data.loader import load_training_table
from edgefleet.central.metrics import holdout_metrics
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import golden_vectors, model_outputs, reference_for
from edgefleet.cli.main import main
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.profile import CategoricalProfile, NumericProfile, ReferenceProfile
from edgefleet.edge.schema import FeatureSchema, NumericFeature
from edgefleet.errors import DataError
from tests.byo import grid


def _iris() -> tuple[pd.DataFrame, pd.Series]:
    iris = load_iris(as_frame=True)
    frame = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    return frame, iris.target.map(dict(enumerate(iris.target_names)))


def _diabetes() -> tuple[pd.DataFrame, pd.Series]:
    data = load_diabetes(as_frame=True)
    return data.data, data.target


def test_multiclass_metrics_are_scikit_learns() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    proba = rng.dirichlet(np.ones(4), 500)
    schema = FeatureSchema((NumericFeature("x"),), "y", ("a", "b", "c", "d"), task="multiclass")
    metrics = holdout_metrics(schema, labels, proba)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, proba.argmax(axis=1)))
    assert metrics["log_loss"] == pytest.approx(log_loss(labels, proba))
    assert metrics["auroc_macro"] == pytest.approx(
        roc_auc_score(labels, proba, multi_class="ovr", average="macro")
    )
    assert metrics["auroc_weighted"] == pytest.approx(
        roc_auc_score(labels, proba, multi_class="ovr", average="weighted")
    )
    assert metrics["rows"] == 500


def test_regression_metrics_are_scikit_learns() -> None:
    rng = np.random.default_rng(1)
    targets = rng.normal(100, 30, 400)
    values = targets + rng.normal(0, 10, 400)
    schema = FeatureSchema((NumericFeature("x"),), "y", (), task="regression")
    metrics = holdout_metrics(schema, targets, values.reshape(-1, 1))
    assert metrics["mae"] == pytest.approx(mean_absolute_error(targets, values))
    assert metrics["rmse"] == pytest.approx(np.sqrt(mean_squared_error(targets, values)))
    assert metrics["r2"] == pytest.approx(r2_score(targets, values))
    constant = holdout_metrics(schema, np.full(10, 3.0), np.full((10, 1), 3.5))
    assert "r2" not in constant  # undefined for a constant target: left out, never NaN
    assert constant["mae"] == pytest.approx(0.5)


def _schema_of(
    frame: pd.DataFrame, target: str, task: str, classes: tuple[str, ...]
) -> FeatureSchema:
    features = tuple(NumericFeature(str(c)) for c in frame.columns)
    return FeatureSchema(features, target, classes, task=task)  # type: ignore[arg-type]


def test_regression_card_parts() -> None:
    frame, target = _diabetes()
    schema = _schema_of(frame, "progression", "regression", ())
    table = load_training_table(frame.assign(progression=target), "progression", schema=schema)
    assert table.labels.dtype == np.float64
    inputs = frame.to_numpy(np.float32)
    pipeline = make_pipeline(StandardScaler(), Ridge()).fit(inputs, table.labels)
    outputs = model_outputs(pipeline, schema, inputs)
    assert outputs.shape == (len(frame), 1)
    golden = golden_vectors(pipeline, schema, table.features, table.labels, seed=0)
    assert all(len(g.probabilities) == 1 for g in golden)
    rows = np.array([g.input_values() for g in golden], dtype=np.float32)
    assert np.allclose([g.probabilities[0] for g in golden], pipeline.predict(rows))
    reference = reference_for(schema, inputs, outputs, table.labels)
    assert isinstance(reference.prediction, NumericProfile)
    assert sum(reference.prediction.counts) == len(frame)
    assert reference.prediction.minimum == pytest.approx(outputs.min())
    assert sum(reference.scores.counts) == 0  # no probabilities to histogram
    again = ReferenceProfile.from_dict(json.loads(json.dumps(reference.to_dict())))
    assert again == reference


def test_targets_that_do_not_fit_the_task_are_refused() -> None:
    frame, target = _diabetes()
    schema = _schema_of(frame, "progression", "regression", ())
    text = target.astype(object)
    text.iloc[7] = "high"
    with pytest.raises(DataError, match=r"finite numbers; row 8 holds 'high'"):
        load_training_table(frame.assign(progression=text), "progression", schema=schema)
    iris, species = _iris()
    multi = _schema_of(iris, "species", "multiclass", ("setosa", "versicolor", "virginica"))
    species = species.astype(object)
    species.iloc[3] = "daisy"
    with pytest.raises(DataError, match=r"holds 'daisy', which the model's classes"):
        load_training_table(iris.assign(species=species), "species", schema=multi)


@pytest.mark.parametrize(
    "estimator",
    [LogisticRegression(max_iter=1000), RandomForestClassifier(n_estimators=15, random_state=0)],
    ids=["logreg", "forest"],
)
def test_register_a_users_multiclass_pipeline(estimator: object, tmp_path: Path) -> None:
    frame, species = _iris()
    user = make_pipeline(StandardScaler(), estimator).fit(frame, species)
    registered = register_model(user, frame.assign(species=species), "species", home=tmp_path)
    schema = registered.model.schema
    assert schema.task == "multiclass"
    assert schema.classes == ("setosa", "versicolor", "virginica")
    metrics = registered.version.metrics
    # The metrics are the registered (rebuilt) pipeline's on the contract's float32 inputs:
    # iris values sit on the forest's splits, where float64 and float32 answer differently
    # (docs/architecture.md §4; registration accepts either answer).
    rebuilt = registered.model.pipeline.predict_proba(
        frame[list(schema.names)].to_numpy(np.float32)
    )
    proba = rebuilt
    labels = species.map({c: i for i, c in enumerate(schema.classes)}).to_numpy()
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, proba.argmax(axis=1)))
    assert metrics["log_loss"] == pytest.approx(log_loss(labels, proba), rel=1e-4)
    assert metrics["auroc_macro"] == pytest.approx(
        roc_auc_score(labels, proba, multi_class="ovr"), abs=1e-6
    )
    golden = registered.model.golden
    assert all(len(g.probabilities) == 3 for g in golden)
    covered = {int(np.argmax(g.probabilities)) for g in golden if g.note.startswith("holdout")}
    assert covered == {0, 1, 2}
    reference = registered.model.reference
    assert isinstance(reference.prediction, CategoricalProfile)
    assert sum(reference.prediction.counts) == len(frame)
    manifest = Registry(tmp_path).get(registered.version.version).manifest()
    again = Manifest.from_bytes(manifest.to_bytes())
    assert again.schema.task == "multiclass"
    assert again.reference.prediction == reference.prediction
    assert json.loads(manifest.to_bytes())["schema"]["task"] == "multiclass"


def test_the_cli_registers_a_regressor_and_lists_its_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = grid.regression_sets()["diabetes"]
    joblib.dump(
        grid.fit(frame, "standard+onehot", grid.REGRESSORS["ridge"]()), tmp_path / "m.joblib"
    )
    frame.to_csv(tmp_path / "reference.csv", index=False)
    home = ["--home", str(tmp_path / "home")]
    reference = ["--reference", str(tmp_path / "reference.csv"), "--target", grid.TARGET]
    assert main([*home, "register", str(tmp_path / "m.joblib"), *reference]) == 0
    said = capsys.readouterr().err
    assert f"a value of {grid.TARGET!r} (regression)" in said
    assert "rmse" in said
    assert main([*home, "models"]) == 0
    listing = capsys.readouterr().out
    assert "(regression: mae " in listing
