"""The Flask app of the fleet dashboard and the browser demo (the Flask tutorial's shape:
an app factory, one blueprint per area, a fresh app per test).

Blueprints::

    overview   /                                 the first fleet's overview
               /fleets/FLEET/                    devices, versions and rollout, records, alerts
    models     /fleets/FLEET/models              the registry: versions, metrics, formats
               /models/NAME/VERSION/bundle.tar   a bundle as one file (edgefleet verify reads it)
               /models/NAME/VERSION/files/PATH   its manifest, signature or one artifact
    drift      /fleets/FLEET/drift               per-feature PSI and JS over time, histograms
    devices    /fleets/FLEET/devices[/ID]        every device; one device's measures
    rollouts   /fleets/FLEET/rollouts            state, history with evidence, promote/roll back
    demo       /demo                             the promoted web bundle, scoring in the browser
    api        /api/...                          the JSON the pages read (edgefleet/web/API.md)

Safety measures are in :mod:`edgefleet.web.security`.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from flask.globals import request_ctx
from werkzeug.exceptions import HTTPException

from edgefleet import __version__
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.predictions import PredictionStore
from edgefleet.errors import EdgefleetError
from edgefleet.web import api, demo, devices, drift, models, overview, rollouts, security
from edgefleet.web.config import WebConfig
from edgefleet.web.context import EXTENSION, WebState, status_of
from edgefleet.web.dashboard import Dashboard
from edgefleet.web.server import MAX_BODY

__all__ = ["WebConfig", "create_app"]

BLUEPRINTS = (
    overview.bp,
    models.bp,
    drift.bp,
    devices.bp,
    rollouts.bp,
    demo.bp,
    api.bp,
)


def create_app(config: WebConfig | Mapping[str, Any]) -> Flask:
    """The dashboard app for ``config`` (a :class:`WebConfig` or a mapping of its fields)."""
    settings = config if isinstance(config, WebConfig) else WebConfig.from_mapping(config)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key or secrets.token_hex(32),
        TRUSTED_HOSTS=None if settings.trusted_hosts is None else list(settings.trusted_hosts),
        MAX_CONTENT_LENGTH=MAX_BODY,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    security.install(app)

    @app.after_request
    def _api_not_cached(response: Response) -> Response:
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    store = MonitorStore(settings.db_url)
    dashboard = Dashboard(
        settings.home,
        store,
        broker=settings.broker_address(),
        fleets=settings.fleets,
        online_seconds=settings.online_seconds,
        prefix=settings.prefix,
    )
    # A reader: the table is made by the first batch run that writes it.
    predictions = PredictionStore(
        settings.predictions_url, settings.predictions_table, create=False
    )
    app.extensions[EXTENSION] = WebState(
        config=settings, dashboard=dashboard, predictions=predictions
    )
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    _add_template_helpers(app, settings, store)
    _add_error_handlers(app)
    return app


# -- errors ----------------------------------------------------------------------------------


def error_response(status: int, message: str) -> tuple[Response | str, int]:
    """JSON for the API, a page for everything else."""
    if request.path.startswith("/api/"):
        return jsonify({"error": message, "status": status}), status
    if request_ctx.url_adapter is None:
        # The Host header was refused (not a trusted host): no URL can be built for a page.
        return Response(message, status=status, mimetype="text/plain"), status
    return render_template("error.html", status=status, message=message), status


def _add_error_handlers(app: Flask) -> None:
    @app.errorhandler(EdgefleetError)
    def _edgefleet_error(error: EdgefleetError) -> tuple[Response | str, int]:
        return error_response(status_of(error), str(error))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> tuple[Response | str, int]:
        return error_response(error.code or 500, error.description or error.name)


# -- templates -------------------------------------------------------------------------------


def when(timestamp: float | None) -> str:
    if timestamp is None or not math.isfinite(timestamp):
        return "–"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "–"
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 10 ** -(digits + 1)):
        return f"{value:.{digits}g}"
    return f"{value:,.{digits}f}"


def fixed(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, never in scientific notation (table columns)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def percent(value: Any, digits: int = 1) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "–"
    return f"{value * 100:.{digits}f} %"


def size(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1000
    return str(value)  # unreachable: GB ends the loop


def table_columns(items: Any) -> list[str] | None:
    """The columns, when ``items`` reads best as a table: two or more mappings with the
    same keys and no nested values (the alerts behind a decision, say); else None."""
    if not isinstance(items, list) or len(items) < 2:
        return None
    if not all(isinstance(item, Mapping) for item in items):
        return None
    keys = list(items[0])
    if not keys or any(list(item) != keys for item in items):
        return None
    if any(isinstance(v, Mapping | list) for item in items for v in item.values()):
        return None
    return [str(key) for key in keys]


def _add_template_helpers(app: Flask, settings: WebConfig, store: MonitorStore) -> None:
    app.jinja_env.filters.update(
        when=when,
        ago=ago,
        num=number,
        fixed=fixed,
        pct=percent,
        size=size,
        table_columns=table_columns,
    )
    app.jinja_env.globals.update(
        version=__version__,
        writable=settings.write_token is not None,
        store_display=store.display,
        home=str(settings.home),
    )
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True

    @app.context_processor
    def _navigation() -> dict[str, Any]:
        state = app.extensions[EXTENSION]
        assert isinstance(state, WebState)
        args = request.view_args or {}
        fleet = args.get("fleet") or request.args.get("fleet")
        try:
            fleets = state.dashboard.fleets()
        except EdgefleetError:
            fleets = []
        if fleet not in fleets:
            fleet = fleets[0] if fleets else None
        return {"fleets": fleets, "fleet": fleet, "endpoint": request.endpoint or ""}
