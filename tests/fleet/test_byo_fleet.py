"""End to end with models users bring: a joblib pipeline and an MLflow sklearn folder
register, export to every format, roll out to real agents over the secured Mosquitto broker
(1.0.0, then 1.1.0 as an update), score, receive labels, and are monitored: the monitor
checks every report against the registered version and its AUROC from the aggregates agrees
with scikit-learn's on the same rows within the stated binning bound."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import edgefleet
from edgefleet.central.export import export_bundle
from edgefleet.central.monitor.ingest import Monitor
from edgefleet.central.monitor.measures import measure
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.publish import publish
from edgefleet.central.registry import Registry
from edgefleet.cli.cmd_monitor import registry_versions
from edgefleet.cli.main import main
from edgefleet.edge.agent.agent import Agent
from edgefleet.edge.bundle import read_manifest
from edgefleet.edge.signing import load_private_key
from tests.byo import grid
from tests.fleet.kit import wait_for
from tests.fleet.secure import SecureFleet

FORMATS = ["onnx", "tflite", "web", "coreml"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return grid.binary_sets()["wine"]


@pytest.fixture(scope="module")
def home_and_bundles(
    frame: pd.DataFrame, keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Path]]:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    work = tmp_path_factory.mktemp("byo-fleet")
    home = work / "home"
    joblib.dump(grid.fit(frame, "standard+onehot", grid.ESTIMATORS["rf"]()), work / "wine.joblib")
    frame.to_csv(work / "reference.csv", index=False)
    argv = ["--home", str(home), "register", str(work / "wine.joblib"), "--reference"]
    assert main([*argv, str(work / "reference.csv"), "--target", grid.TARGET]) == 0
    features = frame.drop(columns=[grid.TARGET])
    second = grid.fit(frame, "onehot-first+minmax", grid.ESTIMATORS["logreg"]())
    mlflow.sklearn.save_model(
        second,
        str(work / "mlflow"),
        signature=infer_signature(features, second.predict(features)),
        serialization_format="cloudpickle",
    )
    edgefleet.register(work / "mlflow", reference=frame, target=grid.TARGET, name="wine", home=home)
    bundles = []
    for version in Registry(home).versions("wine"):
        out = work / f"bundle-{version.version}"
        export_bundle(version, FORMATS, out, load_private_key(keypair[0]))
        bundles.append(out)
    return home, bundles


def _serve_rows(agent: Agent, frame: pd.DataFrame) -> list[float]:
    records: list[dict[str, Any]] = [
        {str(k): v for k, v in row.items()}
        for row in frame.drop(columns=[grid.TARGET]).to_dict("records")
    ]
    predictions = agent.score(records)
    for prediction, label in zip(predictions, frame[grid.TARGET], strict=True):
        agent.outcome(prediction.id, str(label))
    return [p.probability for p in predictions]


def test_brought_models_roll_out_and_are_monitored(
    secure_fleet: SecureFleet,
    home_and_bundles: tuple[Path, list[Path]],
    frame: pd.DataFrame,
    keypair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    home, bundles = home_and_bundles
    for bundle in bundles:
        manifest, _ = read_manifest(bundle)
        assert sorted(manifest.parity) == sorted(FORMATS)
    fleet = f"f{uuid.uuid4().hex[:8]}"
    publisher = secure_fleet.service(f"pub-{fleet}", "publisher", fleet=fleet)
    monitor_identity = secure_fleet.service(f"mon-{fleet}", "monitor", fleet=fleet)
    store = MonitorStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    agents = secure_fleet.agents(fleet, ["dev-a", "dev-b"], tmp_path)
    halves = [frame.iloc[::2], frame.iloc[1::2]]
    key = load_private_key(keypair[0])
    with Monitor(
        fleet,
        monitor_identity.address(),
        store,
        client_id=f"m-{fleet}",
        known_version=registry_versions(home),
    ) as monitor:
        for agent in agents:
            agent.start()
        try:
            stored = 0
            for bundle in bundles:
                manifest, _ = read_manifest(bundle)
                publish(bundle, fleet, publisher.address(), key, state_file=tmp_path / "r.json")
                for agent in agents:
                    wait_for(
                        lambda a=agent, v=manifest.version: (
                            a.model is not None and a.model.scorer.manifest.version == v
                        ),
                        60,
                        f"{manifest.version} on {agent.config.device_id}",
                    )
                scores = [
                    _serve_rows(agent, half) for agent, half in zip(agents, halves, strict=True)
                ]
                for agent in agents:
                    assert agent.close_window() is not None
                stored += len(agents)
                assert monitor.wait_processed(stored, timeout=60)
                _check_measures(store, fleet, manifest, halves, scores)
        finally:
            for agent in agents:
                agent.stop(flush_timeout=5.0)
    assert store.quarantine_count(fleet) == 0
    store.close()


def _check_measures(
    store: MonitorStore,
    fleet: str,
    manifest: Any,
    halves: list[pd.DataFrame],
    scores: list[list[float]],
) -> None:
    aggregate = store.aggregate(fleet, model_version=manifest.version)
    assert aggregate is not None
    measures = measure(aggregate, manifest, min_labels=10)
    assert measures.scored == sum(len(h) for h in halves)
    performance = measures.performance
    assert performance is not None
    labels = pd.concat(halves)[grid.TARGET].to_numpy() == manifest.schema.classes[1]
    exact = roc_auc_score(labels, [s for half in scores for s in half])
    assert abs(performance.auroc - exact) <= performance.auroc_bound + 1e-12
