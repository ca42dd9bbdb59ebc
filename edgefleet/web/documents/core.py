"""The dashboard's core: its fleets, the verified rollout state, caches and merges."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgefleet.central.keys import PRIVATE_NAME, PUBLIC_NAME
from edgefleet.central.monitor.store import (
    DeviceSummary,
    MonitorStore,
)
from edgefleet.central.monitor.validation import VersionProfile
from edgefleet.central.publish import state_file_for
from edgefleet.central.registry import Registry
from edgefleet.edge.aggregate import Aggregate
from edgefleet.edge.manifest import Manifest, parse_version
from edgefleet.edge.mqtt import BrokerAddress
from edgefleet.edge.rollout import ModelRef, is_expired, verify_rollout
from edgefleet.edge.signing import TrustedKey, load_private_key, load_public_key
from edgefleet.edge.status import DeviceStatus
from edgefleet.edge.topics import DEFAULT_PREFIX, check_identifier
from edgefleet.errors import EdgefleetError, InputError
from edgefleet.web.documents.common import (
    DRIFT_CACHE_SECONDS,
    DRIFT_CACHE_SIZE,
    Cached,
    Caches,
    NotFoundError,
    RolloutView,
    Skipped,
    cleaned,
)
from edgefleet.web.documents.shapes import ref_document


class DashboardCore:
    """What every area of the dashboard shares."""

    def __init__(
        self,
        home: Path,
        store: MonitorStore,
        *,
        broker: BrokerAddress,
        fleets: Sequence[str] = (),
        online_seconds: float = 120.0,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.home = Path(home)
        self.store = store
        self.broker = broker
        self.configured_fleets = tuple(check_identifier(f, "fleet name") for f in fleets)
        self.online_seconds = online_seconds
        self.prefix = prefix
        self.clock = clock
        self._caches = Caches()
        self._registry: Registry | None = None
        self._cache_lock = threading.Lock()
        # One rollout change at a time from this dashboard: two clicks must not both
        # compute "sequence + 1" from the same state.
        self._write_lock = threading.Lock()

    # -- fleets ----------------------------------------------------------------------------

    def fleets(self) -> list[str]:
        """The configured fleets, or every fleet that reported or has a rollout state."""
        if self.configured_fleets:
            return list(self.configured_fleets)
        names = set(self.store.fleets())
        folder = self.home / "fleets"
        if folder.is_dir():
            for path in folder.glob("*.json"):
                try:
                    names.add(check_identifier(path.stem, "fleet name"))
                except InputError:
                    continue
        return sorted(names)

    def require_fleet(self, fleet: str) -> str:
        if fleet not in self.fleets():
            raise NotFoundError(f"there is no fleet {fleet!r} on this dashboard")
        return fleet

    # -- keys and the rollout state ------------------------------------------------------------

    def trusted_keys(self) -> list[TrustedKey]:
        """The publisher's public key from HOME/keys (derived from the private key when the
        .pub file is missing); empty when there is neither."""
        keys = self.home / "keys"
        if (keys / PUBLIC_NAME).is_file():
            return [load_public_key(keys / PUBLIC_NAME)]
        if (keys / PRIVATE_NAME).is_file():
            private = load_private_key(keys / PRIVATE_NAME)
            return [TrustedKey.from_public_key(private.public_key())]
        return []

    def read_rollout(self, fleet: str) -> RolloutView:
        path = state_file_for(self.home, fleet)
        if not path.is_file():
            return RolloutView(None, {}, path)
        try:
            trusted = self.trusted_keys()
            if not trusted:
                raise InputError(f"no publisher key in {self.home / 'keys'} to verify it with")
            raw = json.loads(path.read_text(encoding="utf-8"))
            envelope = raw["rollout"]
            state = (
                None
                if envelope is None
                else verify_rollout(envelope.encode("ascii"), trusted, fleet=fleet)
            )
            models = {str(k): ModelRef.from_dict(v) for k, v in raw["models"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EdgefleetError) as error:
            return RolloutView(None, {}, path, f"the rollout state {path} cannot be used: {error}")
        return RolloutView(state, models, path)

    def rollout(self, fleet: str) -> dict[str, Any]:
        """The fleet's rollout state, the versions published to it and the actions that fit."""
        view = self.read_rollout(fleet)
        state = view.state
        stable = state.stable if state else None
        canary = state.canary if state else None
        published = sorted(view.models.values(), key=lambda r: (r.name, r.version_tuple))
        lower = [
            ref.version
            for ref in published
            if stable is not None
            and ref.name == stable.name
            and ref.version_tuple < stable.version_tuple
        ]
        return cleaned(
            {
                "fleet": fleet,
                "state": None
                if state is None
                else {
                    "sequence": state.sequence,
                    "rollout_id": state.rollout_id,
                    "issued": state.issued,
                    "expires": state.expires,
                    "expired": is_expired(
                        state, datetime.fromtimestamp(self.clock(), UTC), skew=timedelta(0)
                    ),
                    "stable": ref_document(stable),
                    "canary": ref_document(canary),
                    "canary_percent": state.canary_percent,
                    "rollback": state.rollback,
                },
                "source": str(view.path),
                "error": view.error,
                "published": [ref_document(ref) for ref in published],
                "actions": {
                    "promote": canary is not None,
                    "rollback_canary": canary is not None,
                    "rollback_to": sorted(lower, key=parse_version, reverse=True),
                },
            }
        )

    def _device(
        self, summary: DeviceSummary, now: float, status: DeviceStatus | None
    ) -> dict[str, Any]:
        age = max(0.0, now - summary.last_seen)
        return {
            # From the device's retained status (None until the monitor saw one).
            "status": None if status is None else asdict(status),
            "device_id": summary.device_id,
            "device_group": summary.device_group,
            "model_name": summary.model_name,
            "model_version": summary.model_version,
            "cohort": summary.cohort,
            "last_seen": summary.last_seen,
            "seconds_since_report": age,
            "online": age <= self.online_seconds,
            "last_window_end": summary.last_window_end,
            "last_sequence": summary.last_sequence,
            "reports": summary.reports,
            "scored": summary.scored,
            "failed": summary.failed,
        }

    def _cached(self, key: tuple[Any, ...]) -> dict[str, Any] | None:
        with self._cache_lock:
            cached = self._caches.drift.get(key)
        if cached is None or self.clock() - cached.created >= DRIFT_CACHE_SECONDS:
            return None
        return cached.value

    def _remember(self, key: tuple[Any, ...], document: dict[str, Any]) -> dict[str, Any]:
        with self._cache_lock:
            if len(self._caches.drift) >= DRIFT_CACHE_SIZE:
                self._caches.drift.clear()
            self._caches.drift[key] = Cached(self.clock(), document)
        return document

    def _merge(
        self,
        fleet: str,
        version: tuple[str, str],
        manifest: Manifest | None,
        skipped: Skipped,
        *,
        whole: bool = True,
        **filters: Any,
    ) -> Aggregate | None:
        """The merge of one version's stored reports (matching ``filters``), each checked
        against the version's profile; the reports that do not fit are noted in
        ``skipped`` and left out, so that one bad row never fails a page."""
        name, number = version
        profile = None if manifest is None else self.profile(manifest)
        merged = self.store.merged(
            fleet, model_name=name, model_version=number, expected=profile, **filters
        )
        skipped.add(merged, whole=whole)
        return merged.aggregate

    def profile(self, manifest: Manifest) -> VersionProfile | None:
        """The profile every report of the manifest's version must fit; None for a
        manifest no device could report on (the rows' majority then decides)."""
        key = (manifest.name, manifest.version)
        with self._cache_lock:
            cached = self._caches.profiles.get(key)
        if cached is not None and cached[0] is manifest:
            return cached[1]
        try:
            profile: VersionProfile | None = VersionProfile.from_manifest(manifest)
        except EdgefleetError:
            profile = None
        with self._cache_lock:
            self._caches.profiles[key] = (manifest, profile)
        return profile
