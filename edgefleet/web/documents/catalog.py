"""Model versions: the registry, the manifests devices run and the exported bundles."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from edgefleet.central.registry import ModelVersion, Registry
from edgefleet.edge.bundle import MANIFEST_FILE, SIGNATURE_FILE, open_bundle
from edgefleet.edge.manifest import Manifest
from edgefleet.errors import EdgefleetError
from edgefleet.web.documents.common import NotFoundError
from edgefleet.web.documents.core import DashboardCore


class Catalog(DashboardCore):
    """Registry versions, manifests and bundles."""

    # -- models and bundles ------------------------------------------------------------------

    def registry_versions(self) -> list[ModelVersion]:
        # Registry() creates its database: a dashboard of a home without one shows nothing
        # rather than writing there.
        if not (self.home / "registry.db").is_file():
            return []
        with self._cache_lock:
            if self._registry is None:
                self._registry = Registry(self.home)
            registry = self._registry
        return registry.versions()

    def registry_version(self, name: str, version: str) -> ModelVersion:
        for candidate in self.registry_versions():
            if (candidate.name, candidate.version) == (name, version):
                return candidate
        raise NotFoundError(f"the registry has no model {name!r} version {version!r}")

    def bundle_root(self, name: str, version: str) -> Path:
        return self.home / "bundles" / f"{name}-{version}"

    def manifest(self, name: str, version: str) -> Manifest | None:
        """The manifest devices run for a version: the exported bundle's, else one built from
        the registry (the same reference profile and metrics); None if neither exists."""
        path = self.bundle_root(name, version) / MANIFEST_FILE
        stamp = path.stat().st_mtime if path.is_file() else -1.0
        key = (name, version)
        with self._cache_lock:
            cached = self._caches.manifests.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if stamp >= 0:
            manifest = Manifest.from_bytes(path.read_bytes(), source=str(path))
        else:
            try:
                registered = self.registry_version(name, version)
            except NotFoundError:
                return None
            card = registered.load_card()
            manifest = Manifest(
                name=registered.name,
                version=registered.version,
                created=registered.created.isoformat(timespec="seconds"),
                model_family=registered.family,
                target=registered.target,
                data_sha256=registered.data_sha256,
                schema=card.schema,
                metrics=dict(registered.metrics),
                reference=card.reference,
                golden=card.golden,
                artifacts=(),
                params=dict(registered.params),
            )
        with self._cache_lock:
            self._caches.manifests[key] = (stamp, manifest)
        return manifest

    def bundle(self, name: str, version: str) -> dict[str, Any] | None:
        """The exported bundle of a version: its formats, and whether its signature and
        every artifact verify with the publisher key. None if it was never exported."""
        root = self.bundle_root(name, version)
        manifest_path = root / MANIFEST_FILE
        if not manifest_path.is_file():
            return None
        stamps = tuple(
            p.stat().st_mtime if p.exists() else -1.0
            for p in (manifest_path, root / SIGNATURE_FILE)
        )
        with self._cache_lock:
            cached = self._caches.bundles.get(root)
        if cached is not None and cached[0] == stamps:
            return cached[1]
        manifest = Manifest.from_bytes(manifest_path.read_bytes(), source=str(manifest_path))
        signer: str | None = None
        error: str | None = None
        try:
            signer = open_bundle(root, self.trusted_keys()).signer.key_id
        except EdgefleetError as failure:
            error = str(failure)
        document = {
            "folder": root.name,
            "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
            "verified": error is None,
            "signed_by": signer,
            "error": error,
            "tolerance": manifest.tolerance,
            "formats": [
                {
                    "format": a.format,
                    "path": a.path,
                    "bytes": a.bytes,
                    "sha256": a.sha256,
                    "runtime": a.runtime,
                    "parity": manifest.parity.get(a.format),
                }
                for a in manifest.artifacts
            ],
        }
        with self._cache_lock:
            self._caches.bundles[root] = (stamps, document)
        return document
