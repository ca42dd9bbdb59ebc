"""The browser demo: the telco app's form, scored in the browser by onnxruntime-web from
the web bundle of the fleet's promoted (stable) model.

The server checks the bundle before a browser gets it (:meth:`Dashboard.demo`: the very
manifest the signed rollout state names, signed by the publisher key, the web artifact
intact). The browser checks it again on its own (``static/demo.js``): the manifest's
sha256 is the rollout state's, its Ed25519 signature verifies with WebCrypto, and
``edgefleet.js`` refuses a model whose sha256 is not the manifest's, then runs the golden
vectors. Once loaded, everything runs in the page: it keeps scoring with the network gone.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from flask import Blueprint, render_template, request, send_from_directory, url_for
from flask.typing import ResponseReturnValue

from edgefleet.edge.bundle import MANIFEST_FILE, SIGNATURE_FILE
from edgefleet.errors import EdgefleetError
from edgefleet.web.context import dashboard, fleet_or_404, status_of
from edgefleet.web.dashboard import NotFoundError

bp = Blueprint("demo", __name__)

# What a browser needs of a bundle, by suffix; anything else (the other formats, the
# bundle's own page with its inline script) is not served here.
_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".json": "application/json",
    ".sig": "application/json",
}


@bp.get("/demo")
def page() -> ResponseReturnValue:
    fleets = dashboard().fleets()
    fleet = request.args.get("fleet") or (fleets[0] if fleets else None)
    if fleet is None:
        raise NotFoundError("no fleet to take a model from: publish one first")
    fleet_or_404(fleet)
    try:
        bundle = dashboard().demo(fleet)
    except EdgefleetError as error:
        return render_template(
            "demo.html", page="demo", bundle=None, error=str(error), demo_fleet=fleet
        ), status_of(error)
    manifest_url = url_for("demo.bundle_file", folder=bundle["folder"], path=MANIFEST_FILE)
    base = manifest_url[: -len(MANIFEST_FILE)]
    return render_template(
        "demo.html", page="demo", bundle=bundle, bundle_url=base, error=None, demo_fleet=fleet
    )


@bp.get("/demo/bundle/<folder>/<path:path>")
def bundle_file(folder: str, path: str) -> ResponseReturnValue:
    parts = PurePosixPath(path)
    allowed = path in (MANIFEST_FILE, SIGNATURE_FILE) or (
        parts.parts[0] == "web" and parts.suffix in _TYPES and ".." not in parts.parts
    )
    bundles = dashboard().home / "bundles"
    if folder.startswith(".") or not allowed or not (bundles / folder / MANIFEST_FILE).is_file():
        raise NotFoundError(f"no file {path!r} in a bundle {folder!r}")
    response = send_from_directory(
        bundles / folder, path, mimetype=_TYPES.get(parts.suffix, "application/octet-stream")
    )
    # Revalidated on every load (an ETag check): a re-exported bundle is never stale.
    response.headers["Cache-Control"] = "no-cache"
    return response
