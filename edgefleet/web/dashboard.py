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
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from edgefleet.central.keys import PRIVATE_NAME, PUBLIC_NAME
from edgefleet.central.monitor.alerts import describe
from edgefleet.central.monitor.measures import Measures, measure
from edgefleet.central.monitor.merging import Merged, SkippedReport
from edgefleet.central.monitor.store import (
    AlertRecord,
    DecisionRecord,
    DeviceSummary,
    MonitorStore,
)
from edgefleet.central.monitor.validation import VersionProfile
from edgefleet.central.publish import promote, rollback, state_file_for
from edgefleet.central.registry import ModelVersion, Registry
from edgefleet.edge.bundle import MANIFEST_FILE, SIGNATURE_FILE, open_bundle
from edgefleet.edge.manifest import Manifest, parse_version
from edgefleet.edge.mqtt import BrokerAddress
from edgefleet.edge.profile import SCORE_BINS, CategoricalProfile, NumericProfile
from edgefleet.edge.report import Aggregate
from edgefleet.edge.rollout import ModelRef, RolloutState, is_expired, verify_rollout
from edgefleet.edge.schema import CategoricalFeature
from edgefleet.edge.signing import TrustedKey, load_private_key, load_public_key
from edgefleet.edge.status import DeviceStatus
from edgefleet.edge.topics import DEFAULT_PREFIX, check_identifier
from edgefleet.errors import EdgefleetError, InputError
from edgefleet.web.escalations import escalations

__all__ = ["ConflictError", "Dashboard", "NotFoundError", "clean", "cleaned"]

DISPLAY_SCORE_BINS = 20
"""The 100 score bins of the reports, shown as this many (5 merged into each)."""
MAX_BUCKETS = 48
DRIFT_CACHE_SECONDS = 10.0
"""A drift document is reused this long: a page and its charts ask for the same one."""
_DRIFT_CACHE_SIZE = 32


class NotFoundError(EdgefleetError):
    """No such fleet, device, model version or bundle (HTTP 404)."""


class ConflictError(EdgefleetError):
    """The action does not fit the fleet's current state (HTTP 409)."""


def clean(value: Any) -> Any:
    """``value`` as JSON allows it: non-finite floats become None, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        items = sorted(value) if isinstance(value, frozenset | set) else value
        return [clean(v) for v in items]
    return value


def cleaned(document: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`clean` of a JSON object."""
    return {str(k): clean(v) for k, v in document.items()}


def _number(value: float) -> str:
    return f"{value:.4g}"


def _measure(aggregate: Aggregate | None, manifest: Manifest | None) -> Measures | None:
    """The measures of an aggregate against its manifest, or None where there is nothing
    to measure, or the reports do not fit the manifest (a manifest no device could report
    on: its reports were merged by their own majority)."""
    if aggregate is None or manifest is None:
        return None
    try:
        return measure(aggregate, manifest)
    except InputError:
        return None


@dataclass(frozen=True)
class RolloutView:
    """A fleet's rollout state as the state file holds it (verified), or why not."""

    state: RolloutState | None
    models: Mapping[str, ModelRef]
    path: Path
    error: str | None = None


@dataclass
class _Cached:
    created: float
    value: dict[str, Any]


class _Skipped:
    """The stored reports a document's merges had to skip (docs/architecture.md §10):
    counted once per whole-range merge, named once each, so that a page says which
    reports it left out and why instead of failing."""

    def __init__(self) -> None:
        self.total = 0
        self.named: dict[int, SkippedReport] = {}

    def add(self, merged: Merged, *, whole: bool) -> None:
        # Slices of a range skip the same rows as the whole: only the whole is counted.
        if whole:
            self.total += merged.skipped_total
        for report in merged.skipped:
            self.named.setdefault(report.id, report)

    def document(self) -> dict[str, Any]:
        return {
            "total": max(self.total, len(self.named)),
            "reports": [r.to_dict() for r in sorted(self.named.values(), key=lambda r: r.id)],
        }


@dataclass
class _Caches:
    manifests: dict[tuple[str, str], tuple[float, Manifest]] = field(default_factory=dict)
    profiles: dict[tuple[str, str], tuple[Manifest, VersionProfile | None]] = field(
        default_factory=dict
    )
    drift: dict[tuple[Any, ...], _Cached] = field(default_factory=dict)
    bundles: dict[Path, tuple[tuple[float, ...], dict[str, Any]]] = field(default_factory=dict)


class Dashboard:
    """The data behind the dashboard of the fleets of one home folder."""

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
        self._caches = _Caches()
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
                    "stable": _ref(stable),
                    "canary": _ref(canary),
                    "canary_percent": state.canary_percent,
                    "rollback": state.rollback,
                },
                "source": str(view.path),
                "error": view.error,
                "published": [_ref(ref) for ref in published],
                "actions": {
                    "promote": canary is not None,
                    "rollback_canary": canary is not None,
                    "rollback_to": sorted(lower, key=parse_version, reverse=True),
                },
            }
        )

    # -- devices ---------------------------------------------------------------------------

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

    def devices(self, fleet: str) -> dict[str, Any]:
        now = self.clock()
        statuses = self.store.statuses(fleet)
        counts = self.store.refusal_counts(fleet)
        refused = {c.device_id: c.refused for c in counts}
        devices = [
            {
                **self._device(s, now, statuses.get(s.device_id)),
                "refused": refused.get(s.device_id, 0),
            }
            for s in self.store.devices(fleet)
        ]
        return cleaned(
            {
                "fleet": fleet,
                "now": now,
                "online_seconds": self.online_seconds,
                "devices": devices,
                # Per device the topic named (a claim: anyone who can publish there could
                # have sent it), ever; "" stands for topics that named no valid device.
                "refused_by_device": [
                    {
                        "device_id": c.device_id or None,
                        "refused": c.refused,
                        "last_refused": c.last_refused,
                        "last_reason": c.last_reason,
                    }
                    for c in counts
                ],
                "quarantined": self.store.quarantine_count(fleet),
                "refused": [
                    {
                        "id": q.id,
                        "received": q.received,
                        "topic": q.topic,
                        "device_id": q.device_id,
                        "reason": q.reason,
                        "bytes": q.payload_bytes,
                        "sha256": q.payload_sha256,
                        "excerpt": q.excerpt,
                    }
                    for q in self.store.quarantined(fleet, limit=20)
                ],
            }
        )

    def device(self, fleet: str, device_id: str) -> dict[str, Any]:
        summary = next((s for s in self.store.devices(fleet) if s.device_id == device_id), None)
        if summary is None:
            raise NotFoundError(f"device {device_id!r} never reported to fleet {fleet!r}")
        refused = sum(
            c.refused for c in self.store.refusal_counts(fleet) if c.device_id == device_id
        )
        now = self.clock()
        manifest = self.manifest(summary.model_name, summary.model_version)
        skipped = _Skipped()
        aggregate = self._merge(
            fleet,
            (summary.model_name, summary.model_version),
            manifest,
            skipped,
            device_id=device_id,
        )
        measures = _measure(aggregate, manifest)
        scope = f"device:{device_id}"
        return cleaned(
            {
                "fleet": fleet,
                "device": {
                    **self._device(summary, now, self.store.statuses(fleet).get(device_id)),
                    "refused": refused,
                },
                "measures": None if measures is None else _measures_summary(measures),
                "features": [] if measures is None else _feature_rows(measures),
                "score": None
                if manifest is None or aggregate is None
                else _score_histogram(manifest, aggregate, measures),
                "alerts": [_alert(a) for a in self.store.alerts(fleet) if a.scope == scope],
                "thresholds": _thresholds(),
                "manifest_missing": manifest is None,
                "skipped": skipped.document(),
            }
        )

    # -- overview --------------------------------------------------------------------------

    def overview(self, fleet: str) -> dict[str, Any]:
        now = self.clock()
        summaries = self.store.devices(fleet)
        devices = [self._device(s, now, None) for s in summaries]
        online = sum(1 for d in devices if d["online"])
        rollout = self.rollout(fleet)
        state = rollout["state"] or {}
        roles = {
            (ref["name"], ref["version"]): role
            for role, ref in (("stable", state.get("stable")), ("canary", state.get("canary")))
            if ref
        }
        running: dict[tuple[str, str], int] = {}
        for summary in summaries:
            key = (summary.model_name, summary.model_version)
            running[key] = running.get(key, 0) + 1
        versions = []
        seen = set()
        for name, version, reports in self.store.model_versions(fleet):
            seen.add((name, version))
            versions.append(
                {
                    "model_name": name,
                    "model_version": version,
                    "role": roles.get((name, version)),
                    "devices": running.get((name, version), 0),
                    "reports": reports,
                }
            )
        for (name, version), role in roles.items():
            if (name, version) not in seen:
                versions.append(
                    {
                        "model_name": name,
                        "model_version": version,
                        "role": role,
                        "devices": 0,
                        "reports": 0,
                    }
                )
        open_alerts = self.store.alerts(fleet, open_only=True)
        decisions = self.store.decisions(fleet)
        return cleaned(
            {
                "fleet": fleet,
                "now": now,
                "devices": {
                    "total": len(devices),
                    "online": online,
                    "offline": len(devices) - online,
                    "online_seconds": self.online_seconds,
                },
                "reports": self.store.report_count(fleet),
                "scored": sum(s.scored for s in summaries),
                "failed": sum(s.failed for s in summaries),
                "quarantined": self.store.quarantine_count(fleet),
                "last_report": max((s.last_seen for s in summaries), default=None),
                "alerts": {
                    "open": len(open_alerts),
                    "newest": [_alert(a) for a in reversed(open_alerts[-5:])],
                },
                "escalations": escalations(open_alerts, _alert),
                "rollout": rollout,
                "versions": sorted(
                    versions, key=lambda v: (v["model_name"], parse_version(v["model_version"]))
                ),
                "decisions": [_decision(d) for d in reversed(decisions[-5:])],
                "timeline": self.timeline(fleet),
            }
        )

    def timeline(self, fleet: str, buckets: int = 12) -> dict[str, Any]:
        """The largest feature drift and the score drift of every model version, per time
        slice of the fleet's whole history: how a version drifted, and how its successor
        compares, on one time axis (each against its own training data)."""
        key = ("timeline", fleet, buckets)
        cached = self._cached(key)
        if cached is not None:
            return cached
        wholes = []
        skipped = _Skipped()
        for name, version, _ in self.store.model_versions(fleet):
            manifest = self.manifest(name, version)
            if manifest is None:
                continue
            whole = self._merge(fleet, (name, version), manifest, skipped)
            if whole is not None:
                wholes.append((manifest, whole))
        document: dict[str, Any] = {"thresholds": _thresholds(), "buckets": [], "versions": []}
        if wholes:
            start = min(whole.window_start for _, whole in wholes)
            end = math.nextafter(max(whole.window_end for _, whole in wholes), math.inf)
            devices = set().union(*(whole.devices for _, whole in wholes))
            reports = sum(whole.reports for _, whole in wholes)
            slices = _slices(start, end, buckets, reports, len(devices))
            document["buckets"] = [{"start": low, "end": high} for low, high in slices]
            for manifest, whole in wholes:
                features: list[float | None] = []
                scores: list[float | None] = []
                for low, high in slices:
                    part = self._merge(
                        fleet,
                        (whole.model_name, whole.model_version),
                        manifest,
                        skipped,
                        whole=False,
                        since=low,
                        until=high,
                    )
                    measures = _measure(part, manifest)
                    features.append(
                        None
                        if measures is None
                        else max((f.js for f in measures.features), default=None)
                    )
                    scores.append(
                        None if measures is None or measures.score is None else measures.score.js
                    )
                document["versions"].append(
                    {
                        "model_name": whole.model_name,
                        "model_version": whole.model_version,
                        "max_feature_js": features,
                        "score_js": scores,
                    }
                )
        document["skipped"] = skipped.document()
        return self._remember(key, cleaned(document))

    def _cached(self, key: tuple[Any, ...]) -> dict[str, Any] | None:
        with self._cache_lock:
            cached = self._caches.drift.get(key)
        if cached is None or self.clock() - cached.created >= DRIFT_CACHE_SECONDS:
            return None
        return cached.value

    def _remember(self, key: tuple[Any, ...], document: dict[str, Any]) -> dict[str, Any]:
        with self._cache_lock:
            if len(self._caches.drift) >= _DRIFT_CACHE_SIZE:
                self._caches.drift.clear()
            self._caches.drift[key] = _Cached(self.clock(), document)
        return document

    def _merge(
        self,
        fleet: str,
        version: tuple[str, str],
        manifest: Manifest | None,
        skipped: _Skipped,
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

    # -- alerts and decisions ----------------------------------------------------------------

    def alerts(self, fleet: str, status: str = "all") -> dict[str, Any]:
        if status not in ("all", "open", "closed"):
            raise InputError(f"status must be all, open or closed, not {status!r}")
        records = self.store.alerts(fleet, open_only=status == "open")
        if status == "closed":
            records = [a for a in records if a.status == "closed"]
        return cleaned({"fleet": fleet, "alerts": [_alert(a) for a in reversed(records)]})

    def decisions(self, fleet: str) -> dict[str, Any]:
        records = self.store.decisions(fleet)
        return cleaned({"fleet": fleet, "decisions": [_decision(d) for d in reversed(records)]})

    # -- models and bundles ------------------------------------------------------------------

    def registry_versions(self) -> list[ModelVersion]:
        # Registry() creates its database: a dashboard of a home without one shows nothing
        # rather than writing there.
        if not (self.home / "registry.db").is_file():
            return []
        with self._cache_lock:
            if self._registry is None:
                self._registry = Registry(self.home)
            registry = self._registry
        return registry.versions()

    def registry_version(self, name: str, version: str) -> ModelVersion:
        for candidate in self.registry_versions():
            if (candidate.name, candidate.version) == (name, version):
                return candidate
        raise NotFoundError(f"the registry has no model {name!r} version {version!r}")

    def bundle_root(self, name: str, version: str) -> Path:
        return self.home / "bundles" / f"{name}-{version}"

    def manifest(self, name: str, version: str) -> Manifest | None:
        """The manifest devices run for a version: the exported bundle's, else one built from
        the registry (the same reference profile and metrics); None if neither exists."""
        path = self.bundle_root(name, version) / MANIFEST_FILE
        stamp = path.stat().st_mtime if path.is_file() else -1.0
        key = (name, version)
        with self._cache_lock:
            cached = self._caches.manifests.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if stamp >= 0:
            manifest = Manifest.from_bytes(path.read_bytes(), source=str(path))
        else:
            try:
                registered = self.registry_version(name, version)
            except NotFoundError:
                return None
            card = registered.load_card()
            manifest = Manifest(
                name=registered.name,
                version=registered.version,
                created=registered.created.isoformat(timespec="seconds"),
                model_family=registered.family,
                target=registered.target,
                data_sha256=registered.data_sha256,
                schema=card.schema,
                metrics=dict(registered.metrics),
                reference=card.reference,
                golden=card.golden,
                artifacts=(),
                params=dict(registered.params),
            )
        with self._cache_lock:
            self._caches.manifests[key] = (stamp, manifest)
        return manifest

    def bundle(self, name: str, version: str) -> dict[str, Any] | None:
        """The exported bundle of a version: its formats, and whether its signature and
        every artifact verify with the publisher key. None if it was never exported."""
        root = self.bundle_root(name, version)
        manifest_path = root / MANIFEST_FILE
        if not manifest_path.is_file():
            return None
        stamps = tuple(
            p.stat().st_mtime if p.exists() else -1.0
            for p in (manifest_path, root / SIGNATURE_FILE)
        )
        with self._cache_lock:
            cached = self._caches.bundles.get(root)
        if cached is not None and cached[0] == stamps:
            return cached[1]
        manifest = Manifest.from_bytes(manifest_path.read_bytes(), source=str(manifest_path))
        signer: str | None = None
        error: str | None = None
        try:
            signer = open_bundle(root, self.trusted_keys()).signer.key_id
        except EdgefleetError as failure:
            error = str(failure)
        document = {
            "folder": root.name,
            "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
            "verified": error is None,
            "signed_by": signer,
            "error": error,
            "tolerance": manifest.tolerance,
            "formats": [
                {
                    "format": a.format,
                    "path": a.path,
                    "bytes": a.bytes,
                    "sha256": a.sha256,
                    "runtime": a.runtime,
                    "parity": manifest.parity.get(a.format),
                }
                for a in manifest.artifacts
            ],
        }
        with self._cache_lock:
            self._caches.bundles[root] = (stamps, document)
        return document

    def models(self, fleet: str) -> dict[str, Any]:
        """Registry versions of the models this fleet runs or reported on (every version if
        it knows none), newest first, with their role in the fleet and their bundle."""
        rollout = self.rollout(fleet)
        state = rollout["state"] or {}
        roles: dict[tuple[str, str], str] = {}
        for ref in rollout["published"]:
            roles[(ref["name"], ref["version"])] = "published"
        for role in ("stable", "canary"):
            ref = state.get(role)
            if ref:
                roles[(ref["name"], ref["version"])] = role
        names = {name for name, _ in roles} | {n for n, _, _ in self.store.model_versions(fleet)}
        versions = [v for v in self.registry_versions() if not names or v.name in names]
        documents = []
        for version in sorted(
            versions, key=lambda v: (v.name, parse_version(v.version)), reverse=True
        ):
            documents.append(
                {
                    "name": version.name,
                    "version": version.version,
                    "label": version.label,
                    "family": version.family,
                    "created": version.created.timestamp(),
                    "target": version.target,
                    "train_rows": version.train_rows,
                    "data_sha256": version.data_sha256,
                    "metrics": dict(version.metrics),
                    "params": dict(version.params),
                    "role": roles.get((version.name, version.version)),
                    "bundle": self.bundle(version.name, version.version),
                }
            )
        return cleaned({"fleet": fleet, "models": documents})

    # -- drift -------------------------------------------------------------------------------

    def drift(
        self,
        fleet: str,
        *,
        model_version: str | None = None,
        since: float | None = None,
        until: float | None = None,
        buckets: int = 12,
    ) -> dict[str, Any]:
        """Per-feature PSI and JS distance of one model version's reports against its
        reference profile: over the whole window ``[since, until)`` (by report window end)
        with reference and current histograms, and over ``buckets`` equal slices of it."""
        if not 1 <= buckets <= MAX_BUCKETS:
            raise InputError(f"buckets must be 1 to {MAX_BUCKETS}, not {buckets}")
        if since is not None and until is not None and since >= until:
            raise InputError("since must be before until")
        reported = self.store.model_versions(fleet)
        versions = [{"model_name": n, "model_version": v, "reports": c} for n, v, c in reported]
        base: dict[str, Any] = {
            "fleet": fleet,
            "versions": versions,
            "since": since,
            "until": until,
            "model_name": None,
            "model_version": None,
            "error": None,
            "skipped": _Skipped().document(),
        }
        if not reported:
            return cleaned({**base, "error": f"fleet {fleet} has no reports yet"})
        chosen = self._choose_version(fleet, reported, model_version)
        name, version = chosen
        base.update(model_name=name, model_version=version)
        key = (fleet, name, version, since, until, buckets)
        cached = self._cached(key)
        if cached is not None:
            return cached
        manifest = self.manifest(name, version)
        if manifest is None:
            return cleaned(
                {
                    **base,
                    "error": f"no bundle or registry entry for {name} {version} in "
                    f"{self.home}: cannot compare its reports with a reference",
                }
            )
        skipped = _Skipped()
        whole = self._merge(fleet, chosen, manifest, skipped, since=since, until=until)
        base["skipped"] = skipped.document()
        measures = _measure(whole, manifest)
        if whole is None or measures is None:
            problem = "no reports" if whole is None else "no reports that fit its reference"
            return cleaned({**base, "error": f"{problem} of {name} {version} in this window"})
        start = whole.window_start if since is None else since
        # Slices by window end, as the store filters: the last one ends just past the newest.
        end = math.nextafter(whole.window_end, math.inf) if until is None else until
        slices = _slices(start, end, buckets, whole.reports, len(whole.devices))
        timeline: list[dict[str, Any]] = []
        series: list[tuple[list[float | None], list[float | None]]] = [
            ([], []) for _ in measures.features
        ]
        score_series: tuple[list[float | None], list[float | None]] = ([], [])
        for low, high in slices:
            part = self._merge(fleet, chosen, manifest, skipped, whole=False, since=low, until=high)
            part_measures = _measure(part, manifest)
            timeline.append(
                {
                    "start": low,
                    "end": high,
                    "reports": 0 if part is None else part.reports,
                    "scored": 0 if part is None else part.scored,
                }
            )
            for position, (psi_values, js_values) in enumerate(series):
                drift = None if part_measures is None else part_measures.features[position]
                psi_values.append(None if drift is None else drift.psi)
                js_values.append(None if drift is None else drift.js)
            score = None if part_measures is None else part_measures.score
            score_series[0].append(None if score is None else score.psi)
            score_series[1].append(None if score is None else score.js)
        features = _feature_rows(measures)
        histograms = _feature_histograms(manifest, whole)
        for row, histogram, (psi_values, js_values) in zip(
            features, histograms, series, strict=True
        ):
            row["histogram"] = histogram
            row["timeline"] = {"psi": psi_values, "js": js_values}
        score_document = _score_histogram(manifest, whole, measures)
        if score_document is not None:
            score_document["timeline"] = {"psi": score_series[0], "js": score_series[1]}
        document = cleaned(
            {
                **base,
                "thresholds": _thresholds(),
                "window": [whole.window_start, whole.window_end],
                "reports": whole.reports,
                "devices": len(whole.devices),
                "scored": whole.scored,
                "measures": _measures_summary(measures),
                "features": features,
                "score": score_document,
                "buckets": timeline,
                "skipped": skipped.document(),
            }
        )
        return self._remember(key, document)

    def _choose_version(
        self, fleet: str, reported: list[tuple[str, str, int]], wanted: str | None
    ) -> tuple[str, str]:
        if wanted is not None:
            for name, version, _ in reported:
                if version == wanted:
                    return name, version
            raise NotFoundError(f"fleet {fleet} has no reports of model version {wanted!r}")
        state = self.read_rollout(fleet).state
        if state is not None and state.stable is not None:
            for name, version, _ in reported:
                if (name, version) == (state.stable.name, state.stable.version):
                    return name, version
        name, version, _ = reported[-1]
        return name, version

    # -- the browser demo --------------------------------------------------------------------

    def demo(self, fleet: str) -> dict[str, Any]:
        """The web bundle of the fleet's promoted (stable) model, checked here before any
        browser gets it: the bundle in HOME/bundles must be the very manifest the rollout
        state points at, signed by the publisher key, with an intact web artifact."""
        view = self.read_rollout(fleet)
        if view.error is not None:
            raise ConflictError(view.error)
        stable = view.state.stable if view.state else None
        if stable is None:
            raise ConflictError(f"fleet {fleet} has no promoted model yet: publish one first")
        root = self.bundle_root(stable.name, stable.version)
        manifest_path = root / MANIFEST_FILE
        if not manifest_path.is_file():
            raise ConflictError(
                f"{stable.label} is promoted on fleet {fleet}, but its bundle is not in "
                f"{root.parent}: export it there to serve it to browsers"
            )
        digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
        if digest != stable.manifest_sha256:
            raise ConflictError(
                f"the bundle in {root} is not the {stable.label} the fleet runs (manifest "
                f"sha256 {digest[:12]}..., the rollout state says {stable.manifest_sha256[:12]}...)"
            )
        if "web" not in stable.artifacts:
            raise ConflictError(
                f"{stable.label} has no web artifact: export it with the web format for the demo"
            )
        trusted = self.trusted_keys()
        try:
            verified = open_bundle(root, trusted, formats=["web"])
        except EdgefleetError as error:
            raise ConflictError(f"the bundle of {stable.label} does not verify: {error}") from None
        raw_key = verified.signer.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert view.state is not None
        return cleaned(
            {
                "fleet": fleet,
                "name": stable.name,
                "version": stable.version,
                "label": stable.label,
                "folder": root.name,
                "manifest_sha256": digest,
                "key_id": verified.signer.key_id,
                "public_key": raw_key.hex(),
                "sequence": view.state.sequence,
            }
        )

    # -- writes ------------------------------------------------------------------------------

    def _private_key(self) -> Any:
        path = self.home / "keys" / PRIVATE_NAME
        if not path.is_file():
            raise ConflictError(
                f"no publisher key at {path}: this dashboard cannot sign rollout changes"
            )
        return load_private_key(path)

    def _check_sequence(self, fleet: str, expect_sequence: int | None) -> RolloutView:
        view = self.read_rollout(fleet)
        if view.error is not None:
            raise ConflictError(view.error)
        current = view.state.sequence if view.state else None
        if expect_sequence is not None and current != expect_sequence:
            raise ConflictError(
                f"the rollout of fleet {fleet} changed since this page was loaded (sequence "
                f"{current}, the page showed {expect_sequence}): reload and check again"
            )
        return view

    def promote(self, fleet: str, *, expect_sequence: int | None, actor: str) -> dict[str, Any]:
        """The canary becomes stable on every device; recorded as a ``promoted`` decision."""
        with self._write_lock:
            view = self._check_sequence(fleet, expect_sequence)
            before = view.state
            if before is None or before.canary is None:
                raise ConflictError(f"fleet {fleet} has no canary to promote")
            lines: list[str] = []
            state = promote(
                fleet,
                self.broker,
                self._private_key(),
                prefix=self.prefix,
                state_file=state_file_for(self.home, fleet),
                progress=lines.append,
            )
            assert state.stable is not None
            # As the closed loop does: the alerts about the replaced model are answered.
            replaced = before.stable.version if before.stable else None
            closed = self.store.close_alerts_for(fleet, replaced)
            return self._record(
                fleet,
                "promoted",
                state.stable.version,
                f"{state.stable.label} promoted from {before.canary_percent}% canary to "
                f"stable by hand on the dashboard ({actor})",
                before,
                state,
                actor,
                closed_alerts=closed,
                warnings=_warnings(lines),
            )

    def rollback(
        self,
        fleet: str,
        *,
        to_version: str | None,
        expect_sequence: int | None,
        actor: str,
    ) -> dict[str, Any]:
        """Drop the canary, or (``to_version``) re-point stable to a lower published
        version; recorded as a ``rolled_back`` decision."""
        if to_version is not None:
            parse_version(to_version)
        with self._write_lock:
            view = self._check_sequence(fleet, expect_sequence)
            before = view.state
            if before is None:
                raise ConflictError(f"fleet {fleet} has no rollout state to roll back")
            if to_version is None and before.canary is None:
                raise ConflictError(
                    f"fleet {fleet} has no canary; choose a lower version to roll back to"
                )
            dropped = before.canary
            lines: list[str] = []
            state = rollback(
                fleet,
                self.broker,
                self._private_key(),
                to_version=to_version,
                prefix=self.prefix,
                state_file=state_file_for(self.home, fleet),
                progress=lines.append,
            )
            assert state.stable is not None
            if to_version is None and dropped is not None:
                version = dropped.version
                reason = (
                    f"canary {dropped.label} dropped by hand on the dashboard ({actor}); its "
                    f"devices return to {state.stable.label}"
                )
            else:
                version = state.stable.version
                previous = before.stable.label if before.stable else "none"
                reason = (
                    f"stable re-pointed from {previous} to {state.stable.label} by hand on the "
                    f"dashboard ({actor}), signed rollback"
                )
            return self._record(
                fleet,
                "rolled_back",
                version,
                reason,
                before,
                state,
                actor,
                warnings=_warnings(lines),
            )

    def _record(
        self,
        fleet: str,
        action: str,
        version: str,
        reason: str,
        before: RolloutState,
        after: RolloutState,
        actor: str,
        **extra: Any,
    ) -> dict[str, Any]:
        evidence = {
            **extra,
            "by": "dashboard",
            "client": actor,
            "before": {
                "sequence": before.sequence,
                "stable": None if before.stable is None else before.stable.version,
                "canary": None if before.canary is None else before.canary.version,
                "canary_percent": before.canary_percent,
            },
            "after": {
                "sequence": after.sequence,
                "stable": None if after.stable is None else after.stable.version,
                "canary": None if after.canary is None else after.canary.version,
                "rollback": after.rollback,
            },
        }
        record = DecisionRecord(
            id=None,
            fleet=fleet,
            created=self.clock(),
            action=action,
            model_version=version,
            reason=reason,
            evidence=evidence,
        )
        identifier = self.store.add_decision(record)
        stored = DecisionRecord(
            id=identifier,
            fleet=fleet,
            created=record.created,
            action=action,
            model_version=version,
            reason=reason,
            evidence=evidence,
        )
        return cleaned(
            {
                "decision": _decision(stored),
                "rollout": self.rollout(fleet),
                "warnings": extra.get("warnings", []),
            }
        )


# -- documents --------------------------------------------------------------------------------


def _slices(
    start: float, end: float, wanted: int, reports: int, devices: int
) -> list[tuple[float, float]]:
    """``[start, end)`` cut in equal slices: ``wanted`` of them, fewer when there are not
    as many reports per device (a slice shorter than the time between two reports would be
    an empty gap), and none shorter than a second."""
    count = max(1, min(wanted, reports // max(1, devices), math.ceil(end - start)))
    width = (end - start) / count
    return [
        (start + i * width, end if i == count - 1 else start + (i + 1) * width)
        for i in range(count)
    ]


def _warnings(lines: list[str]) -> list[str]:
    """The publisher's warnings among its progress lines (e.g. what it replaced on the
    broker's rollout topic), for the page and the decision's evidence."""
    return [line.removeprefix("warning: ") for line in lines if line.startswith("warning: ")]


def _ref(ref: ModelRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {
        "name": ref.name,
        "version": ref.version,
        "label": ref.label,
        "manifest_sha256": ref.manifest_sha256,
        "formats": sorted(ref.artifacts),
    }


def _alert(alert: AlertRecord) -> dict[str, Any]:
    return {
        "id": alert.id,
        "created": alert.created,
        "rule": alert.rule,
        "scope": alert.scope,
        "subject": alert.subject,
        "value": alert.value,
        "threshold": alert.threshold,
        "status": alert.status,
        "model_version": alert.evidence.get("model_version"),
        "description": describe(alert),
        "evidence": dict(alert.evidence),
    }


def _decision(decision: DecisionRecord) -> dict[str, Any]:
    return {
        "id": decision.id,
        "created": decision.created,
        "action": decision.action,
        "model_version": decision.model_version,
        "reason": decision.reason,
        "evidence": dict(decision.evidence),
    }


def _thresholds() -> dict[str, Any]:
    from edgefleet.central.monitor.drift import DriftDetector

    detector = DriftDetector()
    return {
        "psi": detector.psi_threshold,
        "js": detector.js_threshold,
        "min_count": detector.min_count,
    }


def _measures_summary(measures: Measures) -> dict[str, Any]:
    performance = measures.performance
    return {
        "model_version": measures.model_version,
        "window": [measures.window_start, measures.window_end],
        "reports": measures.reports,
        "devices": measures.devices,
        "scored": measures.scored,
        "failed": measures.failed,
        "labelled": measures.labelled,
        "error_rate": measures.errors.value,
        "auroc": None if performance is None else performance.auroc,
        "reference_auroc": measures.reference_auroc,
        "average_precision": None if performance is None else performance.average_precision,
        "expected_auroc": None if measures.expected is None else measures.expected.auroc,
        "latency_p50_ms": measures.latency.p50_ms,
        "latency_p95_ms": measures.latency.p95_ms,
        "drifted_features": [f.feature for f in measures.drifted_features],
        "score_js": None if measures.score is None else measures.score.js,
        "score_psi": None if measures.score is None else measures.score.psi,
    }


def _feature_rows(measures: Measures) -> list[dict[str, Any]]:
    return [
        {
            "name": f.feature,
            "psi": f.psi,
            "js": f.js,
            "verdict": f.verdict,
            "reference_n": f.reference_n,
            "current_n": f.current_n,
            "extra_reference": f.extra.reference,
            "extra_current": f.extra.current,
            "out_of_range": f.extra.out_of_range,
        }
        for f in measures.features
    ]


def _numeric_labels(edges: Sequence[float]) -> list[str]:
    if not edges:
        return ["all values"]
    labels = [f"< {_number(edges[0])}"]
    labels += [f"{_number(a)} to {_number(b)}" for a, b in itertools.pairwise(edges)]
    labels.append(f">= {_number(edges[-1])}")
    return labels


def _feature_histograms(manifest: Manifest, aggregate: Aggregate) -> list[dict[str, Any]]:
    """Reference and current counts per bin of each feature, in the reference's order; the
    values without a bin (missing, unknown category) as a last bin when either side has
    any."""
    sketches = {s.name: s for s in aggregate.features}
    histograms = []
    for profile in manifest.reference.features:
        sketch = sketches[profile.name]
        current = list(sketch.bins.counts)
        current_extra = sketch.missing + sketch.unknown
        if isinstance(profile, NumericProfile):
            labels = _numeric_labels(profile.edges)
            extra_label = "missing"
            reference_extra = profile.missing
            kind = "numeric"
        else:
            assert isinstance(profile, CategoricalProfile)
            feature = manifest.schema.feature(profile.name)
            vocabulary = list(feature.vocabulary) if isinstance(feature, CategoricalFeature) else []
            labels = (
                vocabulary
                if len(vocabulary) == len(profile.counts)
                else [f"code {i}" for i in range(len(profile.counts))]
            )
            extra_label = "unknown or missing"
            reference_extra = profile.unknown
            kind = "categorical"
        reference = list(profile.counts)
        if reference_extra or current_extra:
            labels = [*labels, extra_label]
            reference.append(reference_extra)
            current.append(current_extra)
        histograms.append(
            {"kind": kind, "labels": labels, "reference": reference, "current": current}
        )
    return histograms


def _score_histogram(
    manifest: Manifest, aggregate: Aggregate, measures: Measures | None
) -> dict[str, Any] | None:
    reference = list(manifest.reference.scores.counts)
    current = list(aggregate.scores.counts.counts)
    if len(reference) != SCORE_BINS or len(current) != SCORE_BINS:
        return None
    step = SCORE_BINS // DISPLAY_SCORE_BINS
    merged_reference = [sum(reference[i : i + step]) for i in range(0, SCORE_BINS, step)]
    merged_current = [sum(current[i : i + step]) for i in range(0, SCORE_BINS, step)]
    labels = [
        f"{i / DISPLAY_SCORE_BINS:.2f} to {(i + 1) / DISPLAY_SCORE_BINS:.2f}"
        for i in range(DISPLAY_SCORE_BINS)
    ]
    score = None if measures is None else measures.score
    return {
        "labels": labels,
        "reference": merged_reference,
        "current": merged_current,
        "psi": None if score is None else score.psi,
        "js": None if score is None else score.js,
        "verdict": None if score is None else score.verdict,
    }
