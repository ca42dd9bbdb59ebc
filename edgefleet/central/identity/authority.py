"""What the ``ca`` and ``devices`` commands do: create the fleet CA, enroll devices, issue
service identities, revoke, and keep the broker's access list and CRL in step with the book.

Layout of ``HOME/ca``::

    ca.key, ca.pem, crl.pem     the CA (ca.py)
    identities.json             the book of issued identities (records.py)
    acl                         the broker's access list (acl.py)
    broker/server.pem, .key     the broker's TLS certificate, for the hosts it serves
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from edgefleet.central.identity.acl import acl_text
from edgefleet.central.identity.ca import FleetCA, Issued, cert_pem, key_pem, write_private
from edgefleet.central.identity.records import (
    DEVICE_ROLE,
    SERVICE_ROLES,
    IdentityBook,
    IdentityRecord,
    revoke_in,
)
from edgefleet.edge import identity as files
from edgefleet.edge.topics import DEFAULT_PREFIX, check_identifier, validate_name
from edgefleet.errors import IdentityError

ACL_FILE = "acl"
DEFAULT_SECURE_URL = "mqtts://127.0.0.1:8883"
SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")


def ca_folder(home: Path) -> Path:
    return Path(home) / "ca"


def default_identity_dir(home: Path, name: str) -> Path:
    """Where ``edgefleet ca issue-service --name NAME`` writes by default, and where the
    central commands look for their identity."""
    return Path(home) / "identities" / name


@dataclass(frozen=True)
class BrokerTLS:
    """The files a secured broker reads (edgefleet/central/broker.py)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path
    acl_file: Path


def init_ca(home: Path) -> FleetCA:
    ca = FleetCA.create(ca_folder(home))
    refresh(home)
    return ca


def load_ca(home: Path) -> FleetCA:
    return FleetCA.load(ca_folder(home))


def refresh(home: Path) -> tuple[Path, Path]:
    """Rewrite the access list and the CRL from the book; their paths."""
    ca = load_ca(home)
    records = IdentityBook(ca.folder).records()
    acl = ca.folder / ACL_FILE
    temporary = acl.with_suffix(".tmp")
    temporary.write_text(acl_text(records), encoding="utf-8")
    temporary.replace(acl)  # whole: the broker may re-read it at any moment
    revoked = [(r.serial, r.revoked) for r in records if r.revoked is not None]
    return acl, ca.write_crl(revoked)


def enroll_device(
    home: Path,
    fleet: str,
    device_id: str,
    out: Path | None = None,
    *,
    broker_url: str = DEFAULT_SECURE_URL,
    signing_key: Path | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> Path:
    """Issue the device a certificate and write its identity folder, ``out`` (default
    ``HOME/devices/{fleet}/{device_id}``). A device enrolled before gets a new certificate
    and the old one is revoked."""
    folder = out or Path(home) / "devices" / fleet / device_id
    _enroll(home, fleet, [(device_id, folder)], broker_url, signing_key, prefix)
    return folder


def enroll_devices(
    home: Path,
    fleet: str,
    device_ids: Sequence[str],
    root: Path,
    *,
    broker_url: str = DEFAULT_SECURE_URL,
    signing_key: Path | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> list[Path]:
    """:func:`enroll_device` for many devices at once, into ``root/{device_id}``: one
    update of the book, the access list and the CRL for all of them."""
    folders = [(d, root / d) for d in device_ids]
    _enroll(home, fleet, folders, broker_url, signing_key, prefix)
    return [folder for _, folder in folders]


def _enroll(
    home: Path,
    fleet: str,
    folders: Sequence[tuple[str, Path]],
    broker_url: str,
    signing_key: Path | None,
    prefix: str,
) -> None:
    check_identifier(fleet, "fleet name")
    validate_name("topic prefix", prefix)
    signing = _signing_key(home, signing_key, required=True)
    ca = load_ca(home)
    with IdentityBook(ca.folder).editing() as records:
        for device_id, folder in folders:
            common_name = files.device_common_name(fleet, device_id)
            issued = ca.issue_client(common_name)
            revoke_in(records, common_name, time.time())
            record = _record(
                common_name, "device", fleet, device_id, (DEVICE_ROLE,), prefix, issued
            )
            records.append(record)
            _write_folder(folder, ca, issued, record, broker_url, signing)
    refresh(home)


def ensure_enrolled(
    home: Path,
    fleet: str,
    device_ids: Sequence[str],
    root: Path,
    *,
    broker_url: str = DEFAULT_SECURE_URL,
    signing_key: Path | None = None,
) -> int:
    """Enroll, into ``root/{device_id}``, each device that lacks a folder holding an active
    certificate (a simulated fleet started again keeps its identities); how many were
    enrolled now."""
    book = IdentityBook(ca_folder(home))
    active = {r.common_name: r.serial for r in book.active()}
    missing = [
        d
        for d in device_ids
        if not _holds(root / d, active.get(files.device_common_name(fleet, d)))
    ]
    if missing:
        enroll_devices(home, fleet, missing, root, broker_url=broker_url, signing_key=signing_key)
    return len(missing)


def _holds(folder: Path, serial: int | None) -> bool:
    if serial is None:
        return False
    try:
        cert = x509.load_pem_x509_certificate((folder / files.CERT_FILE).read_bytes())
    except (OSError, ValueError):
        return False
    return cert.serial_number == serial and (folder / files.IDENTITY_FILE).is_file()


def issue_service(
    home: Path,
    name: str,
    roles: Iterable[str],
    out: Path | None = None,
    *,
    fleet: str | None = None,
    broker_url: str = DEFAULT_SECURE_URL,
    signing_key: Path | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> Path:
    """A certificate for a central service with ``roles`` (monitor, publisher, dashboard),
    for one fleet or (``fleet=None``) all; its folder (default ``HOME/identities/NAME``)."""
    roles = tuple(dict.fromkeys(roles))
    unknown = [r for r in roles if r not in SERVICE_ROLES]
    if not roles or unknown:
        raise IdentityError(
            f"unknown service role(s) {', '.join(unknown) or '(none given)'}: choose from "
            f"{', '.join(SERVICE_ROLES)}"
        )
    if fleet is not None:
        check_identifier(fleet, "fleet name")
    validate_name("topic prefix", prefix)
    ca = load_ca(home)
    common_name = files.service_common_name(name)
    issued = ca.issue_client(common_name)
    record = _record(common_name, "service", fleet, name, roles, prefix, issued)
    with IdentityBook(ca.folder).editing() as records:
        revoke_in(records, common_name, time.time())
        records.append(record)
    folder = out or default_identity_dir(home, name)
    _write_folder(folder, ca, issued, record, broker_url, _signing_key(home, signing_key))
    refresh(home)
    return folder


def revoke(home: Path, common_name: str) -> list[int]:
    """Revoke every certificate of ``common_name``; the serials revoked. The CRL and the
    access list are rewritten; the broker learns them when it reloads."""
    ca = load_ca(home)
    with IdentityBook(ca.folder).editing() as records:
        serials = revoke_in(records, common_name, time.time())
    if not serials:
        raise IdentityError(
            f"{common_name} holds no active certificate (never enrolled, or revoked already): "
            "see 'edgefleet devices list'"
        )
    refresh(home)
    return serials


def broker_tls(home: Path, hosts: Iterable[str] = ()) -> BrokerTLS:
    """The broker's files: its server certificate (issued again when missing or not valid
    for one of ``hosts``), the CA, and a freshly written access list and CRL."""
    ca = load_ca(home)
    folder = ca.folder / "broker"
    cert_file, key_file = folder / "server.pem", folder / "server.key"
    wanted = list(dict.fromkeys([*SERVER_HOSTS, *hosts]))
    if not _covers(cert_file, wanted):
        issued = ca.issue_server(wanted)
        write_private(key_file, key_pem(issued.key))
        cert_file.write_bytes(cert_pem(issued.certificate))
    acl, crl = refresh(home)
    return BrokerTLS(ca.cert_path, cert_file, key_file, crl, acl)


def _covers(cert_file: Path, hosts: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    held = {str(v) for v in names.get_values_for_type(x509.IPAddress)}
    held |= set(names.get_values_for_type(x509.DNSName))
    fresh = cert.not_valid_after_utc.timestamp() > time.time() + 30 * 86400
    return fresh and all(h in held for h in hosts)


def _record(
    common_name: str,
    kind: str,
    fleet: str | None,
    name: str,
    roles: tuple[str, ...],
    prefix: str,
    issued: Issued,
) -> IdentityRecord:
    return IdentityRecord(
        common_name, kind, fleet, name, roles, prefix, issued.serial, time.time(), issued.expires
    )


def _signing_key(home: Path, given: Path | None, *, required: bool = False) -> Path | None:
    path = given or Path(home) / "keys" / "edgefleet.pub"
    if path.is_file():
        return path
    if required or given is not None:
        raise IdentityError(
            f"no model-signing public key at {path}: a device needs it to verify models. "
            "Create the key pair with 'edgefleet keys generate', or pass --signing-key"
        )
    return None


def _write_folder(
    folder: Path,
    ca: FleetCA,
    issued: Issued,
    record: IdentityRecord,
    broker_url: str,
    signing_key: Path | None,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_private(folder / files.KEY_FILE, key_pem(issued.key))
    (folder / files.CERT_FILE).write_bytes(cert_pem(issued.certificate))
    shutil.copyfile(ca.cert_path, folder / files.CA_FILE)
    if signing_key is not None:
        shutil.copyfile(signing_key, folder / files.SIGNING_KEY_FILE)
    meta = {
        "kind": record.kind,
        "common_name": record.common_name,
        "fleet": record.fleet,
        "name": record.name,
        "roles": list(record.roles),
        "prefix": record.prefix,
        "broker": broker_url,
    }
    (folder / files.IDENTITY_FILE).write_text(json.dumps(meta, indent=1) + "\n", "utf-8")
