"""``edgefleet stream score`` per task (docs/architecture.md §13), against the real
Mosquitto: a brought regressor's events upserted with its value and no label, a brought
multi-class model's (scored by a fleet member's agent) with its class and every class's
probability, each equal to the user's own pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.predictions import PredictionStore
from edgefleet.central.stream.consumer import (
    AgentScoring,
    BundleScoring,
    Scoring,
    StreamConsumer,
    StreamSettings,
)
from edgefleet.central.stream.sink import StreamTable
from edgefleet.edge.mqtt import MqttClient
from edgefleet.edge.scorer import Scorer
from tests.fleet.kit import wait_for
from tests.monitor import brought
from tests.serving.conftest import task_records
from tests.stream.test_stream import publish_all

COUNT = 30


def _consume(
    broker: MosquittoBroker, scoring: Scoring, unique: str, db: str, task: str
) -> dict[str, Any]:
    """Publish COUNT records of ``task`` and return the table's row of each key."""
    frame = task_records(task, COUNT)
    items = [{**r, "customer_id": f"C-{i}"} for i, r in enumerate(frame.to_dict("records"))]
    table = StreamTable(db, "scores")
    client = MqttClient(broker.address, f"stream-{unique}", manual_ack=True)
    consumer = StreamConsumer(
        client, f"$share/g{unique}/in/{unique}", scoring, table, StreamSettings(key="customer_id")
    )
    consumer.start()
    client.connect()
    try:
        publish_all(broker, f"in/{unique}", items, f"p-{unique}")
        wait_for(lambda: table.count() == COUNT, what=f"{COUNT} rows")
    finally:
        consumer.stop()
        client.disconnect()
        table.close()
    with PredictionStore(db, "scores", create=False) as store:
        return {"frame": frame, "rows": [store.get(f"C-{i}") for i in range(COUNT)]}


def test_a_regressor_streams_its_value(
    broker: MosquittoBroker,
    task_bundles: dict[str, tuple[Path, Any]],
    keypair: tuple[Path, Path],
    unique: str,
    tmp_path: Path,
) -> None:
    bundle, user = task_bundles["regression"]
    scoring = BundleScoring(Scorer.from_bundle(bundle, keypair[1]))
    got = _consume(broker, scoring, unique, f"sqlite:///{tmp_path / 'ops.db'}", "regression")
    expected = user.predict(got["frame"])
    assert all(row.label is None for row in got["rows"])
    np.testing.assert_allclose([row.score for row in got["rows"]], expected, rtol=1e-4)
    assert got["rows"][0].to_json()["value"] == got["rows"][0].score
    assert "label" not in got["rows"][0].to_json()


def test_a_fleet_member_streams_a_multiclass_model(
    broker: MosquittoBroker,
    task_bundles: dict[str, tuple[Path, Any]],
    keypair: tuple[Path, Path],
    unique: str,
    tmp_path: Path,
) -> None:
    from edgefleet.central.publish import publish
    from edgefleet.edge.agent.agent import Agent
    from edgefleet.edge.signing import load_private_key
    from tests.fleet.kit import agent_config

    bundle, user = task_bundles["multiclass"]
    key = load_private_key(keypair[0])
    publish(bundle, unique, broker.address, key, state_file=tmp_path / "r.json")
    agent = Agent(agent_config(broker, keypair, unique, "stream-1", tmp_path / "member"))
    agent.start()
    try:
        db = f"sqlite:///{tmp_path / 'ops.db'}"
        got = _consume(broker, AgentScoring(agent), unique, db, "multiclass")
    finally:
        agent.stop(flush_timeout=2.0)
    expected = user.predict_proba(got["frame"])
    rows = got["rows"]
    np.testing.assert_allclose([row.probabilities for row in rows], expected, atol=1e-5)
    assert [row.label for row in rows] == list(brought.CLASSES[expected.argmax(axis=1)])
    np.testing.assert_allclose([row.score for row in rows], expected.max(axis=1), atol=1e-5)
