"""The dashboard served for production: waitress through :mod:`edgefleet.edge.httpserver`
(never Werkzeug's development server), with limits fit for a few people and their
browsers. Flask refuses a body over :data:`MAX_BODY` too, on what it reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.edge.httpserver import HttpServer, ServerLimits

if TYPE_CHECKING:
    from flask import Flask

# Promote and roll back send a few fields; nothing the dashboard takes is larger.
MAX_BODY = 64 * 1024

DASHBOARD_LIMITS = ServerLimits(
    max_body=MAX_BODY,
    max_header=32 * 1024,  # room for the session cookie and a proxy's headers
    timeout=60,
    # A browser keeps about six connections per tab.
    connections=64,
    threads=8,
)


def dashboard_server(
    app: Flask, host: str, port: int, limits: ServerLimits = DASHBOARD_LIMITS
) -> HttpServer:
    """``app`` bound to ``host:port`` (0: any free port), not serving yet."""
    return HttpServer(app, host, port, limits)
