"""Attacks on the secured broker with the Mosquitto C clients (Debian's mosquitto-clients),
each refusal checked twice: at the broker (the client's exit status or MQTT 5 reason code,
and the broker's log) and by what a real Monitor stored in its database.

Ordering makes "nothing stored" provable without waiting: after each attack a legitimate
device publishes a sentinel report, and a broker hands one subscriber its messages in the
order it processed them, so once the monitor has committed the sentinel, anything the
attack had slipped through would have been committed before it.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgefleet.central.identity import authority
from edgefleet.central.monitor.ingest import Monitor
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.publish import rollout_status
from edgefleet.edge.identity import Identity, load_identity
from edgefleet.edge.mqtt import BrokerAddress, MqttClient
from edgefleet.edge.signing import load_public_key
from edgefleet.edge.topics import Topics
from edgefleet.errors import BrokerError
from tests.fleet.secure import SecureFleet, c_client, require_c_clients, start_secure
from tests.monitor.conftest import make_report

FLEET = "shops"


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, keypair: tuple[Path, Path]
) -> Iterator[SecureFleet]:
    require_c_clients()
    secured = start_secure(tmp_path_factory.mktemp("attack-home"), keypair[1], debug_log=True)
    try:
        yield secured
    finally:
        secured.broker.stop()


@dataclass
class Watched:
    """A monitor storing fleet FLEET, a legitimate device, and what the monitor should have
    committed so far: the sentinels, plus what a test lets through on purpose."""

    fleet: SecureFleet
    monitor: Monitor
    store: MonitorStore
    honest: Identity
    reports: dict[str, int] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)

    def expect(self, device_id: str, *, stored: int = 0, refused: int = 0) -> None:
        if stored:
            self.reports[device_id] = self.reports.get(device_id, 0) + stored
        if refused:
            self.refusals[device_id] = self.refusals.get(device_id, 0) + refused

    def sentinel(self) -> None:
        """The honest device reports through mosquitto_pub; returns once the monitor has
        committed it, and so everything the broker delivered to it before."""
        device_id = self.honest.device_id
        sequence = self.reports.get(device_id, 0)
        report = make_report(device_id, sequence, fleet=FLEET, rows=5)
        result = publish(self.fleet, self.honest, Topics(FLEET).report(device_id), report.encode())
        assert result.returncode == 0, result.stderr
        assert "failed" not in result.stderr
        self.expect(device_id, stored=1)
        total = sum(self.reports.values()) + sum(self.refusals.values())
        assert self.monitor.wait_processed(total, timeout=60)

    def assert_stored_only_what_was_expected(self) -> None:
        stored = {d.device_id: d.reports for d in self.store.devices(FLEET)}
        assert stored == self.reports
        assert self.store.refusals_by_device(FLEET) == self.refusals
        assert self.monitor.stats.processed == sum(self.reports.values()) + sum(
            self.refusals.values()
        )


@pytest.fixture(scope="module")
def watched(fleet: SecureFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    honest = fleet.device(FLEET, "honest-1")
    monitor_identity = fleet.service("monitor", "monitor")
    store = MonitorStore(f"sqlite:///{tmp_path_factory.mktemp('attack-db') / 'monitor.db'}")
    monitor = Monitor(FLEET, monitor_identity.address(), store, client_id="attack-monitor")
    with monitor:
        watched = Watched(fleet, monitor, store, honest)
        watched.sentinel()
        yield watched
    store.close()


def publish(
    fleet: SecureFleet,
    identity: Identity | None,
    topic: str,
    payload: bytes | str,
    *extra: str,
    ca_file: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    message = payload.decode() if isinstance(payload, bytes) else payload
    return c_client(
        "mosquitto_pub",
        fleet,
        identity,
        "-t",
        topic,
        "-m",
        message,
        "-q",
        "1",
        *extra,
        ca_file=ca_file,
    )


def log_since(fleet: SecureFleet, offset: int) -> str:
    return fleet.broker.log_path.read_bytes()[offset:].decode(errors="replace")


def log_offset(fleet: SecureFleet) -> int:
    return fleet.broker.log_path.stat().st_size


def test_anonymous_connection_is_refused(watched: Watched) -> None:
    fleet = watched.fleet
    offset = log_offset(fleet)
    report = make_report(watched.honest.device_id, 900, fleet=FLEET, rows=5)
    result = publish(fleet, None, Topics(FLEET).report(watched.honest.device_id), report.encode())
    assert result.returncode != 0
    assert "peer did not return a certificate" in log_since(fleet, offset)
    watched.sentinel()
    watched.assert_stored_only_what_was_expected()


def test_a_device_cannot_report_as_another(watched: Watched) -> None:
    fleet = watched.fleet
    attacker = fleet.device(FLEET, "mallory")
    offset = log_offset(fleet)
    forged = make_report(watched.honest.device_id, 901, fleet=FLEET, rows=5)
    topic = Topics(FLEET).report(watched.honest.device_id)
    result = publish(fleet, attacker, topic, forged.encode())
    assert "Not authorized" in result.stderr  # the broker's PUBACK reason code
    assert f"'{topic}'" in log_since(fleet, offset)
    assert "Denied PUBLISH" in log_since(fleet, offset)
    watched.sentinel()
    watched.assert_stored_only_what_was_expected()
    assert all(d.device_id != "mallory" for d in watched.store.devices(FLEET))


def test_a_forged_body_on_the_own_topic_is_refused_and_counted_per_device(
    watched: Watched,
) -> None:
    fleet = watched.fleet
    forger = fleet.device(FLEET, "forger")
    forged = make_report(watched.honest.device_id, 902, fleet=FLEET, rows=5)
    result = publish(fleet, forger, Topics(FLEET).report("forger"), forged.encode())
    assert result.returncode == 0
    assert "failed" not in result.stderr
    # ... and refused by the monitor: the body claims another device.
    watched.expect("forger", refused=1)
    watched.sentinel()
    watched.assert_stored_only_what_was_expected()
    reasons = [q.reason for q in watched.store.quarantined(FLEET) if q.device_id == "forger"]
    assert len(reasons) == 1
    assert "only report as itself" in reasons[0]


@pytest.mark.parametrize("what", ["rollout", "model"])
def test_a_device_cannot_publish_a_rollout_or_a_model(
    watched: Watched, what: str, keypair: tuple[Path, Path]
) -> None:
    fleet = watched.fleet
    attacker = fleet.device(FLEET, f"rogue-{what}")
    topics = Topics(FLEET)
    topic = topics.rollout if what == "rollout" else topics.model("ab" * 32)
    offset = log_offset(fleet)
    result = publish(fleet, attacker, topic, '{"stable": "evil"}', "-r")
    assert "Not authorized" in result.stderr
    assert f"'{topic}'" in log_since(fleet, offset)
    # Nothing retained: the publisher, who may read both, finds nothing there.
    publisher = fleet.service("publisher", "publisher")
    if what == "rollout":
        assert rollout_status(FLEET, publisher.address(), [load_public_key(keypair[1])]) is None
    else:
        with MqttClient(publisher.address(), "attack-reader", clean_start=True) as reader:
            assert reader.read_retained(topic) is None
    watched.sentinel()
    watched.assert_stored_only_what_was_expected()


def test_a_revoked_device_cannot_connect_and_loses_its_open_connection(watched: Watched) -> None:
    fleet = watched.fleet
    device = fleet.device(FLEET, "stolen")
    topics = Topics(FLEET)
    connected = MqttClient(device.address(), "stolen-live", clean_start=True)
    connected.connect()
    try:
        before = make_report("stolen", 0, fleet=FLEET, rows=5).encode()
        connected.publish(topics.report("stolen"), before, qos=1).wait(30)  # allowed
        watched.expect("stolen", stored=1)
        fleet.revoke(device.common_name)
        offset = log_offset(fleet)
        after = make_report("stolen", 1, fleet=FLEET, rows=5).encode()
        result = publish(fleet, device, topics.report("stolen"), after)
        assert result.returncode != 0
        assert "certificate verify failed" in log_since(fleet, offset)
        # Connected since before: the reload took its access list away.
        with pytest.raises(BrokerError, match="refused"):
            connected.publish(topics.report("stolen"), after, qos=1).wait(30)
        assert "Denied PUBLISH" in log_since(fleet, offset)
    finally:
        connected.disconnect()
    watched.sentinel()
    watched.assert_stored_only_what_was_expected()


def test_a_certificate_of_another_ca_is_refused(
    watched: Watched, tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    fleet = watched.fleet
    # Another CA issues the honest device's very name: an impersonation attempt.
    rogue_home = tmp_path / "rogue"
    authority.init_ca(rogue_home)
    folder = authority.enroll_device(
        rogue_home,
        FLEET,
        watched.honest.device_id,
        tmp_path / "fake",
        broker_url=fleet.broker.url,
        signing_key=keypair[1],
    )
    impostor = load_identity(folder)
    offset = log_offset(fleet)
    report = make_report(watched.honest.device_id, 903, fleet=FLEET, rows=5)
    # It trusts the real CA for the broker's certificate; the broker does not trust it.
    result = publish(
        fleet,
        impostor,
        Topics(FLEET).report(watched.honest.device_id),
        report.encode(),
        ca_file=fleet.broker.tls.ca_file,  # type: ignore[union-attr]
    )
    assert result.returncode != 0
    assert "certificate verify failed" in log_since(fleet, offset)
    watched.sentinel()
    watched.assert_stored_only_what_was_expected()


def test_the_monitor_without_its_certificate_cannot_subscribe(watched: Watched) -> None:
    fleet = watched.fleet
    share = f"$share/thief/{Topics(FLEET).all_reports}"
    offset = log_offset(fleet)
    result = c_client("mosquitto_sub", fleet, None, "-t", share, "-C", "1")
    assert result.returncode != 0
    assert result.stdout == ""
    assert "peer did not return a certificate" in log_since(fleet, offset)
    no_certificate = BrokerAddress.parse(fleet.broker.url, ca_file=fleet.broker.tls.ca_file)  # type: ignore[union-attr]
    store_before = watched.store.report_count(FLEET)
    with pytest.raises(BrokerError):
        Monitor(FLEET, no_certificate, watched.store, connect_timeout=10).start()
    watched.sentinel()
    assert watched.store.report_count(FLEET) == store_before + 1
    watched.assert_stored_only_what_was_expected()


def test_a_device_subscribing_to_every_report_receives_none(watched: Watched) -> None:
    fleet = watched.fleet
    snoop = fleet.device(FLEET, "snoop")
    monitor = fleet.service("acker", "monitor")
    topics = Topics(FLEET)
    seen: list[str] = []
    acked = threading.Event()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        seen.append(topic)
        if topic == topics.ack("snoop"):
            acked.set()

    with MqttClient(snoop.address(), "snoop-sub", clean_start=True) as client:
        # Mosquitto 2.0 grants every subscription and checks 'read' per message.
        client.subscribe(topics.all_reports, on_message)
        client.subscribe(topics.ack("snoop"), on_message)
        watched.sentinel()  # a report the snoop must not see ...
        with MqttClient(monitor.address(), "acker-pub", clean_start=True) as acker:
            acker.publish(topics.ack("snoop"), b"ack", qos=1).wait(30)  # ... then its own ack
        assert acked.wait(60)
    assert seen == [topics.ack("snoop")]
    watched.assert_stored_only_what_was_expected()


def test_the_device_list_shows_enrolled_revoked_last_seen_and_refused(
    watched: Watched,
) -> None:
    from edgefleet.central.identity.inventory import device_rows

    fleet = watched.fleet
    gone = fleet.device(FLEET, "retired")
    fleet.revoke(gone.common_name)
    rows = {r.device_id: r for r in device_rows(fleet.home, FLEET, watched.store.url)}
    honest = rows[watched.honest.device_id]
    assert (honest.state, honest.refused) == ("enrolled", 0)
    assert honest.last_seen is not None
    assert (rows["retired"].state, rows["retired"].last_seen) == ("revoked", None)
    assert rows["retired"].revoked is not None


def test_the_mosquitto_c_clients_are_installed() -> None:
    """Fails, never skips, on a machine without them: scripts/setup installs them."""
    import shutil

    from tests.fleet.secure import C_CLIENTS

    assert [name for name in C_CLIENTS if shutil.which(name) is None] == []
