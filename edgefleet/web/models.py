"""The model registry as a fleet sees it: versions, metrics, formats with their parity,
the bundle's signature, and downloads of each bundle."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from flask import Blueprint, render_template, send_file, send_from_directory
from flask.typing import ResponseReturnValue

from edgefleet.edge.bundle import MANIFEST_FILE, SIGNATURE_FILE
from edgefleet.edge.manifest import Manifest
from edgefleet.web.context import dashboard, fleet_or_404
from edgefleet.web.dashboard import NotFoundError

bp = Blueprint("models", __name__)

# Bundles are tens of MB (the browser runtime): built on disk beyond this, not in memory.
_SPOOL_BYTES = 8 * 1024 * 1024


@bp.get("/fleets/<fleet>/models")
def registry(fleet: str) -> str:
    fleet_or_404(fleet)
    return render_template("models.html", page="models", data=dashboard().models(fleet))


def _bundle_folder(name: str, version: str) -> Path:
    """The exported bundle of a registered version; 404 for anything else."""
    registered = dashboard().registry_version(name, version)
    root = dashboard().bundle_root(registered.name, registered.version)
    if not (root / MANIFEST_FILE).is_file():
        raise NotFoundError(f"{registered.label} was never exported to {root}")
    return root


@bp.get("/models/<name>/<version>/bundle.tar")
def bundle_archive(name: str, version: str) -> ResponseReturnValue:
    """The whole bundle folder as one tar (``edgefleet verify`` and ``score`` read it)."""
    root = _bundle_folder(name, version)
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 - send_file closes it
    with tarfile.open(fileobj=spool, mode="w") as archive:
        for path in sorted(root.rglob("*")):
            # Regular files only: a symlink in a bundle folder must not export what it points at.
            if path.is_file() and not path.is_symlink():
                archive.add(path, arcname=f"{root.name}/{path.relative_to(root)}", recursive=False)
    spool.seek(0)
    return send_file(
        spool,
        mimetype="application/x-tar",
        as_attachment=True,
        download_name=f"{root.name}.tar",
        max_age=0,
    )


@bp.get("/models/<name>/<version>/files/<path:path>")
def bundle_file(name: str, version: str, path: str) -> ResponseReturnValue:
    """The manifest, its signature or one artifact the manifest lists; nothing else."""
    root = _bundle_folder(name, version)
    manifest = Manifest.from_bytes((root / MANIFEST_FILE).read_bytes())
    allowed = {MANIFEST_FILE, SIGNATURE_FILE} | {a.path for a in manifest.artifacts}
    if path not in allowed:
        raise NotFoundError(f"{path!r} is not a file of the bundle {root.name}")
    return send_from_directory(
        root, path, as_attachment=True, download_name=path.replace("/", "-"), max_age=0
    )
