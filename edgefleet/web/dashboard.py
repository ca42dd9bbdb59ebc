"""What the dashboard knows about a fleet, as JSON-able documents.

One :class:`Dashboard` per Flask app reads the monitor store (reports, alerts, decisions,
quarantine), the registry and the bundles in the home folder, and the rollout state file
``HOME/fleets/FLEET.json`` (verified with the publisher's public key, so a dashboard never
shows a state it could not trust). Every method returns plain dicts and lists of str, int,
float (never NaN: JSON has none), bool and None. The JSON API returns them as they are and
the pages render the very same documents, so a page never shows a number the API does not.

Writes (promote, roll back) go through :func:`edgefleet.central.publish.promote` and
:func:`~edgefleet.central.publish.rollback` with the publisher key from ``HOME/keys``, and
each is recorded as a decision with its evidence, like the closed loop's.

The documents of each area are made in ``documents/`` (one module per area: devices,
overview, drift, models, alerts, rollouts, demo; ``core.py`` and ``catalog.py`` hold what
they share); :class:`Dashboard` puts the areas together.
"""

from __future__ import annotations

from edgefleet.web.documents.alerts import AlertsArea
from edgefleet.web.documents.common import (
    DISPLAY_SCORE_BINS,
    DRIFT_CACHE_SECONDS,
    MAX_BUCKETS,
    ConflictError,
    NotFoundError,
    RolloutView,
    clean,
    cleaned,
)
from edgefleet.web.documents.demo import DemoArea
from edgefleet.web.documents.devices import DevicesArea
from edgefleet.web.documents.drift import DriftArea
from edgefleet.web.documents.models import ModelsArea
from edgefleet.web.documents.overview import OverviewArea
from edgefleet.web.documents.rollouts import RolloutsArea

__all__ = [
    "DISPLAY_SCORE_BINS",
    "DRIFT_CACHE_SECONDS",
    "MAX_BUCKETS",
    "ConflictError",
    "Dashboard",
    "NotFoundError",
    "RolloutView",
    "clean",
    "cleaned",
]


class Dashboard(
    DevicesArea, OverviewArea, DriftArea, ModelsArea, AlertsArea, RolloutsArea, DemoArea
):
    """The data behind the dashboard of the fleets of one home folder."""
