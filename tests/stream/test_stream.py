"""``edgefleet stream score`` against a real Mosquitto and a real database (SQLite and
PostgreSQL): every event upserted once by key, across a consumer SIGKILL mid-batch, and
split between consumers of one shared subscription."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.stream.consumer import BundleScoring, StreamConsumer, StreamSettings
from edgefleet.central.stream.sink import StreamTable
from edgefleet.edge.mqtt import MqttClient
from edgefleet.edge.scorer import Scorer
from tests.fleet.kit import Record, wait_for
from tests.serving.conftest import golden_records

REPO = Path(__file__).resolve().parents[2]


def events(bundle: Path, count: int, start: int = 0) -> list[dict[str, Any]]:
    records = golden_records(bundle, 20)
    return [
        {**records[i % len(records)], "customer_id": f"C-{i}"} for i in range(start, start + count)
    ]


def publish_all(broker: MosquittoBroker, topic: str, items: list[Any], client_id: str) -> None:
    with MqttClient(broker.address, client_id, clean_start=True, max_pending=500) as client:
        for item in items:
            client.publish(topic, json.dumps(item).encode(), qos=1)
        client.flush(timeout=120)


def consumer_command(
    bundle: Path, key: Path, broker: MosquittoBroker, topic: str, db: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edgefleet.cli.main",
        "stream",
        "score",
        str(bundle),
        "--trust-key",
        str(key),
        "--source",
        f"{broker.url}/{topic}",
        "--db",
        db,
        "--table",
        "churn_scores",
        "--key",
        "customer_id",
        "--consumer",
        "only",
        "--group",
        f"g{topic}",
        "--batch-size",
        "50",
    ]


def start_consumer(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, stderr=log.open("ab"), stdout=subprocess.DEVNULL, env=env)
    wait_for(
        lambda: "consuming" in log.read_text() or process.poll() is not None,
        what="the consumer to subscribe",
    )
    assert process.poll() is None, log.read_text()
    return process


def test_consumer_sigkill_mid_batch_loses_and_doubles_nothing(
    broker: MosquittoBroker,
    service_bundles: list[Path],
    keypair: tuple[Path, Path],
    db_url: str,
    unique: str,
    tmp_path: Path,
    record_counts: Record,
) -> None:
    bundle, total = service_bundles[0], 3000
    table = StreamTable(db_url, "churn_scores")
    command = consumer_command(bundle, keypair[1], broker, unique, db_url)
    log = tmp_path / "consumer.log"
    consumer = start_consumer(command, log)
    sender = threading.Thread(
        target=publish_all, args=(broker, unique, events(bundle, total), f"pub-{unique}")
    )
    sender.start()
    try:
        wait_for(lambda: table.count() >= 200, what="rows before the kill")
        consumer.send_signal(signal.SIGKILL)  # between, or in the middle of, micro-batches
        consumer.wait(timeout=30)
        killed_at = table.count()
        assert killed_at < total, "the stream finished before the kill: send more events"
        sender.join(timeout=120)
        consumer = start_consumer(command, log)  # the same consumer name: its session
        wait_for(lambda: table.count() >= total, timeout=120, what=f"{total} rows")
    finally:
        consumer.kill()
        consumer.wait(timeout=30)
    with table.engine.connect() as connection:
        rows = connection.execute(select(table.store.table)).all()
        rejected = connection.execute(select(func.count()).select_from(table.rejected)).scalar_one()
    keys = [row.key for row in rows]
    expected = {f"C-{i}" for i in range(total)}
    missing, doubled = len(expected - set(keys)), len(keys) - len(set(keys))
    record_counts(
        "stream consumer SIGKILL mid-batch",
        sent=total,
        rows=len(keys),
        killed_at=killed_at,
        missing=missing,
        doubled=doubled,
    )
    assert (missing, doubled, len(keys), rejected) == (0, 0, total, 0)
    scorer = Scorer.from_bundle(bundle, keypair[1])
    truth = dict(
        zip(
            [f"C-{i}" for i in range(20)], scorer.positive(events(bundle, 20)).tolist(), strict=True
        )
    )
    for row in rows:
        if row.key in truth:
            assert row.score == pytest.approx(truth[row.key], abs=1e-6)
            assert row.version == "1.0.0"
    table.close()


def test_consumers_share_a_topic_and_bad_events_are_rejected(
    broker: MosquittoBroker,
    service_bundles: list[Path],
    keypair: tuple[Path, Path],
    unique: str,
    tmp_path: Path,
) -> None:
    bundle = service_bundles[0]
    table = StreamTable(f"sqlite:///{tmp_path / 'ops.db'}", "scores")
    scoring = BundleScoring(Scorer.from_bundle(bundle, keypair[1]))
    consumers = []
    for name in ("a", "b"):
        client = MqttClient(broker.address, f"stream-{unique}-{name}", manual_ack=True)
        consumer = StreamConsumer(
            client,
            f"$share/g{unique}/{unique}/#",
            scoring,
            table,
            StreamSettings(key="customer_id", batch_size=20),
        )
        consumer.start()
        client.connect()
        consumers.append((client, consumer))
    try:
        good = events(bundle, 400)
        bad_field = {**good[0], "customer_id": "bad-1", "tenure_months": "three"}
        items = [*good[:200], b"not json", {"no": "key"}, bad_field, good[200:300], *good[300:]]
        with MqttClient(broker.address, f"pub-{unique}", clean_start=True) as publisher:
            for item in items:
                payload = item if isinstance(item, bytes) else json.dumps(item).encode()
                publisher.publish(f"{unique}/shop-1", payload, qos=1)
            publisher.flush()
        wait_for(lambda: sum(c.counts.events for _, c in consumers) == 304, what="304 events")
        assert table.count() == 400
        assert all(c.counts.events > 0 for _, c in consumers)  # both took a share
        with table.engine.connect() as connection:
            reasons = [r.reason for r in connection.execute(select(table.rejected)).all()]
        assert len(reasons) == 3
        assert any("not JSON" in r for r in reasons)
        assert any("customer_id" in r for r in reasons)
        assert any("tenure_months" in r for r in reasons)
    finally:
        for client, consumer in consumers:
            consumer.stop()
            client.disconnect()
        table.close()


def test_a_fleet_member_consumer_scores_with_the_rollout_and_reports(
    broker: MosquittoBroker,
    service_bundles: list[Path],
    keypair: tuple[Path, Path],
    unique: str,
    tmp_path: Path,
) -> None:
    from edgefleet.central.publish import publish
    from edgefleet.central.stream.consumer import AgentScoring
    from edgefleet.edge.agent.agent import Agent
    from edgefleet.edge.signing import load_private_key
    from tests.fleet.kit import agent_config, collecting

    key = load_private_key(keypair[0])
    publish(service_bundles[1], unique, broker.address, key, state_file=tmp_path / "r.json")
    agent = Agent(agent_config(broker, keypair, unique, "stream-1", tmp_path / "member"))
    table = StreamTable(f"sqlite:///{tmp_path / 'ops.db'}", "scores")
    client = MqttClient(broker.address, f"stream-{unique}", manual_ack=True)
    consumer = StreamConsumer(
        client,
        f"$share/g{unique}/in/{unique}",
        AgentScoring(agent),
        table,
        StreamSettings(key="customer_id"),
    )
    with collecting(broker, unique, f"collector-{unique}") as collector:
        agent.start()
        consumer.start()
        client.connect()
        try:
            publish_all(broker, f"in/{unique}", events(service_bundles[1], 50), f"p-{unique}")
            wait_for(lambda: table.count() == 50, what="50 rows")  # waits for the model too
            agent.close_window()
            wait_for(lambda: collector.unique == 1, what="the member's report")
            assert collector.reports[0].scored == 50
            assert collector.reports[0].model_version == "1.1.0"
        finally:
            consumer.stop()
            client.disconnect()
            agent.stop(flush_timeout=2.0)
            table.close()
