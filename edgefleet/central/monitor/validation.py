"""Reports checked against the model version they claim (docs/architecture.md §10).

A report can be well-formed (:meth:`edgefleet.edge.report.Report.decode` accepts it) and
still be wrong for its version: a feature missing, renamed or moved, a histogram of 11 bins
where the version's reference profile has 10, a categorical feature counted over another
vocabulary. Stored, such a report can never be merged with the version's other reports nor
compared with its reference. So the monitor checks each report against the
:class:`VersionProfile` of the version it names, built from the version's manifest exactly
as a device builds its sketches (:meth:`edgefleet.edge.sketch_builder.SketchBuilder.from_manifest`),
before it is stored.

What a report must match: the features in schema order, each with its name, kind and bin
count (numeric: the reference profile's edges plus one; categorical: the vocabulary's
size). Score histograms (100 bins), the two label histograms of the schema's two classes,
and every count sum (each feature and the scores total ``scored``; labelled scores within
the scores) are the same for every version, and :class:`Report` checks them already. The
window must not end more than :data:`MAX_CLOCK_AHEAD` after it arrived (a clock set ahead
would pin a report to the top of every "latest" view, for good).

The comparison is one tuple equality per report (the layout is taken while the report is
parsed, see :func:`layout_of`): a mismatch alone pays for the message naming the first
difference.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edgefleet.edge.manifest import Manifest
from edgefleet.edge.profile import ReferenceProfile
from edgefleet.edge.schema import FeatureSchema
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.errors import EdgefleetError, InputError

__all__ = [
    "MAX_CLOCK_AHEAD",
    "CachedProfiles",
    "Layout",
    "ProfileLookup",
    "RegisteredVersion",
    "VersionProfile",
    "layout_of",
    "profiles_of_registry",
]

logger = logging.getLogger("edgefleet.monitor")

MAX_CLOCK_AHEAD = 86_400.0
"""Seconds a report's window may end after the monitor received it (device clock skew)."""

Layout = tuple[tuple[str, str, int], ...]
"""``(name, kind, bins)`` of every feature of a report, in order, then ``(name, "segment",
levels)`` of every segment sketch (report version 2), then ``(task, "task", size)`` of a
multi-class (size: its classes) or regression (size: its value buckets) model's task
sketch (report version 4)."""

VersionKey = tuple[str, str]


def layout_of(raw: Mapping[str, Any]) -> Layout:
    """The layout of a parsed report whose fields were checked (names, kinds, bin lists)."""
    features = tuple((f["name"], f["kind"], len(f["bins"])) for f in raw["features"])
    segments = tuple((g["feature"], "segment", len(g["scores"])) for g in raw.get("segments", ()))
    task = raw.get("task")
    if task is None:
        return features + segments
    size = task["classes"] if task["kind"] == "multiclass" else len(task["predictions"])
    return (*features, *segments, (task["kind"], "task", size))


@dataclass(frozen=True)
class VersionProfile:
    """What every report of one model version looks like (see the module docstring)."""

    model_name: str
    model_version: str
    layout: Layout

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> VersionProfile:
        """The layout a device running ``manifest`` reports in: taken from an empty
        :class:`SketchBuilder`, so that the monitor and the devices cannot disagree.
        :class:`edgefleet.errors.ManifestError` if no device could build sketches from it."""
        return cls.of(manifest.schema, manifest.reference, manifest.name, manifest.version)

    @classmethod
    def of(
        cls,
        schema: FeatureSchema,
        reference: ReferenceProfile,
        model_name: str,
        model_version: str,
    ) -> VersionProfile:
        """:meth:`from_manifest` from a manifest's parts."""
        builder = SketchBuilder(
            schema,
            reference,
            model_name=model_name,
            model_version=model_version,
            clock=lambda: 0.0,
        )
        body = builder.snapshot()
        layout = tuple((f.name, f.kind, f.bins.bins) for f in body.features) + tuple(
            (g.feature, "segment", g.levels) for g in body.segments
        )
        if body.task is not None:
            layout += ((body.task.kind, "task", body.task.size),)
        return cls(model_name, model_version, layout)

    @property
    def label(self) -> str:
        return f"{self.model_name} {self.model_version}"

    def check(self, layout: Layout, window_end: float, received: float) -> None:
        """:class:`InputError` naming the first way a report of this version, with this
        layout and window, differs from what the version's devices send."""
        if layout != self.layout:
            raise InputError(self.difference(layout))
        if window_end > received + MAX_CLOCK_AHEAD:
            ahead = (window_end - received) / 3600
            raise InputError(
                f"the report's window ends {ahead:,.0f} h after it arrived: the device's "
                "clock is wrong (fix its time, e.g. NTP; it re-sends the report)"
            )

    def difference(self, layout: Layout) -> str:
        """What differs between ``layout`` and this version's, first difference first."""
        where = f"a report of model {self.label}"
        got_task, want_task = _task_of(layout), _task_of(self.layout)
        if got_task != want_task:
            return (
                f"{where} is of a {got_task} model; the version is a {want_task} model: not "
                "a report of this version"
            )
        if len(layout) != len(self.layout):
            return (
                f"{where} has {len(layout)} features; the version has {len(self.layout)} "
                f"({_names(self.layout)}): not a report of this version"
            )
        for i, (got, want) in enumerate(zip(layout, self.layout, strict=True)):
            if got[0] != want[0]:
                return (
                    f"{where}: feature {i} is {got[0]!r} where the version has {want[0]!r} "
                    "(features must come in schema order)"
                )
            if got[1] != want[1]:
                return f"{where}: feature {got[0]!r} is {got[1]}; the version's is {want[1]}"
            if got[2] != want[2]:
                basis = "reference bins" if want[1] == "numeric" else "vocabulary values"
                return (
                    f"{where}: feature {got[0]!r} has {got[2]} bins; the version has "
                    f"{want[2]} ({basis}): binned for another version or forged"
                )
        return f"{where} does not match the version"  # pragma: no cover (layouts differ)


def _task_of(layout: Layout) -> str:
    """ "binary", or the task and size of a layout's task entry ("multiclass (3 classes)")."""
    for name, kind, size in layout:
        if kind == "task":
            return f"{name} ({size} classes)" if name == "multiclass" else name
    return "binary"


def _names(layout: Layout, most: int = 6) -> str:
    names = [name for name, _, _ in layout]
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


ProfileLookup = Callable[[str, str], "VersionProfile | bool | None"]
"""``lookup(model_name, model_version)``: the version's profile (reports are checked
against it), True (known, but without a profile: reports are only checked for form), or
False/None (unknown: reports are quarantined)."""


class CachedProfiles:
    """A :data:`ProfileLookup` over a slow source (the registry): answers from a cached
    mapping, and reloads it when asked about a version it lacks, at most every
    ``refresh_seconds``, so a version registered after the monitor started is learnt without
    letting a flood of made-up versions hammer the source. Thread-safe."""

    def __init__(
        self,
        load: Callable[[], Mapping[VersionKey, VersionProfile]],
        *,
        refresh_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._profiles = dict(load())
        self._loaded = clock()

    def __call__(self, model_name: str, model_version: str) -> VersionProfile | None:
        key = (model_name, model_version)
        profile = self._profiles.get(key)
        if profile is not None:
            return profile
        with self._lock:
            if self._clock() - self._loaded >= self._refresh_seconds:
                self._profiles = dict(self._load())
                self._loaded = self._clock()
        return self._profiles.get(key)


class RegisteredVersion(Protocol):
    """What :func:`profiles_of_registry` needs of a registry version
    (:class:`edgefleet.central.registry.ModelVersion` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def manifest(self) -> Manifest: ...


def profiles_of_registry(
    versions: Callable[[], Iterable[RegisteredVersion]],
) -> Callable[[], dict[VersionKey, VersionProfile]]:
    """A loader for :class:`CachedProfiles`: the profile of every version ``versions()``
    lists (e.g. ``Registry(home).versions``). A version's files are read once; a version
    whose files cannot be read is left out (its reports are quarantined as unknown) and
    logged, and tried again at the next reload."""
    built: dict[VersionKey, VersionProfile] = {}

    def load() -> dict[VersionKey, VersionProfile]:
        profiles: dict[VersionKey, VersionProfile] = {}
        for version in versions():
            key = (version.name, version.version)
            if key not in built:
                try:
                    built[key] = VersionProfile.from_manifest(version.manifest())
                except (EdgefleetError, OSError, ValueError, KeyError) as error:
                    logger.warning(
                        "model %s %s: cannot read its reference profile (%s); its reports "
                        "are quarantined until it can be read",
                        *key,
                        error,
                    )
                    continue
            profiles[key] = built[key]
        return profiles

    return load
