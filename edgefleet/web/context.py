"""The dashboard of the running app, for the blueprints (``current_app`` holds it)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, request

from edgefleet.central.predictions import PredictionStore
from edgefleet.errors import BrokerError, EdgefleetError, InputError, RequestError, RolloutError
from edgefleet.web.config import WebConfig
from edgefleet.web.dashboard import ConflictError, Dashboard, NotFoundError

EXTENSION = "edgefleet"


@dataclass(frozen=True)
class WebState:
    config: WebConfig
    dashboard: Dashboard
    predictions: PredictionStore


def state() -> WebState:
    found = current_app.extensions[EXTENSION]
    assert isinstance(found, WebState)
    return found


def dashboard() -> Dashboard:
    return state().dashboard


def fleet_or_404(fleet: str) -> str:
    """``fleet`` if the dashboard shows it; NotFoundError (404) otherwise."""
    return dashboard().require_fleet(fleet)


def actor() -> str:
    """Who asked for a change, for the decision's evidence: the client address."""
    return f"from {request.remote_addr or 'unknown address'}"


_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (InputError, 400),
    (RolloutError, 409),
    (BrokerError, 502),
    (EdgefleetError, 500),
)


def status_of(error: Exception) -> int:
    """The HTTP status of an edgefleet error: 404 unknown, 409 does not fit the state, 400
    bad input (413 too large), 502 the broker failed."""
    if isinstance(error, RequestError):
        return error.status
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500
