"""``edgefleet devices list``: the identity book joined with what the monitor saw."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.central.identity.authority import ca_folder
from edgefleet.central.identity.records import IdentityBook, IdentityRecord


@dataclass(frozen=True)
class DeviceRow:
    fleet: str
    device_id: str
    state: str
    """``enrolled`` or ``revoked``."""
    enrolled: float
    revoked: float | None
    last_seen: float | None
    """When the monitor stored the device's latest report (None: never, or no database)."""
    refused: int
    """Reports on the device's topic that the monitor quarantined."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def device_rows(home: Path, fleet: str | None = None, db: str | None = None) -> list[DeviceRow]:
    """One row per device (its newest certificate), sorted by fleet and id."""
    newest: dict[tuple[str, str], IdentityRecord] = {}
    for record in IdentityBook(ca_folder(home)).records():
        if record.kind != "device" or record.fleet is None:
            continue
        if fleet is not None and record.fleet != fleet:
            continue
        key = (record.fleet, record.name)
        if key not in newest or record.issued >= newest[key].issued:
            newest[key] = record
    seen, refused = _monitor_view(home, {f for f, _ in newest}, db)
    return [
        DeviceRow(
            fleet=f,
            device_id=d,
            state="enrolled" if r.active else "revoked",
            enrolled=r.issued,
            revoked=r.revoked,
            last_seen=seen.get((f, d)),
            refused=refused.get((f, d), 0),
        )
        for (f, d), r in sorted(newest.items())
    ]


def _monitor_view(
    home: Path, fleets: set[str], db: str | None
) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], int]]:
    default = Path(home) / "monitor.db"
    if db is None and not default.exists():
        return {}, {}
    from edgefleet.central.monitor.store import MonitorStore

    seen: dict[tuple[str, str], float] = {}
    refused: dict[tuple[str, str], int] = {}
    with MonitorStore(db or f"sqlite:///{default}") as store:
        for fleet in fleets:
            for device in store.devices(fleet):
                seen[(fleet, device.device_id)] = device.last_seen
            for device_id, count in store.refusals_by_device(fleet).items():
                refused[(fleet, device_id)] = count
    return seen, refused
