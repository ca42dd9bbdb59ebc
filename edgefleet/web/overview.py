"""The fleet overview: devices online and offline, the model versions and the rollout,
records scored, open alerts, the newest decisions."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, url_for
from werkzeug.wrappers.response import Response

from edgefleet.web.context import dashboard, fleet_or_404

bp = Blueprint("overview", __name__)


@bp.get("/")
def index() -> Response | str:
    fleets = dashboard().fleets()
    if len(fleets) == 1:
        return redirect(url_for("overview.fleet", fleet=fleets[0]))
    return render_template("index.html", page="index", summaries=_summaries(fleets))


def _summaries(fleets: list[str]) -> list[dict[str, object]]:
    return [dashboard().overview(fleet) for fleet in fleets]


@bp.get("/fleets/<fleet>/")
def fleet(fleet: str) -> str:
    fleet_or_404(fleet)
    return render_template("overview.html", page="overview", data=dashboard().overview(fleet))
