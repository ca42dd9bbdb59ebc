"""The fleet certificate authority: an ECDSA P-256 key and self-signed certificate that sign
device, service and broker certificates and the revocation list (CRL) the broker reads.

Files, in the CA folder (``HOME/ca`` by default)::

    ca.key   the CA's private key (mode 0600): whoever holds it can mint identities
    ca.pem   the CA certificate: devices trust the broker through it, the broker the devices
    crl.pem  the revocation list, rewritten on every revocation and broker start

P-256 because Mosquitto (OpenSSL), paho and every TLS stack of a device speak it, and issuing
takes a millisecond, so a simulated fleet of 200 enrolls in well under a second.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.errors import IdentityError

CA_KEY = "ca.key"
CA_CERT = "ca.pem"
CRL_FILE = "crl.pem"
CA_YEARS = 10
LEAF_DAYS = 3 * 365
CRL_DAYS = 365
"""A CRL past its next-update date makes OpenSSL refuse *every* client, so it is rewritten
on each broker start and revocation and lives a year."""
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate a device clock a little behind


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only (0600 from the first byte on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Issued:
    """A freshly issued certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def expires(self) -> float:
        return self.certificate.not_valid_after_utc.timestamp()


class FleetCA:
    """A CA folder, loaded. :meth:`create` makes one, :meth:`load` opens it."""

    def __init__(self, folder: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.folder = folder
        self.key = key
        self.certificate = cert

    @property
    def cert_path(self) -> Path:
        return self.folder / CA_CERT

    @property
    def crl_path(self) -> Path:
        return self.folder / CRL_FILE

    @classmethod
    def create(cls, folder: Path, name: str = "edgefleet fleet CA") -> FleetCA:
        """A new CA in ``folder``; refuses to replace one (every identity it issued would
        stop working)."""
        if (folder / CA_KEY).exists():
            raise IdentityError(
                f"a fleet CA exists already in {folder}: replacing it would lock out every "
                "enrolled device. Use it, or pass another --home"
            )
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_private(folder / CA_KEY, key_pem(key))
        (folder / CA_CERT).write_bytes(cert_pem(cert))
        ca = cls(folder, key, cert)
        ca.write_crl(())
        return ca

    @classmethod
    def load(cls, folder: Path) -> FleetCA:
        try:
            key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), None)
            cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        except FileNotFoundError:
            raise IdentityError(
                f"there is no fleet CA in {folder}: create one with 'edgefleet ca init' "
                "(or pass the --home that holds it)"
            ) from None
        except (OSError, ValueError, TypeError) as error:
            raise IdentityError(f"cannot load the fleet CA in {folder}: {error}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{folder / CA_KEY} is not an ECDSA key")
        return cls(folder, key, cert)

    def issue_client(self, common_name: str, days: int = LEAF_DAYS) -> Issued:
        """A TLS client certificate (device or service) for ``common_name``."""
        return self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], days)

    def issue_server(self, hosts: Iterable[str], days: int = LEAF_DAYS) -> Issued:
        """The broker's TLS server certificate, valid for each host name or address."""
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue("edgefleet-broker", ExtendedKeyUsageOID.SERVER_AUTH, names, days)

    def _issue(
        self,
        common_name: str,
        purpose: x509.ObjectIdentifier,
        alt_names: list[x509.GeneralName],
        days: int,
    ) -> Issued:
        key = new_key()
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            # The purpose keeps a device certificate from serving as a broker, and back.
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), False)
        return Issued(builder.sign(self.key, hashes.SHA256()), key)

    def write_crl(self, revoked: Iterable[tuple[int, float]]) -> Path:
        """Sign and write the CRL listing ``(serial, revoked_at)`` pairs."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + datetime.timedelta(days=CRL_DAYS))
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(datetime.datetime.fromtimestamp(when, datetime.UTC))
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        temporary = self.crl_path.with_suffix(".tmp")
        temporary.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        # Replaced whole: the broker may re-read it at any moment (SIGHUP).
        temporary.replace(self.crl_path)
        return self.crl_path


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
