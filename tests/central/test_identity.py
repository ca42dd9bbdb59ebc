"""The fleet CA, identity folders and the access list, without a broker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.central.identity import authority
from edgefleet.central.identity.acl import acl_text
from edgefleet.central.identity.records import IdentityBook
from edgefleet.edge.identity import load_identity, parse_common_name
from edgefleet.errors import IdentityError


@pytest.fixture
def home(tmp_path: Path, keypair: tuple[Path, Path]) -> Path:
    authority.init_ca(tmp_path / "home")
    (tmp_path / "home" / "keys").mkdir()
    (tmp_path / "home" / "keys" / "edgefleet.pub").write_bytes(keypair[1].read_bytes())
    return tmp_path / "home"


def test_an_enrolled_folder_holds_everything_the_device_needs(home: Path, tmp_path: Path) -> None:
    folder = authority.enroll_device(home, "shops", "pos-17", tmp_path / "pos-17")
    assert sorted(p.name for p in folder.iterdir()) == [
        "ca.pem",
        "cert.pem",
        "identity.json",
        "key.pem",
        "signing.pub",
    ]
    assert (folder / "key.pem").stat().st_mode & 0o777 == 0o600
    meta = json.loads((folder / "identity.json").read_text())
    assert meta["broker"] == "mqtts://127.0.0.1:8883"
    identity = load_identity(folder)
    assert (identity.fleet, identity.device_id, identity.kind) == ("shops", "pos-17", "device")
    cert = x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes())
    # The identity binds the fleet and the device id, and only serves as a client.
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "device:shops:pos-17"
    )
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    address = identity.address()
    assert (address.tls, address.port, address.key_file) == (True, 8883, folder / "key.pem")


def test_a_folder_with_a_readable_key_or_a_foreign_certificate_is_refused(
    home: Path, tmp_path: Path
) -> None:
    folder = authority.enroll_device(home, "shops", "pos-1", tmp_path / "a")
    other = authority.enroll_device(home, "shops", "pos-2", tmp_path / "b")
    os.chmod(folder / "key.pem", 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_identity(folder)
    os.chmod(folder / "key.pem", 0o600)
    (folder / "cert.pem").write_bytes((other / "cert.pem").read_bytes())
    with pytest.raises(IdentityError, match="mixed up"):
        load_identity(folder)
    with pytest.raises(IdentityError, match="not an identity folder"):
        load_identity(tmp_path)


def test_options_that_disagree_with_the_certificate_are_refused(home: Path, tmp_path: Path) -> None:
    identity = load_identity(authority.enroll_device(home, "shops", "pos-1", tmp_path / "a"))
    identity.check(fleet="shops", device_id="pos-1")
    with pytest.raises(IdentityError, match="--fleet 'depot' disagrees"):
        identity.check(fleet="depot")
    with pytest.raises(IdentityError, match="--device-id 'pos-9' disagrees"):
        identity.check(device_id="pos-9")


def test_common_names_parse_strictly() -> None:
    assert parse_common_name("device:shops:pos-17") == ("device", "shops", "pos-17")
    assert parse_common_name("service:monitor") == ("service", None, "monitor")
    for bad in ("pos-17", "device:shops", "device:sh/ops:x", "device:a:b:c", "admin:x"):
        with pytest.raises(IdentityError):
            parse_common_name(bad)


def test_enrolling_again_revokes_the_old_certificate(home: Path, tmp_path: Path) -> None:
    first = authority.enroll_device(home, "shops", "pos-1", tmp_path / "a")
    old = x509.load_pem_x509_certificate((first / "cert.pem").read_bytes()).serial_number
    authority.enroll_device(home, "shops", "pos-1", tmp_path / "a")
    crl = x509.load_pem_x509_crl((home / "ca" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(old) is not None
    assert [r.name for r in IdentityBook(home / "ca").active()] == ["pos-1"]


def test_revoking_rewrites_the_crl_and_drops_the_access_block(home: Path, tmp_path: Path) -> None:
    authority.enroll_device(home, "shops", "pos-1", tmp_path / "a")
    assert "user device:shops:pos-1" in (home / "ca" / "acl").read_text()
    [serial] = authority.revoke(home, "device:shops:pos-1")
    assert "device:shops:pos-1" not in (home / "ca" / "acl").read_text()
    crl = x509.load_pem_x509_crl((home / "ca" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    with pytest.raises(IdentityError, match="no active certificate"):
        authority.revoke(home, "device:shops:pos-1")


def test_the_access_list_gives_each_role_its_topics_only(home: Path, tmp_path: Path) -> None:
    authority.enroll_device(home, "shops", "pos-1", tmp_path / "d")
    authority.issue_service(home, "monitor", ["monitor"], tmp_path / "m")
    authority.issue_service(home, "pub", ["publisher"], tmp_path / "p", fleet="shops")
    authority.issue_service(home, "dashboard", ["dashboard"], tmp_path / "w")
    blocks = {
        block.splitlines()[0]: block.splitlines()[1:]
        for block in acl_text(IdentityBook(home / "ca").records()).split("\n\n")[1:]
    }
    assert blocks["user device:shops:pos-1"] == [
        "topic write edgefleet/shops/devices/pos-1/report",
        "topic write edgefleet/shops/devices/pos-1/status",
        "topic read edgefleet/shops/devices/pos-1/ack",
        "topic readwrite edgefleet/shops/markers/pos-1/#",
        "topic read edgefleet/shops/rollout",
        "topic read edgefleet/shops/models/+",
    ]
    assert blocks["user service:monitor"] == [
        "topic read edgefleet/+/devices/+/report",
        "topic read edgefleet/+/devices/+/status",
        "topic write edgefleet/+/devices/+/ack",
    ]
    assert blocks["user service:pub"] == [
        "topic readwrite edgefleet/shops/rollout/#",
        "topic readwrite edgefleet/shops/models/#",
    ]
    assert "topic readwrite edgefleet/+/rollout/#" in blocks["user service:dashboard"]
    assert not any("models/#" in line for line in blocks["user service:dashboard"])
    # Before the first 'user' line a rule would apply to anonymous clients: none is there.
    head = acl_text(IdentityBook(home / "ca").records()).split("\n\n")[0]
    assert all(line.startswith("#") for line in head.splitlines())


def test_the_ca_is_never_replaced_and_unknown_roles_are_refused(home: Path) -> None:
    with pytest.raises(IdentityError, match="exists already"):
        authority.init_ca(home)
    with pytest.raises(IdentityError, match="unknown service role"):
        authority.issue_service(home, "x", ["admin"])
    with pytest.raises(IdentityError, match="edgefleet ca init"):
        authority.load_ca(home / "nowhere")


def test_the_broker_certificate_serves_its_hosts(home: Path) -> None:
    tls = authority.broker_tls(home, ["broker.example.com", "10.0.0.5"])
    cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "broker.example.com" in names.get_values_for_type(x509.DNSName)
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} >= {"10.0.0.5", "127.0.0.1"}
    assert tls.key_file.stat().st_mode & 0o777 == 0o600
    # Asked again for hosts it covers, it keeps the certificate.
    assert authority.broker_tls(home, ["10.0.0.5"]).cert_file.read_bytes() == (
        tls.cert_file.read_bytes()
    )
