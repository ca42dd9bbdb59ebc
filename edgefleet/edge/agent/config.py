"""What an edge agent is configured with, and its own error."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.edge.mqtt import BrokerAddress
from edgefleet.edge.signing import TrustedKey
from edgefleet.errors import EdgefleetError, InputError

__all__ = ["AgentConfig", "NoModelError"]


class NoModelError(EdgefleetError):
    """The agent has no verified model to score with yet."""


@dataclass(frozen=True)
class AgentConfig:
    fleet: str
    device_id: str
    state_dir: Path
    trusted_keys: tuple[TrustedKey, ...]
    broker: BrokerAddress
    prefix: str = "edgefleet"
    device_group: str = "default"
    format: str | None = None
    report_seconds: float = 30.0
    report_records: int = 5000
    fetch_timeout: float = 60.0
    outbox_messages: int = 10_000
    outbox_bytes: int = 50 * 1024 * 1024
    outbox_ttl_seconds: float = 7 * 24 * 3600
    ack_timeout: float = 30.0
    """Seconds a sent report waits for a monitor's ack before it is sent again."""
    ack_timeout_max: float = 600.0
    """The cap of the doubling re-send timeout."""
    status_seconds: float = 60.0
    """How often the retained status is refreshed (outbox counts change between events)."""
    clock_skew: float = 300.0
    """Seconds a rollout state may look expired by this device's clock and still count:
    device and publisher clocks disagree a little (docs/architecture.md §6)."""
    clock: Callable[[], float] = time.time
    """The wall clock expiry is judged by (tests move it instead of waiting)."""

    def __post_init__(self) -> None:
        if not 0 < self.ack_timeout <= self.ack_timeout_max:
            raise InputError(
                f"--ack-timeout must be above 0 and at most {self.ack_timeout_max:g} s, "
                f"not {self.ack_timeout:g}"
            )
        if not self.status_seconds > 0:
            raise InputError(f"status_seconds must be above 0, not {self.status_seconds:g}")
        if not 0 <= self.clock_skew <= 86_400:
            raise InputError(
                f"--clock-skew must be from 0 to 86400 seconds, not {self.clock_skew:g}: set "
                "the device's clock (NTP) rather than allow more"
            )
