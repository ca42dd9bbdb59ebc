"""The whole stack over the secured broker: the publisher publishes, a device with its own
identity installs and reports (its read_retained markers in its own topic space), and the
monitor stores the report through its shared subscription, each with the rights of its
role only."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.central.monitor.ingest import Monitor
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.publish import publish
from edgefleet.central.trainer import TrainedModel
from edgefleet.edge.agent.agent import Agent, AgentConfig
from edgefleet.edge.mqtt import MqttClient
from edgefleet.edge.signing import load_private_key, load_public_key
from edgefleet.edge.topics import Topics
from edgefleet.errors import BrokerError
from tests.fleet.kit import export_versions, wait_for
from tests.fleet.secure import SecureFleet


@pytest.fixture(scope="module")
def bundle(
    trained: Callable[[str], TrainedModel],
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    return export_versions(trained, keypair, tmp_path_factory.mktemp("secure"), ("dt",))[0]


def test_a_fleet_runs_end_to_end_with_identities(
    secure_fleet: SecureFleet, bundle: Path, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    fleet = f"f{uuid.uuid4().hex[:8]}"
    publisher = secure_fleet.service(f"pub-{fleet}", "publisher", fleet=fleet)
    monitor_identity = secure_fleet.service(f"mon-{fleet}", "monitor", fleet=fleet)
    device = secure_fleet.device(fleet, "dev-1")
    publish(
        bundle,
        fleet,
        publisher.address(),
        load_private_key(keypair[0]),
        state_file=tmp_path / "rollout.json",
    )
    store = MonitorStore(f"sqlite:///{tmp_path / 'monitor.db'}")
    agent = Agent(
        AgentConfig(
            fleet=fleet,
            device_id=device.device_id,
            state_dir=tmp_path / "dev-1",
            trusted_keys=(load_public_key(device.signing_key),),
            broker=device.address(),
            report_seconds=3600.0,
            fetch_timeout=30.0,
        )
    )
    with Monitor(fleet, monitor_identity.address(), store, client_id=f"m-{fleet}") as monitor:
        agent.start()
        try:
            wait_for(lambda: agent.model is not None, 60, "the model to install over TLS")
            manifest = json.loads((bundle / "manifest.json").read_text())
            agent.score([g["record"] for g in manifest["golden"][:3]])
            assert agent.close_window() == 1
            assert monitor.wait_processed(1, timeout=60)
        finally:
            agent.stop(flush_timeout=5.0)
    assert store.report_count(fleet) == 1
    assert [d.device_id for d in store.devices(fleet)] == ["dev-1"]
    assert store.quarantine_count(fleet) == 0
    store.close()


def test_fleets_are_apart_for_services_and_devices(secure_fleet: SecureFleet) -> None:
    mine, other = f"f{uuid.uuid4().hex[:8]}", f"f{uuid.uuid4().hex[:8]}"
    publisher = secure_fleet.service(f"pub-{mine}", "publisher", fleet=mine)
    with MqttClient(publisher.address(), f"c-{mine}", clean_start=True) as client:
        client.publish(Topics(mine).rollout, b"x", qos=1, retain=True).wait(30)
        with pytest.raises(BrokerError, match="refused"):
            client.publish(Topics(other).rollout, b"x", qos=1, retain=True).wait(30)
        with pytest.raises(BrokerError, match="refused"):
            client.publish(Topics(mine).report("dev-1"), b"x", qos=1).wait(30)
    # The rollout retained for one fleet reaches its devices, never another fleet's.
    for fleet, expected in ((mine, b"x"), (other, None)):
        device = secure_fleet.device(fleet, "dev-1")
        reader = MqttClient(
            device.address(),
            f"r-{fleet}",
            clean_start=True,
            marker_base=Topics(fleet).markers("dev-1"),
        )
        with reader:
            assert reader.read_retained(Topics(mine).rollout) == expected
