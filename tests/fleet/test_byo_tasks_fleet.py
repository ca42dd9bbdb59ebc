"""End to end beyond binary (issue 16's "Done when"): a user's multi-class pipeline in a
joblib file (registered with the CLI) and a regression pipeline in an MLflow sklearn folder
(registered from Python) export to every format, roll out over the secured Mosquitto broker
to enrolled agents, score there (in process and through the agent's local HTTP API, with
answers that fit the task and agree with the registered pipeline), take their outcomes, and
are monitored: every report reaches the store, checked against the registered version, and
the fleet's task metrics from the merged aggregates agree with scikit-learn's on the rows the
devices scored and the outcomes they were given (accuracy and log loss exactly, OvR AUROC
within its binning bound; MAE, RMSE and R² exactly)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

import edgefleet
from edgefleet.central.export import export_bundle
from edgefleet.central.monitor.ingest import Monitor
from edgefleet.central.monitor.measures import measure
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.publish import publish
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import model_outputs
from edgefleet.cli.cmd_monitor import registry_versions
from edgefleet.cli.main import main
from edgefleet.edge.agent.agent import Agent
from edgefleet.edge.agent.http import AgentHTTPServer
from edgefleet.edge.bundle import read_manifest
from edgefleet.edge.manifest import Manifest, within_tolerance
from edgefleet.edge.signing import load_private_key
from tests.byo import grid
from tests.fleet.kit import wait_for
from tests.fleet.secure import SecureFleet

FORMATS = ["onnx", "tflite", "web", "coreml"]
EXTRA_HTTP_RECORDS = 2  # scored by _score_over_http beyond its rows, to check refusals


@dataclass(frozen=True)
class Brought:
    name: str
    frame: pd.DataFrame
    bundle: Path
    home: Path


@pytest.fixture(scope="module")
def brought(
    keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Brought]:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    work = tmp_path_factory.mktemp("byo-tasks")
    home = work / "home"
    wine = grid.multiclass_sets()["wine"]
    joblib.dump(grid.fit(wine, "standard+onehot", grid.ESTIMATORS["rf"]()), work / "wine.joblib")
    wine.to_csv(work / "wine.csv", index=False)
    argv = ["--home", str(home), "register", str(work / "wine.joblib"), "--reference"]
    assert main([*argv, str(work / "wine.csv"), "--target", grid.TARGET, "--name", "wine"]) == 0
    diabetes = grid.regression_sets()["diabetes"]
    regressor = grid.fit(diabetes, "onehot-first+minmax", grid.REGRESSORS["ridge"]())
    features = diabetes.drop(columns=[grid.TARGET])
    mlflow.sklearn.save_model(
        regressor,
        str(work / "mlflow"),
        signature=infer_signature(features, regressor.predict(features)),
        serialization_format="cloudpickle",
    )
    edgefleet.register(
        work / "mlflow", reference=diabetes, target=grid.TARGET, name="diabetes", home=home
    )
    key = load_private_key(keypair[0])
    result = {}
    for name, frame in (("wine", wine), ("diabetes", diabetes)):
        version = Registry(home).get("1.0.0", name=name)
        out = work / f"bundle-{name}"
        export_bundle(version, FORMATS, out, key)
        result[name] = Brought(name, frame, out, home)
    return result


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {str(k): v for k, v in row.items()}
        for row in frame.drop(columns=[grid.TARGET]).to_dict("records")
    ]


def _post(port: int, path: str, document: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(document).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _expected(brought: Brought, manifest: Manifest, agent: Agent, frame: pd.DataFrame) -> Any:
    """The registered pipeline's outputs on the rows as a device encodes them."""
    version = Registry(brought.home).get(manifest.version, name=brought.name)
    assert agent.model is not None
    encoded = agent.model.scorer.encoder.encode(_records(frame))
    return model_outputs(version.load_pipeline(), manifest.schema, encoded)


def _check_answers(manifest: Manifest, answers: list[dict[str, Any]], expected: Any) -> None:
    schema = manifest.schema
    assert all(a["model_version"] == manifest.version for a in answers)
    if schema.task == "regression":
        assert all(set(a) == {"id", "value", "model_version"} for a in answers)
        got = np.array([[a["value"]] for a in answers])
    else:
        assert all(set(a) == {"id", "label", "probabilities", "model_version"} for a in answers)
        assert all(list(a["probabilities"]) == list(schema.classes) for a in answers)
        got = np.array([list(a["probabilities"].values()) for a in answers])
        labels = [schema.classes[k] for k in got.argmax(axis=1)]
        assert [a["label"] for a in answers] == labels
    agree = within_tolerance(got, expected, task=schema.task, tolerance=manifest.tolerance)
    assert agree.all(), f"{int((~agree).any(axis=1).sum())} rows disagree"


def _outcome(manifest: Manifest, value: Any) -> Any:
    return float(value) if manifest.schema.task == "regression" else str(value)


@pytest.mark.parametrize("name", ["wine", "diabetes"])
def test_a_brought_model_of_each_task_rolls_out_scores_and_is_monitored(
    name: str,
    secure_fleet: SecureFleet,
    brought: dict[str, Brought],
    keypair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    model = brought[name]
    manifest, _ = read_manifest(model.bundle)
    assert manifest.schema.task == ("multiclass" if name == "wine" else "regression")
    assert sorted(manifest.parity) == sorted(FORMATS)
    fleet = f"f{uuid.uuid4().hex[:8]}"
    publisher = secure_fleet.service(f"pub-{fleet}", "publisher", fleet=fleet)
    monitor_identity = secure_fleet.service(f"mon-{fleet}", "monitor", fleet=fleet)
    store = MonitorStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    agents = secure_fleet.agents(fleet, ["dev-a", "dev-b"], tmp_path)
    halves = [model.frame.iloc[::2], model.frame.iloc[1::2]]
    with Monitor(
        fleet,
        monitor_identity.address(),
        store,
        client_id=f"m-{fleet}",
        known_version=registry_versions(model.home),
    ) as monitor:
        for agent in agents:
            agent.start()
        try:
            publish(
                model.bundle,
                fleet,
                publisher.address(),
                load_private_key(keypair[0]),
                state_file=tmp_path / "r.json",
            )
            for agent in agents:
                wait_for(
                    lambda a=agent: a.model is not None,
                    60,
                    f"{manifest.label} on {agent.config.device_id}",
                )
            # Device a answers through its local HTTP API, device b in process.
            server = AgentHTTPServer(agents[0]).start()
            try:
                answered = _score_over_http(server.port, manifest, agents[0], model, halves[0])
            finally:
                server.stop()
            answered += _score_in_process(manifest, agents[1], model, halves[1])
            for agent in agents:
                assert agent.close_window() is not None
            assert monitor.wait_processed(len(agents), timeout=60)
        finally:
            for agent in agents:
                agent.stop(flush_timeout=5.0)
    aggregate = store.aggregate(fleet, model_version=manifest.version)
    assert aggregate is not None
    assert aggregate.scored == len(model.frame) + EXTRA_HTTP_RECORDS
    assert store.quarantine_count(fleet) == 0
    truth = pd.concat(halves)[grid.TARGET]
    _check_monitored(measure(aggregate, manifest, min_labels=10), manifest, answered, truth)
    store.close()


def _check_monitored(
    measures: Any, manifest: Manifest, answered: list[dict[str, Any]], truth: pd.Series
) -> None:
    """The fleet's task metrics, from the merged report sketches, against scikit-learn's on
    the answers the devices gave and the outcomes they were told."""
    task = measures.task
    assert task is not None
    assert task.task == manifest.schema.task
    assert task.labelled == len(truth)
    got = measures.metrics()
    if manifest.schema.task == "regression":
        values = np.array([a["value"] for a in answered])
        y = truth.to_numpy(np.float64)
        assert got["mae"] == pytest.approx(mean_absolute_error(y, values), rel=1e-9)
        assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, values)), rel=1e-9)
        assert got["r2"] == pytest.approx(r2_score(y, values), rel=1e-9, abs=1e-9)
        return
    classes = list(manifest.schema.classes)
    proba = np.array([[a["probabilities"][c] for c in classes] for a in answered])
    labels = truth.astype(str).map(classes.index).to_numpy()
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, proba.argmax(axis=1)))
    exact_log_loss = log_loss(labels, proba / proba.sum(axis=1, keepdims=True), labels=range(3))
    assert got["log_loss"] == pytest.approx(exact_log_loss, rel=1e-6)
    exact_auroc = roc_auc_score(labels, proba, multi_class="ovr", average="macro")
    assert abs(got["auroc_macro"] - exact_auroc) <= task.performance.auroc_bound + 1e-12


def _score_over_http(
    port: int, manifest: Manifest, agent: Agent, model: Brought, frame: pd.DataFrame
) -> list[dict[str, Any]]:
    """Score ``frame`` through the agent's local API and send every outcome; the answers."""
    status, body = _post(port, "/score", {"records": _records(frame)})
    assert status == 200, body
    _check_answers(manifest, body["predictions"], _expected(model, manifest, agent, frame))
    for answer, truth in zip(body["predictions"], frame[grid.TARGET], strict=True):
        status, reply = _post(
            port, "/outcome", {"id": answer["id"], "label": _outcome(manifest, truth)}
        )
        assert status == 200, reply
    status, _ = _post(port, "/score", {"record": _records(frame)[0]})
    assert status == 200
    wrong = "not-a-class" if manifest.schema.task == "multiclass" else "high"
    status, reply = _post(port, "/outcome", {"id": "x" * 32, "label": wrong})
    assert status == 404  # an unknown id first: nothing is counted for it
    status, single = _post(port, "/score", {"record": _records(frame)[0]})
    assert status == 200
    status, reply = _post(port, "/outcome", {"id": single["predictions"][0]["id"], "label": wrong})
    assert status == 400
    assert "label" in reply["error"] or "number" in reply["error"]
    answers: list[dict[str, Any]] = body["predictions"]
    return answers


def _score_in_process(
    manifest: Manifest, agent: Agent, model: Brought, frame: pd.DataFrame
) -> list[dict[str, Any]]:
    predictions = agent.score(_records(frame))
    answers = [p.to_dict() for p in predictions]
    _check_answers(manifest, answers, _expected(model, manifest, agent, frame))
    for prediction, truth in zip(predictions, frame[grid.TARGET], strict=True):
        agent.outcome(prediction.id, _outcome(manifest, truth))
    return answers
