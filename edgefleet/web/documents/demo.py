"""The browser demo area: the promoted model's web bundle, checked first."""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization

from edgefleet.edge.bundle import MANIFEST_FILE, open_bundle
from edgefleet.errors import EdgefleetError
from edgefleet.web.documents.catalog import Catalog
from edgefleet.web.documents.common import ConflictError, cleaned


class DemoArea(Catalog):
    """Demo document."""

    # -- the browser demo --------------------------------------------------------------------

    def demo(self, fleet: str) -> dict[str, Any]:
        """The web bundle of the fleet's promoted (stable) model, checked here before any
        browser gets it: the bundle in HOME/bundles must be the very manifest the rollout
        state points at, signed by the publisher key, with an intact web artifact."""
        view = self.read_rollout(fleet)
        if view.error is not None:
            raise ConflictError(view.error)
        stable = view.state.stable if view.state else None
        if stable is None:
            raise ConflictError(f"fleet {fleet} has no promoted model yet: publish one first")
        root = self.bundle_root(stable.name, stable.version)
        manifest_path = root / MANIFEST_FILE
        if not manifest_path.is_file():
            raise ConflictError(
                f"{stable.label} is promoted on fleet {fleet}, but its bundle is not in "
                f"{root.parent}: export it there to serve it to browsers"
            )
        digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
        if digest != stable.manifest_sha256:
            raise ConflictError(
                f"the bundle in {root} is not the {stable.label} the fleet runs (manifest "
                f"sha256 {digest[:12]}..., the rollout state says {stable.manifest_sha256[:12]}...)"
            )
        if "web" not in stable.artifacts:
            raise ConflictError(
                f"{stable.label} has no web artifact: export it with the web format for the demo"
            )
        trusted = self.trusted_keys()
        try:
            verified = open_bundle(root, trusted, formats=["web"])
        except EdgefleetError as error:
            raise ConflictError(f"the bundle of {stable.label} does not verify: {error}") from None
        raw_key = verified.signer.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert view.state is not None
        return cleaned(
            {
                "fleet": fleet,
                "name": stable.name,
                "version": stable.version,
                "label": stable.label,
                "folder": root.name,
                "manifest_sha256": digest,
                "key_id": verified.signer.key_id,
                "public_key": raw_key.hex(),
                "sequence": view.state.sequence,
            }
        )
