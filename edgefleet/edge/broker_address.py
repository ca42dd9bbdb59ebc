"""Where the MQTT broker is and who connects to it: the broker URL and TLS files
(:class:`BrokerAddress`), and the client ids and secrets bound to a client's identity.
Used by :mod:`edgefleet.edge.mqtt` and by everything that names a broker.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edgefleet.errors import InputError

__all__ = [
    "DEFAULT_BROKER_URL",
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "BrokerAddress",
    "bound_client_id",
    "identity_secret",
]

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
DEFAULT_BROKER_URL = "mqtt://127.0.0.1:1883"


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and how to talk to it. The password never shows in ``repr``
    or :attr:`url`."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        insecure: bool = False,
    ) -> BrokerAddress:
        """``mqtt://[user:pass@]host[:1883]`` or ``mqtts://[user:pass@]host[:8883]``; the
        TLS options need ``mqtts``. :class:`InputError` says what is wrong."""
        shape = "mqtt://host:port or mqtts://host:port"
        parts = urlsplit(url.strip()) if isinstance(url, str) else None
        if parts is None or parts.scheme.lower() not in ("mqtt", "mqtts") or not parts.netloc:
            raise InputError(f"broker URL {url!r} must look like {shape}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InputError(f"broker URL {url!r} has a path or query; it must look like {shape}")
        try:
            port = parts.port
        except ValueError:
            raise InputError(f"broker URL {url!r} has an invalid port") from None
        if not parts.hostname:
            raise InputError(f"broker URL {url!r} names no host; it must look like {shape}")
        tls = parts.scheme.lower() == "mqtts"
        files = {"--ca-file": ca_file, "--cert-file": cert_file, "--key-file": key_file}
        if not tls and (any(files.values()) or insecure):
            given = ", ".join(k for k, v in files.items() if v) or "--insecure"
            raise InputError(f"{given} need(s) an mqtts:// broker URL, not {url!r}")
        if key_file and not cert_file:
            raise InputError("--key-file needs --cert-file (the client certificate)")
        return cls(
            host=parts.hostname,
            port=port if port is not None else (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            ca_file=Path(ca_file) if ca_file else None,
            cert_file=Path(cert_file) if cert_file else None,
            key_file=Path(key_file) if key_file else None,
            insecure=insecure,
        )

    @property
    def display(self) -> str:
        """``host:port`` (IPv6 in brackets), for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.display}"


def identity_secret(address: BrokerAddress, purpose: str) -> str | None:
    """A secret only the holder of ``address``'s client key can compute (HMAC-SHA256 of
    ``purpose`` under the key file's bytes), or None without a client certificate."""
    if address.key_file is None:
        return None
    try:
        key = address.key_file.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read the client key {address.key_file}: {error}") from None
    return hmac.new(key, purpose.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def bound_client_id(address: BrokerAddress, name: str) -> str:
    """``name`` bound to the client's identity: ``name.SECRET`` with a client certificate.

    Mosquitto lets any authenticated client connect with a client id in use and so take
    over (disconnect) that connection and its session; certificates and the access list do
    not bind client ids (use_username_as_clientid would, but then two connections of one
    identity, such as a publisher and its keeper, would evict each other). A client id
    that only the key's holder can compute cannot be taken over, and stays the same across
    restarts, so persistent sessions keep working."""
    secret = identity_secret(address, f"mqtt client id {name}")
    return name if secret is None else f"{name}.{secret}"
