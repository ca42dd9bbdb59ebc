"""The dashboard's JSON API: what the pages read, and what scripts may read too.

Every response is JSON (``Cache-Control: no-store``); numbers that do not exist (a measure
with too little data) are ``null``, never NaN. Times are seconds since the epoch (UTC).
An error is ``{"error": MESSAGE, "status": CODE}`` with the same HTTP status: 400 bad
input, 403 refused, 404 unknown fleet/device/version, 405 wrong method, 409 the action
does not fit the fleet's state, 413 a body over 64 KiB, 502 the broker failed. Full
shapes: ``edgefleet/web/API.md``.

Read (GET)::

    /api/fleets                                  {"fleets": [NAME, ...]}
    /api/fleets/FLEET/overview                   devices online/offline, reports, records
                                                 scored and failed, open alerts, versions
                                                 with their role, rollout, newest decisions
    /api/fleets/FLEET/devices                    every device (last report, online, totals)
                                                 and the newest refused (quarantined) reports
    /api/fleets/FLEET/devices/ID                 one device: summary, measures of its
                                                 current version, per-feature drift, score
                                                 histogram, its alerts
    /api/fleets/FLEET/drift                      ?model_version=&since=&until=&buckets=
                                                 per-feature PSI/JS (whole window and per
                                                 time slice), reference vs current counts
    /api/fleets/FLEET/alerts                     ?status=all|open|closed, newest first
    /api/fleets/FLEET/decisions                  every decision with its evidence, newest first
    /api/fleets/FLEET/models                     registry versions: metrics, role, bundle
                                                 formats, signature check, download links
    /api/fleets/FLEET/rollout                    the verified rollout state and what can be done
    /api/fleets/FLEET/demo                       the promoted web bundle the demo serves
    /api/predictions/KEY                         the newest batch prediction of KEY (a
                                                 customer id): label, score and
                                                 probabilities (a regressor: value), model
                                                 version, when it was scored; 404 if none

Write (POST, JSON body optional), with the write token in ``X-Edgefleet-Token`` (or
``Authorization: Bearer TOKEN``); a browser request must come from the dashboard's own
origin (:mod:`edgefleet.web.security`)::

    /api/fleets/FLEET/rollout/promote            {"expect_sequence": N}
    /api/fleets/FLEET/rollout/rollback           {"expect_sequence": N, "to_version": "1.0.0"}

``expect_sequence`` (optional) is the rollout sequence the caller last saw: if the state has
moved on since, the change is refused with 409. Without ``to_version``, rollback drops the
canary; with it, stable is re-pointed to that lower, previously published version. Both
answer ``{"decision": {...}, "rollout": {...}, "warnings": [...]}`` (``warnings``: what was
replaced on the broker's rollout topic, if it held something that does not verify); the
decision is stored like the closed
loop's, with ``evidence.by = "dashboard"``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from edgefleet.central.predictions import check_key
from edgefleet.edge.jsonbody import parse_json
from edgefleet.edge.topics import check_identifier
from edgefleet.errors import InputError
from edgefleet.web.context import actor, dashboard, fleet_or_404, state
from edgefleet.web.dashboard import NotFoundError
from edgefleet.web.drift import drift_query
from edgefleet.web.rollouts import expected_sequence
from edgefleet.web.security import require_api_write

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/predictions/<path:key>")
def prediction(key: str) -> Response:
    found = state().predictions.get(check_key(key))
    if found is None:
        raise NotFoundError(
            f"no prediction for key {key[:80]!r} in table {state().config.predictions_table}"
        )
    return jsonify(found.to_json())


@bp.get("/fleets")
def fleets() -> Response:
    return jsonify({"fleets": dashboard().fleets()})


@bp.get("/fleets/<fleet>/overview")
def overview(fleet: str) -> Response:
    return jsonify(dashboard().overview(fleet_or_404(fleet)))


@bp.get("/fleets/<fleet>/devices")
def devices(fleet: str) -> Response:
    return jsonify(dashboard().devices(fleet_or_404(fleet)))


@bp.get("/fleets/<fleet>/devices/<device_id>")
def device(fleet: str, device_id: str) -> Response:
    fleet_or_404(fleet)
    try:
        check_identifier(device_id, "device id")
    except InputError:
        raise NotFoundError("no such device: device ids are letters, digits, _ . and -") from None
    return jsonify(dashboard().device(fleet, device_id))


@bp.get("/fleets/<fleet>/drift")
def drift(fleet: str) -> Response:
    return jsonify(dashboard().drift(fleet_or_404(fleet), **drift_query(request.args)))


@bp.get("/fleets/<fleet>/alerts")
def alerts(fleet: str) -> Response:
    status = request.args.get("status", "all")
    return jsonify(dashboard().alerts(fleet_or_404(fleet), status))


@bp.get("/fleets/<fleet>/decisions")
def decisions(fleet: str) -> Response:
    return jsonify(dashboard().decisions(fleet_or_404(fleet)))


@bp.get("/fleets/<fleet>/models")
def models(fleet: str) -> Response:
    document = dashboard().models(fleet_or_404(fleet))
    for model in document["models"]:
        if model["bundle"] is not None:
            name, version = model["name"], model["version"]
            model["bundle"]["download"] = url_for(
                "models.bundle_archive", name=name, version=version
            )
            for artifact in model["bundle"]["formats"]:
                artifact["download"] = url_for(
                    "models.bundle_file", name=name, version=version, path=artifact["path"]
                )
    return jsonify(document)


@bp.get("/fleets/<fleet>/rollout")
def rollout(fleet: str) -> Response:
    document = dashboard().rollout(fleet_or_404(fleet))
    document["actions"]["writable"] = state().config.write_token is not None
    return jsonify(document)


@bp.get("/fleets/<fleet>/demo")
def demo(fleet: str) -> Response:
    document = dashboard().demo(fleet_or_404(fleet))
    document["page"] = url_for("demo.page", fleet=fleet)
    return jsonify(document)


# The write bodies are flat objects; deeper is an attack on the parser, not a request.
MAX_DEPTH = 4


def _body() -> dict[str, Any]:
    data = request.get_data()  # Flask refuses more than MAX_CONTENT_LENGTH (413)
    if not data:
        return {}
    body = parse_json(data, MAX_DEPTH)
    if not isinstance(body, dict):
        raise InputError("the request body must be a JSON object")
    unknown = sorted(set(body) - {"expect_sequence", "to_version"})
    if unknown:
        # Named, but never echoed back whole: the body may be 64 KiB of made-up names.
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        named = ", ".join(name[:40] for name in unknown[:5])
        raise InputError(f"unknown field(s) {named}{more}")
    return body


@bp.post("/fleets/<fleet>/rollout/promote")
def promote(fleet: str) -> Response:
    fleet_or_404(fleet)
    require_api_write(request, state().config.write_token)
    body = _body()
    result = dashboard().promote(
        fleet, expect_sequence=expected_sequence(body.get("expect_sequence")), actor=actor()
    )
    return jsonify(result)


@bp.post("/fleets/<fleet>/rollout/rollback")
def rollback(fleet: str) -> Response:
    fleet_or_404(fleet)
    require_api_write(request, state().config.write_token)
    body = _body()
    to_version = body.get("to_version")
    if to_version is not None and not isinstance(to_version, str):
        raise InputError("to_version must be a version string such as 1.0.0")
    result = dashboard().rollback(
        fleet,
        to_version=to_version or None,
        expect_sequence=expected_sequence(body.get("expect_sequence")),
        actor=actor(),
    )
    return jsonify(result)
