"""The status a device keeps retained on ``{prefix}/{fleet}/devices/{id}/status``: online or
offline (the last will), its model, its update state and problem, and its outbox (how many
reports wait to be sent or for a monitor's ack). The agent publishes more fields than this
reads; :meth:`DeviceStatus.decode` takes what the central side shows, checks each, and
ignores the rest, so an older monitor reads a newer device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgefleet.edge.sketch import MAX_COUNT
from edgefleet.edge.topics import check_identifier
from edgefleet.edge.wirejson import json_type, loads_strict
from edgefleet.errors import InputError

__all__ = ["MAX_PROBLEM", "MAX_STATUS_BYTES", "DeviceStatus"]

MAX_STATUS_BYTES = 16 * 1024
MAX_PROBLEM = 300
"""Characters of a device's problem text kept (a device chooses what it writes there)."""
_STATES = ("online", "offline")


@dataclass(frozen=True)
class DeviceStatus:
    device_id: str
    state: str
    model_version: str | None = None
    update_state: str | None = None
    problem: str | None = None
    outbox_pending: int = 0
    outbox_awaiting_ack: int = 0
    outbox_dropped: int = 0

    @classmethod
    def decode(cls, payload: bytes, device_id: str) -> DeviceStatus:
        """The status in ``payload``, published on ``device_id``'s topic; InputError if it
        is malformed or names another device."""
        raw = loads_strict(payload, max_bytes=MAX_STATUS_BYTES, what="status")
        if not isinstance(raw, dict):
            raise InputError(f"a status is a JSON object, not {json_type(raw)}")
        if raw.get("device_id") != device_id:
            raise InputError(f"a status on {device_id}'s topic names {raw.get('device_id')!r}")
        if raw.get("state") not in _STATES:
            raise InputError(
                f"status field 'state' is 'online' or 'offline', not {raw.get('state')!r}"
            )
        return cls(
            device_id=check_identifier(device_id, "status device id"),
            state=raw["state"],
            model_version=_text(raw, "model_version", 64),
            update_state=_text(raw, "update_state", 32),
            problem=_text(raw, "problem", MAX_PROBLEM, cut=True),
            outbox_pending=_count(raw, "outbox_pending"),
            outbox_awaiting_ack=_count(raw, "outbox_awaiting_ack"),
            outbox_dropped=_count(raw, "outbox_dropped"),
        )


def _text(raw: dict[str, Any], key: str, limit: int, *, cut: bool = False) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or (len(value) > limit and not cut):
        raise InputError(f"status field {key!r} must be text of at most {limit} characters")
    # Control characters never reach a page or a log line.
    return "".join(c if c.isprintable() else "?" for c in value[:limit])


def _count(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key, 0)
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise InputError(f"status field {key!r} must be a count, not {value!r}")
    return value
