"""Taking over another identity's place on a secured broker: its connection (by client id),
its share of the monitor's reports (by joining the shared-subscription group), and the
broker's limits. Certificates and the access list alone stopped none of the first two."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.monitor.ingest import DEFAULT_GROUP, Monitor
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.edge.mqtt import MqttClient, bound_client_id
from edgefleet.edge.topics import Topics
from edgefleet.errors import BrokerError
from tests.fleet.kit import Record, wait_for
from tests.fleet.secure import SecureFleet, require_c_clients
from tests.monitor.conftest import make_report


def _fleet() -> str:
    return f"f{uuid.uuid4().hex[:8]}"


def _mosquitto_sub(
    fleet: SecureFleet, identity_dir: Path, *arguments: str
) -> subprocess.Popen[str]:
    command = [
        "mosquitto_sub",
        *("-h", fleet.broker.host, "-p", str(fleet.broker.port), "-V", "mqttv5"),
        *("--cafile", str(fleet.broker.tls.ca_file)),  # type: ignore[union-attr]
        *("--cert", str(identity_dir / "cert.pem"), "--key", str(identity_dir / "key.pem")),
        *arguments,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_another_identity_cannot_take_over_a_devices_connection(
    secure_fleet: SecureFleet, record_counts: Record
) -> None:
    """A second enrolled device connects ten times with the victim's client id (the name
    every agent used to connect with): the victim's connection never drops, because its
    real client id is bound to its key."""
    require_c_clients()
    name = _fleet()
    victim, thief = secure_fleet.devices(name, ["victim", "thief"])
    base = f"edgefleet-{name}-victim"
    drops: list[str] = []
    client = MqttClient(victim.address(), base, on_disconnected=drops.append)
    client.connect()
    try:
        assert client.client_id != base
        assert client.client_id == bound_client_id(victim.address(), base)
        assert bound_client_id(thief.address(), base) != client.client_id
        for _ in range(10):
            attempt = _mosquitto_sub(
                secure_fleet,
                thief.folder,
                "-i",
                base,
                "-t",
                Topics(name).ack("thief"),
                "-C",
                "1",
                "-W",
                "1",
            )
            attempt.wait(timeout=60)
        client.publish(Topics(name).status("victim"), b"{}", qos=1).wait(30)
        assert client.is_connected
        dropped = len(drops)
    finally:
        client.disconnect()
    record_counts("client id takeover", attempts=10, victim_disconnects=dropped)
    assert dropped == 0


def test_joining_the_monitors_group_by_name_takes_no_report(
    secure_fleet: SecureFleet, tmp_path: Path, record_counts: Record
) -> None:
    """Mosquitto 2.0's access list grants every SUBSCRIBE and filters deliveries, so a
    device in the monitors' shared group takes its share and drops it (half the reports,
    measured). The group's name is a secret of the monitor identity: a device that joins
    every name it can guess takes nothing, and the monitor stores every report at once."""
    name = _fleet()
    honest, thief = secure_fleet.devices(name, ["honest", "thief"])
    monitor_identity = secure_fleet.service(f"mon-{name}", "monitor", fleet=name)
    store = MonitorStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    topics = Topics(name)
    stolen: list[str] = []
    thief_client = MqttClient(thief.address(), "thief", clean_start=True)
    thief_client.connect()
    try:
        with Monitor(name, monitor_identity.address(), store, flush_seconds=0.05) as monitor:
            assert DEFAULT_GROUP + "-" in monitor.filter  # not the guessable default
            for group in (DEFAULT_GROUP, "monitor", "edgefleet", "monitors"):
                thief_client.subscribe(
                    f"$share/{group}/{topics.all_reports}", lambda t, p, r: stolen.append(t)
                )
            with MqttClient(honest.address(), "honest", clean_start=True) as client:
                for sequence in range(20):
                    report = make_report("honest", sequence, fleet=name, rows=3)
                    client.publish(topics.report("honest"), report.encode()).wait(30)
            # No device re-sends here: every report must reach the monitor the first time.
            wait_for(lambda: store.report_count(name) == 20, timeout=60, what="20 stored")
    finally:
        thief_client.disconnect()
        store.close()
    record_counts("shared group joined by a device", sent=20, stored=20, taken=len(stolen))
    assert stolen == []


def test_the_broker_bounds_message_size_and_says_so_to_clients(tmp_path: Path) -> None:
    with (
        MosquittoBroker(tmp_path / "b") as broker,
        MqttClient(broker.address, f"big-{uuid.uuid4().hex[:6]}", clean_start=True) as client,
    ):
        assert client.server_maximum_packet_size == 64 * 1024 * 1024
        with pytest.raises(BrokerError, match="accepts at most"):
            client.publish("test/big", b"x" * (64 * 1024 * 1024 + 1))
        assert "max_queued_messages 100000" in broker.config_text()
