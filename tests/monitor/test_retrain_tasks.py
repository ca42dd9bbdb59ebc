"""Retraining beyond binary (issue 16, docs/architecture.md §14): a multi-class or
regression model the user brought is refitted as its own pipeline (a clone of the registered
contract pipeline), measured on its holdout like scikit-learn measures the user's pipeline
refitted on the same rows, its training window chosen on the task's judging metric; and the
loop's retrain step, started by a task alert, registers and judges the candidate end to end
(real Mosquitto, real export)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import Pipeline

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.data.loader import TrainingTable, encode_features, load_training_table
from edgefleet.central.export import export_bundle
from edgefleet.central.monitor.alerts import AlertRules
from edgefleet.central.monitor.loop import RetrainLoop
from edgefleet.central.monitor.refit import clone_fitter, refitter, trained_by_edgefleet, weighable
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.monitor.windows import Window, choose_window, split
from edgefleet.central.pipeline import build_pipeline
from edgefleet.central.publish import publish, rollout_status, state_file_for
from edgefleet.central.registry import ModelVersion
from edgefleet.central.trainer import model_outputs
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.report import Report
from edgefleet.edge.signing import load_private_key, load_public_key
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.edge.topics import Topics
from edgefleet.errors import DataError
from tests.monitor import brought

TASKS = ("multiclass", "regression")


def table_of(version: ModelVersion, frame: pd.DataFrame) -> TrainingTable:
    return load_training_table(frame, brought.TARGET, schema=version.load_card().schema)


@pytest.mark.parametrize("task", TASKS)
def test_a_brought_model_is_refitted_as_the_users_pipeline(task: str, tmp_path: Path) -> None:
    version = brought.register(task, tmp_path)
    how = refitter(version, seed=0)
    assert (how.how, how.weighable) == ("clone", True)
    newest = brought.rows(task, 1200, seed=5, concept=1)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(newest))
    model = how.fit(Window("both", table_of(version, newest), weights))

    # The user's own pipeline, refitted on the same rows with the same weights.
    strata = newest[brought.TARGET] if task == "multiclass" else None
    train, test = train_test_split(
        np.arange(len(newest)), test_size=0.25, random_state=0, stratify=strata
    )
    features = newest.drop(columns=[brought.TARGET])
    user = clone(brought.user_pipeline(task)).fit(
        features.iloc[train],
        newest[brought.TARGET].iloc[train],
        model__sample_weight=weights[train],
    )
    truth = newest[brought.TARGET].iloc[test]
    ours = model_outputs(model.pipeline, model.schema, model.holdout_inputs)
    assert model.train_rows == len(train)
    if task == "multiclass":
        theirs = user.predict_proba(features.iloc[test])
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
        assert model.metrics["accuracy"] == accuracy_score(truth, user.predict(features.iloc[test]))
        expected = log_loss(truth, theirs, labels=brought.CLASSES)
        assert model.metrics["log_loss"] == pytest.approx(expected, rel=1e-5)
        assert model.reference.prediction is not None
        assert sum(model.reference.prediction.counts) == len(test)
    else:
        theirs = user.predict(features.iloc[test])
        np.testing.assert_allclose(ours[:, 0], theirs, rtol=1e-6)
        assert model.metrics["mae"] == pytest.approx(mean_absolute_error(truth, theirs), rel=1e-6)
        assert model.metrics["r2"] == pytest.approx(r2_score(truth, theirs), rel=1e-6)
    assert len(model.golden[0].probabilities) == (3 if task == "multiclass" else 1)


@pytest.mark.parametrize("task", TASKS)
def test_the_window_is_chosen_on_the_task_metric(task: str, tmp_path: Path) -> None:
    version = brought.register(task, tmp_path)
    how = refitter(version, seed=0)
    newest = table_of(version, brought.rows(task, 1200, seed=5, concept=1))
    reference = table_of(version, brought.rows(task, 1500, seed=9, concept=0))
    training = split(newest, 0.25, 0)[0]
    choice = choose_window(training, reference, how.fit, metric="auroc")
    assert choice.metric == ("log_loss" if task == "multiclass" else "rmse")
    assert choice.chosen == "newest"  # the concept changed: the old rows mislead
    assert choice.scores["newest"] < choice.scores["both"] < choice.scores["reference"]
    assert choice.validation_rows == 300
    # The score is scikit-learn's metric of the window's model on the validation rows.
    fitting, validation = split(training, 1 / 3, 0)
    fitted = how.fit(Window("newest", fitting)).pipeline
    outputs = model_outputs(
        fitted, validation.schema, encode_features(validation.features, validation.schema)
    )
    if task == "multiclass":
        expected = log_loss(validation.labels, outputs, labels=range(3))
    else:
        expected = math.sqrt(float(np.mean((validation.labels - outputs[:, 0]) ** 2)))
    assert choice.scores["newest"] == pytest.approx(expected, rel=1e-9)


def test_an_estimator_without_sample_weights_cannot_weigh_the_both_window(
    tmp_path: Path,
) -> None:
    version = brought.register("regression", tmp_path)
    pipeline = Pipeline(
        [("prep", version.load_pipeline().steps[0][1]), ("knn", KNeighborsRegressor())]
    )
    assert not weighable(pipeline)
    fit = clone_fitter(pipeline, "knn", {}, 0)
    newest = table_of(version, brought.rows("regression", 600, seed=5))
    reference = table_of(version, brought.rows("regression", 600, seed=9))
    choice = choose_window(newest, reference, fit, weighable=False)
    assert set(choice.scores) == {"newest", "reference"}
    assert "takes no sample weights" in choice.to_dict()["note"]


def test_only_a_binary_model_edgefleet_trained_goes_back_to_its_trainer(tmp_path: Path) -> None:
    version = brought.register("multiclass", tmp_path)
    schema = version.load_card().schema
    binary = replace(schema, classes=("no", "yes"), task="binary")
    assert trained_by_edgefleet("logreg", build_pipeline(binary, "logreg")[0])
    assert not trained_by_edgefleet("logreg", version.load_pipeline())  # a contract pipeline


def test_a_window_missing_a_class_is_refused(tmp_path: Path) -> None:
    version = brought.register("multiclass", tmp_path)
    frame = brought.rows("multiclass", 900, seed=5)
    two = frame[frame[brought.TARGET] != "mid"].reset_index(drop=True)
    with pytest.raises(DataError, match="holds 2 of the model's 3 classes"):
        refitter(version, 0).fit(Window("newest", table_of(version, two)))


# ---------------------------------------------------------------- the loop, end to end


def drifted_reports(
    manifest: Manifest, version: ModelVersion, fleet: str
) -> list[tuple[str, bytes]]:
    """Two devices' reports of rows of the new concept, every label back."""
    task = manifest.schema.task
    items = []
    for device in range(2):
        frame = brought.rows(task, 400, seed=60 + device, concept=1)
        table = load_training_table(frame, brought.TARGET, schema=manifest.schema)
        inputs = encode_features(table.features, manifest.schema)
        outputs = model_outputs(version.load_pipeline(), manifest.schema, inputs)
        if task == "regression":
            outputs = outputs[:, 0]
        builder = SketchBuilder.from_manifest(manifest)
        builder.add(inputs, outputs.astype(np.float32), 0.001)
        builder.add_outcomes(outputs.astype(np.float32), table.labels)
        report = Report.from_body(
            builder.roll(),
            fleet=fleet,
            device_id=f"d{device}",
            sequence=1,
            cohort="stable",
            device_group="default",
        )
        items.append((Topics(fleet).report(f"d{device}"), report.encode()))
    return items


def new_concept_multiclass() -> pd.DataFrame:
    return brought.rows("multiclass", 1500, seed=70, concept=1)


def honest_regression() -> pd.DataFrame:
    return brought.rows("regression", 600, seed=71, concept=0)


def garbage_regression() -> pd.DataFrame:
    """The training feed's targets shuffled: judged on honest rows, no candidate helps."""
    frame = brought.rows("regression", 1500, seed=70, concept=1)
    frame[brought.TARGET] = np.random.default_rng(0).permutation(frame[brought.TARGET].to_numpy())
    return frame


@pytest.mark.parametrize(
    ("task", "source", "actions", "alert"),
    [
        (
            "multiclass",
            new_concept_multiclass,
            ["check", "retrained", "accepted", "canary"],
            "accuracy_drop",
        ),
        (
            "regression",
            garbage_regression,
            ["check", "retrained", "rejected", "escalated"],
            "error_rise",
        ),
    ],
)
def test_a_task_alert_retrains_a_brought_model_through_the_loop(
    task: str,
    source: object,
    actions: list[str],
    alert: str,
    tmp_path: Path,
    keypair: tuple[Path, Path],
    broker: MosquittoBroker,
    unique: str,
) -> None:
    home = tmp_path / "home"
    key = load_private_key(keypair[0])
    version = brought.register(task, home)
    bundle = export_bundle(version, ["onnx"], home / "bundles" / f"{task}-1.0.0", key).bundle
    publish(bundle, unique, broker.address, key, state_file=state_file_for(home, unique))
    store = MonitorStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    manifest = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
    assert store.ingest_many(drifted_reports(manifest, version, unique)).stored == 2
    loop = RetrainLoop(
        unique,
        home,
        store,
        broker.address,
        key,
        source,  # type: ignore[arg-type]
        compare_source=None if task == "multiclass" else honest_regression,
        formats=["onnx"],
        rules=AlertRules(min_labels=100),
        resamples=200,
        window_seconds=3600.0,
        canary_percent=50,
    )
    result = loop.step()
    decisions = store.decisions(unique)
    assert [d.action for d in decisions] == actions, result.message
    check, retrained, judged = decisions[:3]
    assert alert in {a["rule"] for a in check.evidence["alerts"]}
    assert retrained.model_version == judged.model_version == "1.1.0"
    assert retrained.evidence["task"] == task
    assert retrained.evidence["refit"] == "clone"
    assert retrained.evidence["window"]["chosen"] == "newest"
    metric = "log_loss" if task == "multiclass" else "rmse"
    assert judged.evidence["benefit"]["metric"] == metric
    assert set(loop.registry.get("1.1.0", task).metrics) >= {metric}
    state = rollout_status(unique, broker.address, [load_public_key(keypair[1])])
    assert state is not None
    if task == "multiclass":
        assert result.action == "canary"
        assert judged.evidence["benefit"]["gain"]["low"] > 0
        assert state.canary is not None
        assert state.canary.version == "1.1.0"
    else:
        assert result.action == "escalated"
        assert judged.evidence["benefit"]["gain"]["high"] < 0  # worse, with confidence
        assert state.canary is None
    store.close()
