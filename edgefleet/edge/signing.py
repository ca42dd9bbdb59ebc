"""Ed25519 signatures of manifests and rollout messages.

A signature travels as a small JSON document ``{"algorithm", "key_id", "signature"}``. The
key id (first 16 hex digits of the sha256 of the raw public key) lets a device tell "signed
by a key I do not trust" apart from "the signed bytes were changed", which Ed25519 alone
cannot tell.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.errors import KeyFileError, SignatureError

ALGORITHM = "ed25519"


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    """A public key a device accepts signatures from."""

    public_key: Ed25519PublicKey
    key_id: str

    @classmethod
    def from_public_key(cls, public_key: Ed25519PublicKey) -> TrustedKey:
        return cls(public_key=public_key, key_id=key_id(public_key))


def load_public_key(path: str | Path) -> TrustedKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise KeyFileError(
            f"cannot read public key {path}: {error.strerror}. "
            "Pass the .pub file written by 'edgefleet keys generate'."
        ) from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(
            f"{path} is not a PEM public key. Pass the .pub file written by "
            "'edgefleet keys generate' (not the private .key)."
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}; edgefleet uses Ed25519 keys")
    return TrustedKey.from_public_key(key)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise KeyFileError(
            f"cannot read signing key {path}: {error.strerror}. "
            "Create one with 'edgefleet keys generate'."
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}; edgefleet uses Ed25519 keys")
    return key


def sign(data: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The signature document for ``data``."""
    document = {
        "algorithm": ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(data)).decode("ascii"),
    }
    return (json.dumps(document, sort_keys=True) + "\n").encode("ascii")


def verify(data: bytes, signature_document: bytes, trusted: Sequence[TrustedKey]) -> TrustedKey:
    """The trusted key that signed ``data``; :class:`SignatureError` says why not."""
    try:
        document = json.loads(signature_document)
        algorithm = document["algorithm"]
        signer = document["key_id"]
        signature = base64.b64decode(document["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise SignatureError(
            "the signature file is malformed (not an edgefleet signature)"
        ) from None
    if algorithm != ALGORITHM:
        raise SignatureError(f"signature algorithm {algorithm!r} is not {ALGORITHM}")
    if not trusted:
        raise SignatureError("no trusted public key was given to check the signature with")
    for key in trusted:
        if key.key_id == signer:
            try:
                key.public_key.verify(signature, data)
            except InvalidSignature:
                raise SignatureError(
                    f"bad signature: the signed bytes were changed after signing, or the "
                    f"signature is corrupt (key {signer})"
                ) from None
            return key
    known = ", ".join(k.key_id for k in trusted)
    raise SignatureError(
        f"signed by key {signer}, which is not trusted here (trusted: {known}): "
        "wrong key, or a bundle from another publisher"
    )
