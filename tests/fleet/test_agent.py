"""The edge agent against a real Mosquitto and real signed bundles."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.publish import promote, publish
from edgefleet.central.trainer import TrainedModel
from edgefleet.edge.agent.agent import Agent
from edgefleet.edge.agent.http import AgentHTTPServer
from edgefleet.edge.agent.lifecycle import State, Target, UpdateRecord
from edgefleet.edge.signing import load_private_key
from tests.fleet.kit import agent_config, collecting, export_versions, running, wait_for


@pytest.fixture(scope="module")
def bundles(
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> list[Path]:
    return export_versions(trained, keypair, tmp_path_factory.mktemp("agent-home"))


def _records(bundle_golden: Path, count: int = 5) -> list[dict[str, Any]]:
    manifest = json.loads((bundle_golden / "manifest.json").read_text())
    return [g["record"] for g in manifest["golden"][:count]]


def test_agent_installs_scores_and_reports(
    broker: MosquittoBroker, bundles: list[Path], keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    fleet = f"f{uuid.uuid4().hex[:8]}"
    key = load_private_key(keypair[0])
    publish(bundles[0], fleet, broker.address, key, state_file=tmp_path / "rollout.json")
    with (
        collecting(broker, fleet, f"collector-{fleet}") as collector,
        running(agent_config(broker, keypair, fleet, "dev-1", tmp_path / "dev-1")) as agent,
    ):
        wait_for(lambda: agent.model is not None, what="the first model to install")
        assert agent.model is not None
        assert agent.model.scorer.manifest.version == "1.0.0"
        predictions = agent.score(_records(bundles[0]))
        assert len(predictions) == 5
        assert all(0.0 <= p.probability <= 1.0 for p in predictions)
        agent.outcome(predictions[0].id, "Yes")
        assert agent.close_window() == 1
        wait_for(lambda: collector.unique == 1, what="the report")
        report = collector.reports[0]
        assert (report.device_id, report.sequence, report.model_version) == ("dev-1", 1, "1.0.0")
        assert report.scored == 5
        assert report.outcomes.labelled == 1
        assert report.cohort == "stable"

        # A canary for every device (100 %), then promotion.
        publish(
            bundles[1],
            fleet,
            broker.address,
            key,
            canary_percent=100,
            state_file=tmp_path / "rollout.json",
        )
        wait_for(lambda: agent.status()["model_version"] == "1.1.0", what="the canary")
        assert agent.status()["cohort"] == "canary"
        promote(fleet, broker.address, key, state_file=tmp_path / "rollout.json")
        wait_for(lambda: agent.status()["cohort"] == "stable", what="the promotion")
        assert agent.status()["model_version"] == "1.1.0"
        assert agent.status()["update_state"] == "idle"
        assert agent.status()["problem"] is None


def test_local_http_api(
    broker: MosquittoBroker, bundles: list[Path], keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    fleet = f"f{uuid.uuid4().hex[:8]}"
    with running(agent_config(broker, keypair, fleet, "dev-http", tmp_path / "d")) as agent:
        server = AgentHTTPServer(agent).start()
        try:
            health = _call(server.url + "/health")
            assert health[0] == 503  # nothing published yet
            publish(
                bundles[0],
                fleet,
                broker.address,
                load_private_key(keypair[0]),
                state_file=tmp_path / "rollout.json",
            )
            wait_for(lambda: _call(server.url + "/health")[0] == 200, what="health 200")
            status, body = _call(server.url + "/score", {"records": _records(bundles[0], 3)})
            assert status == 200
            assert len(body["predictions"]) == 3
            first = body["predictions"][0]
            assert _call(server.url + "/outcome", {"id": first["id"], "label": 1})[0] == 200
            assert _call(server.url + "/outcome", {"id": "nope", "label": 1})[0] == 404
            bad = dict(_records(bundles[0], 1)[0], tenure_months="ten")
            status, body = _call(server.url + "/score", {"record": bad})
            assert status == 400
            assert "field 'tenure_months': expected a number" in body["error"]
            assert _call(server.url + "/score", {"wrong": 1})[0] == 400
        finally:
            server.stop()


def _call(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_interrupted_download_waits_for_the_broker_after_restart(
    own_broker: MosquittoBroker, bundles: list[Path], keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    """Regression: an update resumed at start-up ran before the connection was up, failed
    with "not connected", and was abandoned for good."""
    fleet = f"f{uuid.uuid4().hex[:8]}"
    key = load_private_key(keypair[0])
    state_dir = tmp_path / "dev"
    config = agent_config(own_broker, keypair, fleet, "dev-resume", state_dir)
    publish(bundles[0], fleet, own_broker.address, key, state_file=tmp_path / "rollout.json")
    with running(config) as agent:
        wait_for(lambda: agent.model is not None, what="1.0.0 installed")
    second = publish(
        bundles[1], fleet, own_broker.address, key, state_file=tmp_path / "rollout.json"
    )
    ref = second.model
    # What a process killed during the download of 1.1.0 leaves on disk.
    record = UpdateRecord(
        state=State.DOWNLOAD,
        attempts=1,
        target=Target(
            name=ref.name,
            version=ref.version,
            format="onnx",
            manifest_sha256=ref.manifest_sha256,
            signature_sha256=ref.signature_sha256,
            artifact_sha256=ref.artifacts["onnx"],
            rollout_sequence=second.state.sequence,
        ),
    )
    (state_dir / "update.json").write_bytes(record.to_json())
    own_broker.stop()  # the device restarts while the broker is away
    agent = Agent(config)
    agent.start()
    try:
        time.sleep(1.5)
        own_broker.start()
        wait_for(lambda: agent.status()["model_version"] == "1.1.0", 30, "the resumed 1.1.0")
        assert agent.status()["problem"] is None
    finally:
        agent.stop(flush_timeout=1.0)
