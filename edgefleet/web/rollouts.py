"""Rollouts: the fleet's signed state, the versions published to it, every decision with
its evidence, and the promote / roll back buttons (confirmed in a dialog, then a POST
that passes :func:`edgefleet.web.security.require_form_write`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from edgefleet.errors import EdgefleetError, InputError
from edgefleet.web.context import actor, dashboard, fleet_or_404, state, status_of
from edgefleet.web.security import require_form_write

bp = Blueprint("rollouts", __name__)


def _page(fleet: str, *, error: str | None = None) -> str:
    board = dashboard()
    return render_template(
        "rollouts.html",
        page="rollouts",
        rollout=board.rollout(fleet),
        decisions=board.decisions(fleet)["decisions"],
        alerts=board.alerts(fleet)["alerts"],
        error=error,
    )


@bp.get("/fleets/<fleet>/rollouts")
def history(fleet: str) -> str:
    fleet_or_404(fleet)
    return _page(fleet)


def expected_sequence(raw: Any) -> int | None:
    """The rollout sequence the client saw (a change is refused if it moved on since)."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise InputError("expect_sequence must be a whole number")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise InputError(f"expect_sequence must be a whole number, not {raw!r}") from None


def _write(fleet: str, action: Callable[[], dict[str, Any]]) -> ResponseReturnValue:
    fleet_or_404(fleet)
    try:
        require_form_write(request, state().config.write_token)
        result = action()
    except HTTPException as refused:
        return _page(fleet, error=refused.description), refused.code or 403
    except EdgefleetError as error:
        return _page(fleet, error=str(error)), status_of(error)
    flash(result["decision"]["reason"], "ok")
    for warning in result.get("warnings", []):
        flash(f"warning: {warning}", "warning")
    # 303: the browser follows with a GET, so a reload does not post again.
    return redirect(url_for("rollouts.history", fleet=fleet), code=303)


@bp.post("/fleets/<fleet>/rollouts/promote")
def promote(fleet: str) -> ResponseReturnValue:
    return _write(
        fleet,
        lambda: dashboard().promote(
            fleet,
            expect_sequence=expected_sequence(request.form.get("expect_sequence")),
            actor=actor(),
        ),
    )


@bp.post("/fleets/<fleet>/rollouts/rollback")
def rollback(fleet: str) -> ResponseReturnValue:
    return _write(
        fleet,
        lambda: dashboard().rollback(
            fleet,
            to_version=request.form.get("to_version") or None,
            expect_sequence=expected_sequence(request.form.get("expect_sequence")),
            actor=actor(),
        ),
    )
