"""The drift view: per-feature PSI and Jensen-Shannon distance of one model version's
reports against its training reference, over time, with reference and current histograms
(the charts are drawn by ``static/dashboard.js`` from ``/api/fleets/FLEET/drift``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, render_template, request, url_for

from edgefleet.errors import InputError
from edgefleet.web.context import dashboard, fleet_or_404

bp = Blueprint("drift", __name__)

WINDOWS = (("all", None), ("last 15 min", 900.0), ("last hour", 3600.0), ("last day", 86400.0))
"""The windows the page offers, as seconds before now (None: every report)."""


def _float(args: Mapping[str, str], name: str) -> float | None:
    raw = args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InputError(
            f"{name} must be a number of seconds since the epoch, not {raw!r}"
        ) from None
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number")
    return value


def _whole(since: float, seconds: float) -> float:
    """``since`` on a whole minute (a whole hour for a day or more): the window is then
    read from rollups alone (docs/architecture.md §7b)."""
    grid = 3600 if seconds >= 86_400 else 60
    return since // grid * grid


def drift_query(args: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments of :meth:`Dashboard.drift` from a query string."""
    buckets_text = args.get("buckets") or "12"
    try:
        buckets = int(buckets_text)
    except ValueError:
        raise InputError(f"buckets must be a whole number, not {buckets_text!r}") from None
    return {
        "model_version": args.get("model_version") or None,
        "since": _float(args, "since"),
        "until": _float(args, "until"),
        "buckets": buckets,
    }


@bp.get("/fleets/<fleet>/drift")
def view(fleet: str) -> str:
    fleet_or_404(fleet)
    query = drift_query(request.args)
    data = dashboard().drift(fleet, **query)
    now = dashboard().clock()
    version = data["model_version"]
    windows = [
        {
            "label": label,
            "url": url_for(
                "drift.view",
                fleet=fleet,
                model_version=version,
                since=None if seconds is None else f"{_whole(now - seconds, seconds):.0f}",
            ),
            "active": (query["since"] is None) == (seconds is None)
            and (seconds is None or abs(now - seconds - (query["since"] or 0)) < 120),
        }
        for label, seconds in WINDOWS
    ]
    api_url = url_for(
        "api.drift",
        fleet=fleet,
        model_version=version,
        since=request.args.get("since") or None,
        until=request.args.get("until") or None,
        buckets=request.args.get("buckets") or None,
    )
    features = data.get("features") or []
    # Most drifted first; the rows keep their index in the API's list for the charts.
    order = sorted(
        range(len(features)),
        key=lambda i: -1.0 if features[i]["js"] is None else -features[i]["js"],
    )
    return render_template(
        "drift.html", page="drift", data=data, windows=windows, api_url=api_url, order=order
    )
