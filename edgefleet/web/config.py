"""The dashboard's configuration: one frozen value, validated on creation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgefleet.edge.mqtt import BrokerAddress
from edgefleet.edge.topics import DEFAULT_PREFIX, check_identifier
from edgefleet.errors import InputError

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
MIN_TOKEN_LENGTH = 16
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class WebConfig:
    """What :func:`edgefleet.web.app.create_app` needs.

    home
        The home folder: registry, bundles (``bundles/NAME-VERSION``), publisher keys
        (``keys/``) and rollout state files (``fleets/FLEET.json``).
    db
        The monitor database URL (default: ``sqlite:///HOME/monitor.db``).
    broker
        Where promote and roll back publish the new rollout state.
    fleets
        The fleets to show (default: every fleet that reported or has a state file).
    write_token
        The secret a promote or roll back must present; None makes the dashboard read-only.
    secret_key
        Signs the session cookie (which holds the CSRF token); random per process if None.
    online_seconds
        A device whose last report arrived longer ago than this counts as offline.
    trusted_hosts
        Host names the dashboard answers to (the Host header), against DNS rebinding; None
        answers any.
    predictions_db, predictions_table
        Where ``GET /api/predictions/KEY`` looks (``edgefleet batch score --db``'s table);
        the database defaults to the monitor's.
    """

    home: Path
    db: str | None = None
    broker: str | BrokerAddress = DEFAULT_BROKER
    fleets: tuple[str, ...] = ()
    write_token: str | None = None
    secret_key: str | None = None
    online_seconds: float = 120.0
    prefix: str = DEFAULT_PREFIX
    trusted_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS
    predictions_db: str | None = None
    predictions_table: str = "predictions"

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home))
        if isinstance(self.fleets, str):
            raise InputError("fleets must be a list of fleet names, not one string")
        object.__setattr__(
            self, "fleets", tuple(check_identifier(f, "fleet name") for f in self.fleets)
        )
        if self.write_token is not None and (
            not isinstance(self.write_token, str) or len(self.write_token) < MIN_TOKEN_LENGTH
        ):
            raise InputError(
                f"the write token must be at least {MIN_TOKEN_LENGTH} characters: a short one "
                "can be guessed"
            )
        if isinstance(self.online_seconds, bool) or not (
            isinstance(self.online_seconds, int | float)
            and math.isfinite(self.online_seconds)
            and self.online_seconds > 0
        ):
            raise InputError(f"online_seconds must be a number > 0, not {self.online_seconds!r}")
        if self.trusted_hosts is not None:
            if isinstance(self.trusted_hosts, str):
                raise InputError("trusted_hosts must be a list of host names")
            object.__setattr__(self, "trusted_hosts", tuple(self.trusted_hosts))
        self.broker_address()  # an unusable URL fails here, not at the first promote

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.home / 'monitor.db'}"

    @property
    def predictions_url(self) -> str:
        return self.predictions_db or self.db_url

    def broker_address(self) -> BrokerAddress:
        if isinstance(self.broker, BrokerAddress):
            return self.broker
        return BrokerAddress.parse(self.broker)

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> WebConfig:
        """A config from a mapping of the field names (``home`` required)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise InputError(
                f"unknown dashboard setting(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        if "home" not in settings:
            raise InputError("the dashboard needs a home folder (setting 'home')")
        values = dict(settings)
        for name in ("fleets", "trusted_hosts"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)
