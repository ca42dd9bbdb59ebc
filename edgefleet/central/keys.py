"""Publisher keys: an Ed25519 private key (``edgefleet.key``, mode 0600) and its public
half (``edgefleet.pub``) for devices to trust."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.edge.signing import key_id
from edgefleet.errors import InputError

PRIVATE_NAME = "edgefleet.key"
PUBLIC_NAME = "edgefleet.pub"


def default_key_dir(home: Path) -> Path:
    return home / "keys"


def generate_keys(directory: Path, *, overwrite: bool = False) -> tuple[Path, Path, str]:
    """Write a new key pair; refuses to replace an existing one unless ``overwrite``
    (a replaced key strands every device that trusts the old one)."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if private_path.exists() and not overwrite:
        raise InputError(
            f"{private_path} exists already; devices trusting it would reject bundles signed "
            "by a new key. Pass --force to replace it anyway."
        )
    key = Ed25519PrivateKey.generate()
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_bytes)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path, key_id(key.public_key())
