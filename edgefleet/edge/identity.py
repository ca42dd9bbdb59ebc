"""An identity folder: everything one device (or central service) needs to talk to a
secured broker, written by ``edgefleet devices enroll`` or ``edgefleet ca issue-service``::

    identity.json   {"kind", "common_name", "fleet", "device_id", "roles", "prefix", "broker"}
    ca.pem          the fleet CA: the broker's certificate must chain to it
    cert.pem        this identity's certificate (ECDSA P-256, signed by the fleet CA)
    key.pem         its private key (mode 0600)
    signing.pub     the publisher's Ed25519 key, to verify models and rollouts

The certificate's common name is the identity the broker knows (Mosquitto's
``use_identity_as_username``): ``device:{fleet}:{device_id}`` or ``service:{name}``. It binds
the fleet *and* the device id, so a certificate of device ``pos-17`` of fleet ``shops``
cannot pass as any other device or fleet. This module only reads such a folder; issuing
lives on the central side (``edgefleet.central.identity``).
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from edgefleet.edge.mqtt import BrokerAddress
from edgefleet.edge.topics import DEFAULT_PREFIX, check_identifier, validate_name
from edgefleet.errors import IdentityError, InputError

IDENTITY_FILE = "identity.json"
CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
SIGNING_KEY_FILE = "signing.pub"

Kind = Literal["device", "service"]


def device_common_name(fleet: str, device_id: str) -> str:
    """``device:{fleet}:{device_id}``: ':' never occurs in a fleet or device name."""
    return (
        f"device:{check_identifier(fleet, 'fleet name')}:{check_identifier(device_id, 'device id')}"
    )


def service_common_name(name: str) -> str:
    return f"service:{check_identifier(name, 'service name')}"


def parse_common_name(common_name: str) -> tuple[Kind, str | None, str]:
    """``(kind, fleet, name)``: ``("device", fleet, device_id)`` or
    ``("service", None, service_name)``; :class:`IdentityError` for anything else."""
    parts = common_name.split(":")
    try:
        if len(parts) == 3 and parts[0] == "device":
            return "device", check_identifier(parts[1], "fleet"), check_identifier(parts[2], "id")
        if len(parts) == 2 and parts[0] == "service":
            return "service", None, check_identifier(parts[1], "service name")
    except InputError:
        pass
    raise IdentityError(
        f"the certificate's common name {common_name!r} is not an edgefleet identity "
        "(device:FLEET:ID or service:NAME): use a certificate issued by 'edgefleet devices "
        "enroll' or 'edgefleet ca issue-service'"
    )


def certificate_common_name(path: Path) -> str:
    """The subject common name of the PEM certificate at ``path``."""
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as error:
        raise IdentityError(f"cannot read the certificate {path}: {error.strerror}") from None
    except ValueError:
        raise IdentityError(f"{path} is not a PEM certificate") from None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise IdentityError(f"the certificate {path} has {len(names)} common names, not one")
    return str(names[0].value)


@dataclass(frozen=True)
class Identity:
    """A loaded identity folder; see the module docstring."""

    folder: Path
    kind: Kind
    common_name: str
    fleet: str | None
    """The device's fleet; for a service, the one fleet it is limited to, or None (all)."""
    name: str
    """The device id, or the service's name."""
    roles: tuple[str, ...]
    prefix: str
    broker_url: str

    @property
    def ca_file(self) -> Path:
        return self.folder / CA_FILE

    @property
    def cert_file(self) -> Path:
        return self.folder / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.folder / KEY_FILE

    @property
    def signing_key(self) -> Path:
        return self.folder / SIGNING_KEY_FILE

    @property
    def device_id(self) -> str:
        if self.kind != "device":
            raise IdentityError(
                f"{self.folder} is the identity of service {self.name!r}, not of a device: "
                "enroll the device with 'edgefleet devices enroll'"
            )
        return self.name

    def address(self, url: str | None = None, *, insecure: bool = False) -> BrokerAddress:
        """The broker (``url``, else the one the folder names) over TLS with this
        identity's certificate."""
        return BrokerAddress.parse(
            url or self.broker_url,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            insecure=insecure,
        )

    def check(self, *, fleet: str | None = None, device_id: str | None = None) -> None:
        """:class:`IdentityError` if ``fleet`` or ``device_id`` (given on a command line)
        disagree with the certificate: the broker would refuse every message anyway."""
        for given, held, what in ((fleet, self.fleet, "fleet"), (device_id, self.name, "id")):
            if given is not None and held is not None and given != held:
                raise IdentityError(
                    f"--{'device-id' if what == 'id' else 'fleet'} {given!r} disagrees with the "
                    f"identity in {self.folder}, whose certificate is {self.common_name!r}: "
                    f"drop the option, or enroll {given!r} and use its folder"
                )


def load_identity(folder: str | Path) -> Identity:
    """Read and check an identity folder; :class:`IdentityError` says what is missing."""
    folder = Path(folder)
    meta = _read_meta(folder)
    for name in (CA_FILE, CERT_FILE, KEY_FILE):
        if not (folder / name).is_file():
            raise IdentityError(
                f"{folder} lacks {name}: it is not a complete identity folder. Write one with "
                "'edgefleet devices enroll' or 'edgefleet ca issue-service'"
            )
    _check_key_mode(folder / KEY_FILE)
    common_name = certificate_common_name(folder / CERT_FILE)
    kind, fleet, name = parse_common_name(common_name)
    if common_name != meta.get("common_name"):
        raise IdentityError(
            f"{folder / IDENTITY_FILE} names {meta.get('common_name')!r} but cert.pem is "
            f"{common_name!r}: the folder was mixed up; enroll again"
        )
    if kind == "service":
        fleet = meta.get("fleet")
    try:
        prefix = validate_name("topic prefix", meta.get("prefix", DEFAULT_PREFIX))
        roles = tuple(check_identifier(r, "role") for r in meta.get("roles", [kind]))
        if fleet is not None:
            check_identifier(fleet, "fleet")
    except InputError as error:
        raise IdentityError(f"{folder / IDENTITY_FILE}: {error}") from None
    broker = meta.get("broker")
    if not isinstance(broker, str):
        raise IdentityError(f"{folder / IDENTITY_FILE} names no broker URL")
    return Identity(folder, kind, common_name, fleet, name, roles, prefix, broker)


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / IDENTITY_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IdentityError(
            f"{folder} is not an identity folder (no {IDENTITY_FILE}): write one with "
            "'edgefleet devices enroll --fleet F --device-id ID --out DIR'"
        ) from None
    except (OSError, ValueError) as error:
        raise IdentityError(f"cannot read {path}: {error}") from None
    if not isinstance(meta, dict):
        raise IdentityError(f"{path} must hold a JSON object")
    return meta


def _check_key_mode(path: Path) -> None:
    # As ssh does: a key others can read is a key others may have copied.
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path} can be read by other users (mode {stat.S_IMODE(mode):o}): chmod 600 {path}"
        )
