"""A secured broker for the tests: a fleet CA in a temporary home, Mosquitto with TLS,
client certificates, the CRL and the generated access list, and helpers that enroll
identities (reloading the broker so it knows them) and run the Mosquitto C clients."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.identity import authority
from edgefleet.edge.agent.agent import Agent, AgentConfig
from edgefleet.edge.identity import Identity, load_identity
from edgefleet.edge.signing import load_public_key

C_CLIENTS = ("mosquitto_pub", "mosquitto_sub")


def require_c_clients() -> None:
    """Fail (never skip) without Debian's mosquitto-clients: they are the attacker here."""
    missing = [name for name in C_CLIENTS if shutil.which(name) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: run scripts/setup (Debian package "
            "mosquitto-clients)",
            pytrace=False,
        )


@dataclass(frozen=True)
class SecureFleet:
    """A running secured broker and the home holding its CA."""

    broker: MosquittoBroker
    home: Path
    signing_key: Path

    def device(self, fleet: str, device_id: str) -> Identity:
        folder = authority.enroll_device(
            self.home,
            fleet,
            device_id,
            self.home / "enrolled" / fleet / device_id,
            broker_url=self.broker.url,
            signing_key=self.signing_key,
        )
        self.broker.reload()
        return load_identity(folder)

    def devices(self, fleet: str, device_ids: Sequence[str]) -> list[Identity]:
        folders = authority.enroll_devices(
            self.home,
            fleet,
            device_ids,
            self.home / "enrolled" / fleet,
            broker_url=self.broker.url,
            signing_key=self.signing_key,
        )
        self.broker.reload()
        return [load_identity(folder) for folder in folders]

    def service(self, name: str, *roles: str, fleet: str | None = None) -> Identity:
        folder = authority.issue_service(
            self.home,
            name,
            roles,
            self.home / "services" / name,
            fleet=fleet,
            broker_url=self.broker.url,
            signing_key=self.signing_key,
        )
        self.broker.reload()
        return load_identity(folder)

    def agents(self, fleet: str, device_ids: Sequence[str], state_root: Path) -> list[Agent]:
        """Enrolled devices' agents (not started), reporting only when told to."""
        return [
            Agent(
                AgentConfig(
                    fleet=fleet,
                    device_id=device.device_id,
                    state_dir=state_root / device.device_id,
                    trusted_keys=(load_public_key(device.signing_key),),
                    broker=device.address(),
                    report_seconds=3600.0,
                    fetch_timeout=30.0,
                )
            )
            for device in self.devices(fleet, device_ids)
        ]

    def revoke(self, common_name: str) -> None:
        authority.revoke(self.home, common_name)
        self.broker.reload()


def start_secure(home: Path, signing_key: Path, *, debug_log: bool = False) -> SecureFleet:
    authority.init_ca(home)
    broker = MosquittoBroker(
        home / "broker",
        tls=authority.broker_tls(home),
        # 'Denied PUBLISH' is a debug line in Mosquitto 2.0: the attack tests read it.
        extra_config=["log_type all"] if debug_log else [],
    )
    broker.start()
    return SecureFleet(broker, home, signing_key)


def c_client(
    program: str,
    fleet: SecureFleet,
    identity: Identity | None,
    *arguments: str,
    ca_file: Path | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``mosquitto_pub`` or ``mosquitto_sub`` (MQTT 5, so a refused publish comes back
    as a reason code) against the secured broker, as ``identity`` (None: no certificate)."""
    command = [
        program,
        "-h",
        fleet.broker.host,
        "-p",
        str(fleet.broker.port),
        "-V",
        "mqttv5",
        "--cafile",
        str(ca_file or fleet.broker.tls.ca_file),  # type: ignore[union-attr]
    ]
    if identity is not None:
        command += ["--cert", str(identity.cert_file), "--key", str(identity.key_file)]
    return subprocess.run(
        [*command, *arguments], capture_output=True, text=True, timeout=timeout, check=False
    )
