"""The overview's "needs a person" panel: open escalation alerts, raised by the loop when
retraining does not help (:mod:`edgefleet.central.monitor.escalation`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from edgefleet.central.monitor.escalation import ESCALATION_RULE
from edgefleet.central.monitor.store import AlertRecord


def escalations(
    open_alerts: Sequence[AlertRecord], render: Callable[[AlertRecord], dict[str, Any]]
) -> list[dict[str, Any]]:
    """The open escalations, newest first, rendered like every other alert."""
    return [render(a) for a in reversed(open_alerts) if a.rule == ESCALATION_RULE]
