"""What the monitor store gives back: plain, frozen value objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edgefleet.central.monitor.validation import (
    ProfileLookup,
)

KnownVersion = ProfileLookup
"""``known_version(model_name, model_version)``: the version's :class:`VersionProfile`
(reports are checked against it), True (known, checked for form only), or False/None
(unknown: quarantined). See :data:`edgefleet.central.monitor.validation.ProfileLookup`."""


# -- value objects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestCounts:
    """What one :meth:`MonitorStore.ingest_many` call did with its messages; they add up to
    the number of messages given."""

    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    committed: tuple[tuple[str, str, int], ...] = field(default=(), compare=False, repr=False)
    """``(fleet, device_id, sequence)`` of every report this call found in the store after
    its commit (stored now or before): what the monitor acknowledges to the devices. Sums
    of counts leave it out."""

    def __add__(self, other: IngestCounts) -> IngestCounts:
        return IngestCounts(
            self.stored + other.stored,
            self.duplicates + other.duplicates,
            self.quarantined + other.quarantined,
        )

    @property
    def total(self) -> int:
        return self.stored + self.duplicates + self.quarantined


@dataclass(frozen=True)
class DeviceSummary:
    """One device of a fleet: what its latest report said (by arrival) and its totals."""

    device_id: str
    device_group: str
    model_name: str
    model_version: str
    cohort: str
    last_seen: float
    """When the latest report arrived (the monitor's clock, epoch seconds)."""
    last_window_end: float
    """The end of the latest report's window (the device's clock)."""
    last_sequence: int
    reports: int
    scored: int
    failed: int


@dataclass(frozen=True)
class FleetDevices:
    """A fleet's devices counted (the overview's figures): one aggregate query over the
    device rows, never a list of them, so that the overview does not grow with the fleet."""

    total: int
    online: int
    """Devices whose latest report arrived at or after the time asked about."""
    scored: int
    failed: int
    last_seen: float | None
    running: Mapping[tuple[str, str], int]
    """``(model_name, model_version)`` -> devices whose latest report is of it."""


@dataclass(frozen=True)
class QuarantinedReport:
    id: int
    fleet: str
    topic: str
    device_id: str | None
    """The device the topic names, if it names a valid one (not necessarily the sender)."""
    received: float
    reason: str
    payload_bytes: int
    payload_sha256: str
    excerpt: str
    """The first :data:`EXCERPT_BYTES` bytes, control and invalid bytes escaped."""


@dataclass(frozen=True)
class RefusalCount:
    """How many reports naming one device (on their topic) were refused, ever."""

    fleet: str
    device_id: str
    """The device the topics named, "" for reports on topics that named no valid device."""
    refused: int
    last_refused: float
    last_reason: str


AlertStatus = Literal["open", "closed"]


@dataclass(frozen=True)
class AlertRecord:
    id: int | None
    fleet: str
    created: float
    rule: str
    scope: str
    subject: str
    value: float
    threshold: float
    evidence: Mapping[str, Any] = field(default_factory=dict)
    status: AlertStatus = "open"


@dataclass(frozen=True)
class DecisionRecord:
    id: int | None
    fleet: str
    created: float
    action: str
    model_version: str
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
