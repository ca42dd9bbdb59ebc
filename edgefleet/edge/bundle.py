"""Open a bundle and prove it may be used: manifest, signature, artifacts.

A bundle is a folder (or a .tar of one) holding ``manifest.json``, ``manifest.sig`` and
the artifacts the manifest lists. The checks run in an order that makes each refusal say
exactly what is wrong: the manifest must parse (a truncated file says so), the signature
must come from a trusted key and match the manifest bytes, and each artifact that will be
used must exist with the size and sha256 the manifest states.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgefleet.edge.hashing import sha256_file
from edgefleet.edge.manifest import Artifact, Manifest
from edgefleet.edge.signing import TrustedKey, verify
from edgefleet.errors import ArtifactError, BundleError, ManifestError, SignatureError

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose manifest is signed by a trusted key and whose ``verified_formats``
    artifacts match it."""

    root: Path
    manifest: Manifest
    manifest_bytes: bytes
    signer: TrustedKey
    verified_formats: tuple[str, ...]
    # Keeps a .tar's extraction folder alive as long as the bundle object.
    _keepalive: Any = field(default=None, repr=False, compare=False)

    def with_verified(self, fmt: str) -> VerifiedBundle:
        """This bundle with the ``fmt`` artifact checked too."""
        if fmt in self.verified_formats:
            return self
        verify_artifact(self.root, self.manifest.artifact(fmt))
        return replace(self, verified_formats=(*self.verified_formats, fmt))

    def artifact_path(self, fmt: str) -> Path:
        if fmt not in self.verified_formats:
            raise BundleError(f"the {fmt} artifact of {self.manifest.label} was not verified")
        return self.root / self.manifest.artifact(fmt).path


def read_manifest(root: Path) -> tuple[Manifest, bytes]:
    """Parse ``manifest.json`` without checking its signature (for ``inspect``)."""
    path = root / MANIFEST_FILE
    if not root.exists():
        raise BundleError(f"{root} does not exist")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{root} has no {MANIFEST_FILE}: not an edgefleet bundle") from None
    return Manifest.from_bytes(data, source=str(path)), data


def verify_artifact(root: Path, artifact: Artifact) -> None:
    path = root / artifact.path
    if not path.is_file():
        raise ArtifactError(f"{artifact.format} artifact {artifact.path} is missing from {root}")
    size = path.stat().st_size
    if size != artifact.bytes:
        raise ArtifactError(
            f"{artifact.format} artifact {artifact.path} has {size} bytes, the manifest says "
            f"{artifact.bytes}: truncated or replaced"
        )
    digest = sha256_file(path)
    if digest != artifact.sha256:
        raise ArtifactError(
            f"{artifact.format} artifact {artifact.path} has sha256 {digest[:12]}..., the "
            f"manifest says {artifact.sha256[:12]}...: the file was modified or corrupted"
        )


def open_bundle(
    path: str | Path,
    trusted_keys: Sequence[TrustedKey],
    *,
    formats: Iterable[str] | None = None,
) -> VerifiedBundle:
    """Verify the bundle at ``path`` (folder or .tar). ``formats`` names the artifacts to
    check (the ones a device will use); ``None`` checks every artifact listed."""
    root = Path(path)
    keepalive: tempfile.TemporaryDirectory[str] | None = None
    if root.is_file() and tarfile.is_tarfile(root):
        keepalive = tempfile.TemporaryDirectory(prefix="edgefleet-bundle-")
        with tarfile.open(root) as archive:
            archive.extractall(keepalive.name, filter="data")
        root = _single_bundle_folder(Path(keepalive.name))
    manifest, manifest_bytes = read_manifest(root)
    try:
        signature = (root / SIGNATURE_FILE).read_bytes()
    except FileNotFoundError:
        raise SignatureError(f"{root} is unsigned: {SIGNATURE_FILE} is missing") from None
    signer = verify(manifest_bytes, signature, trusted_keys)
    wanted = manifest.formats() if formats is None else tuple(formats)
    for fmt in wanted:
        verify_artifact(root, manifest.artifact(fmt))
    return VerifiedBundle(
        root=root,
        manifest=manifest,
        manifest_bytes=manifest_bytes,
        signer=signer,
        verified_formats=wanted,
        _keepalive=keepalive,
    )


def _single_bundle_folder(extracted: Path) -> Path:
    if (extracted / MANIFEST_FILE).exists():
        return extracted
    children = [p for p in extracted.iterdir() if p.is_dir()]
    if len(children) == 1 and (children[0] / MANIFEST_FILE).exists():
        return children[0]
    raise ManifestError("the archive holds no manifest.json at its top or in its one folder")
