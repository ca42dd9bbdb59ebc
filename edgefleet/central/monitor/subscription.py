"""The shared subscription a fleet's monitors take the reports by (docs/architecture.md
§§7b, 9): its group's name and its topic filter."""

from __future__ import annotations

from edgefleet.edge.mqtt import BrokerAddress, identity_secret
from edgefleet.edge.topics import DEFAULT_PREFIX, Topics, validate_name

__all__ = ["DEFAULT_GROUP", "monitor_group", "share_filter"]

DEFAULT_GROUP = "edgefleet-monitor"


def monitor_group(address: BrokerAddress, fleet: str) -> str:
    """The default shared-subscription group of a fleet's monitors: secret when they have an
    identity. Mosquitto 2.0's access list grants every SUBSCRIBE and only filters what it
    delivers, so a client that joins the group by name takes its share of the reports and
    drops them (measured: 10 of 20). A group named by a secret of the monitor identity
    (every process of one monitor identity computes the same) cannot be joined by guessing:
    another name makes another group, which takes nothing from this one."""
    secret = identity_secret(address, f"monitor share group {fleet}")
    return DEFAULT_GROUP if secret is None else f"{DEFAULT_GROUP}-{secret}"


def share_filter(group: str, fleet: str, prefix: str = DEFAULT_PREFIX) -> str:
    """``$share/{group}/{prefix}/{fleet}/devices/+/report``."""
    validate_name("shared subscription group", group)
    return f"$share/{group}/{Topics(fleet, prefix).all_reports}"
