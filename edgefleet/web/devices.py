"""Every device of a fleet (online or not by its last report), the reports the monitor
refused, and one device's own measures."""

from __future__ import annotations

from flask import Blueprint, render_template, url_for

from edgefleet.edge.topics import check_identifier
from edgefleet.errors import InputError
from edgefleet.web.context import dashboard, fleet_or_404
from edgefleet.web.dashboard import NotFoundError

bp = Blueprint("devices", __name__)


@bp.get("/fleets/<fleet>/devices")
def listing(fleet: str) -> str:
    fleet_or_404(fleet)
    return render_template("devices.html", page="devices", data=dashboard().devices(fleet))


@bp.get("/fleets/<fleet>/devices/<device_id>")
def device(fleet: str, device_id: str) -> str:
    fleet_or_404(fleet)
    try:
        check_identifier(device_id, "device id")
    except InputError:
        raise NotFoundError("no such device: device ids are letters, digits, _ . and -") from None
    data = dashboard().device(fleet, device_id)
    api_url = url_for("api.device", fleet=fleet, device_id=device_id)
    return render_template("device.html", page="devices", data=data, api_url=api_url)
