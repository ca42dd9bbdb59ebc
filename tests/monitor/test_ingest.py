"""The monitor against a real Mosquitto: reports stored once however often they arrive,
monitors of one group splitting a fleet, redeliveries after a crash, a failing database, and
the ``edgefleet monitor`` and ``edgefleet quarantine`` commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.monitor.ingest import CachedVersions, Monitor
from edgefleet.central.monitor.store import IngestCounts, KnownVersion, MonitorStore, StoreError
from edgefleet.cli.main import main
from edgefleet.edge.mqtt import MqttClient
from edgefleet.edge.report import Report
from edgefleet.edge.topics import Topics
from tests.fleet.kit import wait_for
from tests.monitor.conftest import make_report


@contextmanager
def publisher(broker: MosquittoBroker, name: str) -> Iterator[MqttClient]:
    client = MqttClient(broker.address, f"{name}-pub", clean_start=True)
    client.connect()
    try:
        yield client
    finally:
        client.flush(30)
        client.disconnect()


def publish(client: MqttClient, fleet: str, reports: Sequence[Report]) -> None:
    topics = Topics(fleet)
    for report in reports:
        client.publish(topics.report(report.device_id), report.encode())


def test_monitor_stores_each_report_once_and_quarantines_the_rest(
    broker: MosquittoBroker, unique: str, tmp_path: Path
) -> None:
    store = MonitorStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    reports = [make_report(f"d{i % 5}", i // 5, fleet=unique, rows=8) for i in range(30)]

    def known(name: str, version: str) -> bool:
        return version == "1.0.0"

    topics = Topics(unique)
    with Monitor(unique, broker.address, store, client_id=f"{unique}-m", known_version=known) as m:
        with publisher(broker, unique) as client:
            publish(client, unique, reports[:20])
            client.publish(topics.report("d1"), b"\x00garbage")
            client.publish(topics.report("d2"), reports[0].encode())  # d0's report on d2's topic
            client.publish(
                topics.report("d9"),
                make_report("d9", 0, fleet=unique, model_version="7.0.0").encode(),
            )
            publish(client, unique, reports[15:])  # five re-sent, as after a lost PUBACK
        assert m.wait_processed(38, timeout=30)
        stats = m.stats
    assert (stats.received, stats.stored, stats.duplicates, stats.quarantined) == (38, 30, 5, 3)
    assert store.report_count(unique) == 30
    reasons = [q.reason for q in store.quarantined(unique)]
    assert any("not a known version" in r for r in reasons)
    assert any("only report as itself" in r for r in reasons)
    assert any("UTF-8" in r or "JSON" in r for r in reasons)
    store.close()


def test_two_monitors_split_a_fleet_and_store_nothing_twice(
    broker: MosquittoBroker, unique: str, db_url: str
) -> None:
    reports = [make_report(f"d{i % 12}", i // 12, fleet=unique, rows=5) for i in range(240)]
    stores = [MonitorStore(db_url), MonitorStore(db_url)]  # as two processes would
    monitors = [
        Monitor(unique, broker.address, stores[i], group=unique, client_id=f"{unique}-{i}")
        for i in range(2)
    ]
    for monitor in monitors:
        monitor.start()
    try:
        with publisher(broker, unique) as client:
            publish(client, unique, reports)
            publish(client, unique, reports[::6])  # 40 devices' retries
        wait_for(lambda: sum(m.stats.processed for m in monitors) >= 280, 30, "280 reports")
    finally:
        stats = [m.stop() for m in monitors]
    # Each message went to one monitor, both got some, and the union is everything.
    assert sum(s.received for s in stats) == 280
    assert all(s.received > 20 for s in stats), stats
    assert sum(s.stored for s in stats) == 240
    assert sum(s.duplicates for s in stats) == 40
    assert stores[0].report_count(unique) == 240
    for store in stores:
        store.close()


def test_decode_workers_validate_while_the_monitor_stores(
    broker: MosquittoBroker, unique: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``workers=1``: batches validated in another process, committed here in order; and
    if the workers die, the monitor validates in-process and goes on."""
    store = MonitorStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    reports = [make_report(f"d{i % 7}", i // 7, fleet=unique, rows=5) for i in range(70)]

    def known(name: str, version: str) -> bool:
        return version == "1.0.0"

    monitor = Monitor(
        unique,
        broker.address,
        store,
        client_id=f"{unique}-m",
        known_version=known,
        workers=1,
        batch=10,
        flush_seconds=0.05,
    )
    topics = Topics(unique)
    with monitor, publisher(broker, unique) as client:
        publish(client, unique, reports[:40])
        client.publish(topics.report("d1"), b"[1, 2")
        client.publish(
            topics.report("x"), make_report("x", 0, fleet=unique, model_version="2.0.0").encode()
        )
        client.flush(30)
        assert monitor.wait_processed(42, timeout=30)
        assert monitor._pool is not None
        assert "decode workers failed" not in caplog.text
        monitor._pool.shutdown(wait=True)  # the workers are gone: submit() now raises
        publish(client, unique, reports[30:])
        assert monitor.wait_processed(82, timeout=30)
        stats = monitor.stats
    assert "decode workers failed" in caplog.text
    assert (stats.stored, stats.duplicates, stats.quarantined) == (70, 10, 2)
    assert store.report_count(unique) == 70
    reasons = sorted(q.reason for q in store.quarantined(unique))
    assert "not a known version" in reasons[0] + reasons[1]
    store.close()


class _CrashesBeforeAcknowledging(Monitor):
    """Commits, then "crashes" before the PUBACKs go out."""

    def _acknowledge(self, items: object) -> None:
        pass


def test_reports_redelivered_after_a_crash_are_counted_once(
    broker: MosquittoBroker, unique: str, tmp_path: Path
) -> None:
    store = MonitorStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    reports = [make_report(f"d{i}", 0, fleet=unique, rows=5) for i in range(20)]
    client_id = f"{unique}-m"
    crashing = _CrashesBeforeAcknowledging(unique, broker.address, store, client_id=client_id)
    with crashing, publisher(broker, unique) as client:
        publish(client, unique, reports)
        client.flush(30)
        assert crashing.wait_processed(20, timeout=30)
    assert crashing.stats.stored == 20
    # The same session again: the broker redelivers all twenty, none acknowledged.
    with Monitor(unique, broker.address, store, client_id=client_id) as again:
        assert again.wait_processed(20, timeout=30)
        time.sleep(0.3)  # nothing more arrives
        stats = again.stats
    assert (stats.received, stats.stored, stats.duplicates) == (20, 0, 20)
    assert store.report_count(unique) == 20
    # Acknowledged this time: a third start gets nothing.
    with Monitor(unique, broker.address, store, client_id=client_id) as third:
        time.sleep(0.5)
        assert third.stats.received == 0
    store.close()


class _FlakyStore(MonitorStore):
    """Fails its first two writes (a database restarting), and any batch holding a report
    of device ``poison`` (a row the database refuses)."""

    def __init__(self, url: str):
        super().__init__(url)
        self.calls = 0

    def ingest_many(
        self,
        items: Sequence[tuple[str, bytes]],
        *,
        known_version: KnownVersion | None = None,
        fleet: str | None = None,
        prefix: str | None = None,
    ) -> IngestCounts:
        self.calls += 1
        if self.calls <= 2:
            raise StoreError("connection refused (the database is restarting)")
        if any(b'"device_id":"poison"' in payload for _, payload in items):
            raise StoreError("value too long for the column")
        return super().ingest_many(items, known_version=known_version, fleet=fleet, prefix=prefix)


def test_database_failures_never_stop_ingestion(
    broker: MosquittoBroker, unique: str, tmp_path: Path
) -> None:
    store = _FlakyStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    reports = [make_report(f"d{i}", 0, fleet=unique, rows=5) for i in range(15)]
    poison = make_report("poison", 0, fleet=unique, rows=5)
    monitor = Monitor(
        unique, broker.address, store, client_id=f"{unique}-m", batch=8, flush_seconds=0.05
    )
    with monitor, publisher(broker, unique) as client:
        publish(client, unique, [*reports[:7], poison, *reports[7:]])
        client.flush(30)
        assert monitor.wait_processed(16, timeout=40)
        stats = monitor.stats
    assert (stats.stored, stats.quarantined) == (15, 1)
    assert stats.store_errors >= 3
    (refused,) = store.quarantined(unique)
    assert "database refused" in refused.reason
    assert "value too long" in refused.reason
    assert refused.device_id == "poison"
    store.close()


def test_cached_versions_learn_new_registrations() -> None:
    registered = {("churn", "1.0.0")}
    loads = []

    def load() -> set[tuple[str, str]]:
        loads.append(1)
        return set(registered)

    known = CachedVersions(load, refresh_seconds=0.0)
    assert known("churn", "1.0.0")
    assert not known("churn", "1.1.0")
    registered.add(("churn", "1.1.0"))
    assert known("churn", "1.1.0")
    assert len(loads) == 3  # one at the start, one per unknown question


def test_monitor_and_quarantine_commands(
    broker: MosquittoBroker, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    command = [
        sys.executable,
        "-m",
        "edgefleet.cli.main",
        "--home",
        str(home),
        "monitor",
        "--fleet",
        unique,
        "--broker",
        broker.url,
        "--client-id",
        f"{unique}-cli",
        "--every",
        "0.5",
    ]
    log = tmp_path / "monitor.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ}
        )
    try:
        wait_for(lambda: "Ctrl-C stops it" in log.read_text(), 60, "the monitor to subscribe")
        with publisher(broker, unique) as client:
            publish(client, unique, [make_report(f"d{i}", 0, fleet=unique) for i in range(5)])
            client.publish(Topics(unique).report("d1"), json.dumps({"hello": 1}).encode())
        store = MonitorStore(f"sqlite:///{home / 'monitor.db'}")
        wait_for(lambda: store.report_count(unique) == 5, 30, "five reports stored")
        wait_for(lambda: store.quarantine_count(unique) == 1, 30, "one quarantined")
        store.close()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    text = log.read_text()
    assert code == 0, text
    assert "accepting every model version" in text
    assert "stored 5" in text
    assert "quarantined 1" in text
    assert main(["--home", str(home), "quarantine", "--fleet", unique]) == 0
    out = capsys.readouterr().out
    assert "1 quarantined report(s)" in out
    assert "lacks the field 'schema_version'" in out


def test_a_resumed_session_with_more_queued_reports_than_the_queue_holds_starts(
    broker: MosquittoBroker, unique: str, tmp_path: Path
) -> None:
    """Regression: a monitor restarted on a persistent session that the broker had queued
    300 reports for, with room for 20 in memory, hung in start() (the network thread waited
    for a writer that was only started after the SUBACK)."""
    store = MonitorStore(f"sqlite:///{tmp_path / 'm.db'}")
    first = Monitor(unique, broker.address, store, client_id=f"{unique}-m", max_queued=20)
    first.start()
    first.stop()
    reports = [make_report(f"d{i % 10}", i // 10, fleet=unique, rows=3) for i in range(300)]
    with publisher(broker, unique) as client:
        publish(client, unique, reports)
    second = Monitor(unique, broker.address, store, client_id=f"{unique}-m", max_queued=20)
    with second:
        assert second.wait_processed(300, timeout=120), second.stats
    assert store.report_count(unique) == 300
    store.close()


def test_the_monitor_acknowledges_what_the_store_holds_to_each_device(
    broker: MosquittoBroker, unique: str, tmp_path: Path
) -> None:
    """After each commit, one ack per device on its own topic names the sequences stored,
    re-sent ones included (a duplicate is stored: acknowledged again)."""
    from edgefleet.edge.ack import Ack

    store = MonitorStore(f"sqlite:///{tmp_path / 'm.db'}")
    acks: list[Ack] = []
    listener = MqttClient(broker.address, f"{unique}-acks", clean_start=True)
    listener.connect()
    listener.subscribe(Topics(unique).all_acks, lambda t, p, r: acks.append(Ack.decode(p)))
    reports = [make_report(f"d{i % 3}", i // 3 + 1, fleet=unique, rows=3) for i in range(30)]
    with Monitor(unique, broker.address, store, flush_seconds=0.05) as monitor:
        with publisher(broker, unique) as client:
            publish(client, unique, [*reports, reports[4]])
        assert monitor.wait_processed(31, timeout=60)
        wait_for(
            lambda: (
                {a.device_id for a in acks} == {"d0", "d1", "d2"}
                and all(
                    all(any(a.covers(s) for a in acks if a.device_id == d) for s in range(1, 11))
                    for d in ("d0", "d1", "d2")
                )
            ),
            timeout=30,
            what="acks covering sequences 1..10 of each device",
        )
        assert monitor.stats.acks_sent >= 3
    listener.disconnect()
    store.close()


def test_device_statuses_are_kept_per_device_and_bad_ones_counted(
    broker: MosquittoBroker, unique: str, tmp_path: Path
) -> None:
    store = MonitorStore(f"sqlite:///{tmp_path / 'm.db'}")
    topics = Topics(unique)
    good = {"device_id": "d1", "state": "online", "outbox_pending": 3, "outbox_awaiting_ack": 2}
    with Monitor(unique, broker.address, store, flush_seconds=0.05) as monitor:
        with publisher(broker, unique) as client:
            for topic, payload in [
                (topics.status("d1"), json.dumps({**good, "outbox_pending": 1}).encode()),
                (topics.status("d1"), json.dumps(good).encode()),
                (topics.status("d2"), json.dumps(good).encode()),  # names another device
                (topics.status("d3"), b"\xff not json"),
                (topics.status("d4"), json.dumps({**good, "device_id": "d4", "state": 1}).encode()),
            ]:
                client.publish(topic, payload, retain=True).wait()
        wait_for(
            lambda: (
                monitor.stats.statuses_refused == 3
                and store.statuses(unique).get("d1") is not None
                and store.statuses(unique)["d1"].outbox_pending == 3
            ),
            timeout=30,
            what="the latest status of d1 stored, three refused",
        )
    assert set(store.statuses(unique)) == {"d1"}
    assert store.statuses(unique)["d1"].outbox_awaiting_ack == 2
    store.close()
