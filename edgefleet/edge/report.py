"""The report message a device publishes per window (docs/architecture.md §5). The
aggregate the central side merges reports into is :mod:`edgefleet.edge.aggregate`.

A :class:`Report` is compact JSON (UTF-8, no spaces), a few KB for the 17-feature churn
schema. :meth:`Report.decode` trusts nothing: the payload arrives from the network, so it
checks the size before parsing, refuses NaN, Infinity and duplicate keys, unknown and missing
fields, any other ``schema_version``, ints that are floats or booleans, negative or oversized
counts, histograms of the wrong length, more than :data:`MAX_FEATURES` features, identifiers
outside ``[A-Za-z0-9_.-]`` (they end up in MQTT topics, file names and dashboards) and counts
that do not add up (every feature sketch and the score histogram total ``scored``). Every
refusal is an :class:`edgefleet.errors.InputError` naming the field.

Shape (abridged; times are Unix epoch seconds)::

    {"schema_version": 1, "fleet": "acme", "device_id": "pos-0042", "sequence": 17,
     "window_start": 1718000000.0, "window_end": 1718000060.0,
     "model_name": "churn", "model_version": "1.3.0", "cohort": "canary",
     "device_group": "stores-eu", "scored": 980, "failed": 2, "dropped_reports": 0,
     "features": [
       {"name": "tenure_months", "kind": "numeric", "bins": [98, 101, ...],
        "missing": 0, "out_of_range": 1},
       {"name": "contract", "kind": "categorical", "bins": [540, 250, 190],
        "missing": 0, "unknown": 0}, ...],
     "scores": {"counts": [100 ints], "by_label": [[100 ints], [100 ints]]},
     "outcomes": {"counts": [...], "by_label": [[...], [...]]},
     "latency": {"counts": [164 ints]}}

Version 2 (``"schema_version": 2``) is version 1 plus one field, ``segments``: per segment
feature of the schema, its histograms per level (:mod:`edgefleet.edge.segments`). A device
sends version 2 only for a model whose schema marks segment features, so monitors of
either version read every report of a model without them.

Version 3 (``"schema_version": 3``) is version 2 plus ``shadow`` (whose ``segments`` may be
empty): a shadow device's challenger histograms (:mod:`edgefleet.edge.shadow`). A device
sends it only while it scores a challenger in shadow.

Version 4 (``"schema_version": 4``) is version 2 plus ``task`` (whose ``segments`` may be
empty): the sketch of a multi-class or regression model (:mod:`edgefleet.edge.tasksketch`),
and the binary histograms in the meaning that module gives them. A device sends it for
every model that is not a binary classifier, and only for those. A shadow device adds
``shadow`` in its paired-loss form (:class:`edgefleet.edge.shadow.PairedLoss`), the one
optional field of a version 4 report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from edgefleet.edge.manifest import parse_version
from edgefleet.edge.rollout import Cohort
from edgefleet.edge.segments import SegmentSketch
from edgefleet.edge.shadow import ShadowSketch
from edgefleet.edge.sketch import (
    LATENCY_BUCKETS,
    MAX_BINS,
    SCORE_BINS,
    FeatureSketch,
    Histogram,
    LatencySketch,
    ReportBody,
    ScoreSketch,
    check_count,
    check_name,
)
from edgefleet.edge.tasksketch import TaskSketch, task_from_json
from edgefleet.edge.topics import check_identifier
from edgefleet.edge.wirejson import exact_keys, json_type, loads_strict
from edgefleet.errors import InputError

__all__ = [
    "COHORTS",
    "MAX_FEATURES",
    "MAX_REPORT_BYTES",
    "SCHEMA_VERSION",
    "Cohort",
    "Report",
    "check_identifier",
]

SCHEMA_VERSION = 1
SEGMENTS_VERSION = 2
"""The report version that adds ``segments`` (module docstring)."""
SHADOW_VERSION = 3
"""The report version that adds ``shadow`` (a challenger's histograms, :mod:`edgefleet.edge.shadow`)
to version 2's fields; its ``segments`` may be empty."""
TASK_VERSION = 4
"""The report version that adds ``task`` (a multi-class or regression model's sketch,
:mod:`edgefleet.edge.tasksketch`) to version 2's fields; its ``segments`` may be empty."""
SCHEMA_VERSIONS = (SCHEMA_VERSION, SEGMENTS_VERSION, SHADOW_VERSION, TASK_VERSION)
MAX_REPORT_BYTES = 262_144
MAX_FEATURES = 256
MAX_TIME = 253_402_300_799.0
"""9999-12-31T23:59:59Z: a later window end is a corrupt clock or a hostile report."""

COHORTS = ("stable", "canary")

# Fleet, device and group names go into MQTT topics (no '/', '+', '#'), file names (no
# leading dot, so never '.' or '..') and HTML: a conservative ASCII set.

REPORT_FIELDS = (
    "schema_version",
    "fleet",
    "device_id",
    "sequence",
    "window_start",
    "window_end",
    "model_name",
    "model_version",
    "cohort",
    "device_group",
    "scored",
    "failed",
    "dropped_reports",
    "features",
    "scores",
    "outcomes",
    "latency",
)
OPTIONAL_FIELDS: dict[int, tuple[str, ...]] = {
    SCHEMA_VERSION: (),
    SEGMENTS_VERSION: ("segments",),
    SHADOW_VERSION: ("segments", "shadow"),
    TASK_VERSION: ("segments", "task"),
}
"""The fields each report version adds to :data:`REPORT_FIELDS`."""


def _check_time(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{field} must be a number of seconds since the epoch")
    # An int too large for a float (a 400-digit "time") must be refused, not overflow.
    if isinstance(value, int) and not 0 <= value <= MAX_TIME:
        raise InputError(f"{field} must be a finite time between 1970 and 9999")
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= MAX_TIME):
        raise InputError(f"{field} must be a finite time between 1970 and 9999, not {value!r}")
    return number


def _check_features(features: Any, where: str) -> None:
    if not isinstance(features, tuple) or not all(isinstance(f, FeatureSketch) for f in features):
        raise InputError(f"{where}: features must be a tuple of FeatureSketch")
    if not 0 < len(features) <= MAX_FEATURES:
        raise InputError(f"{where}: has {len(features)} features; 1 to {MAX_FEATURES} allowed")
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"{where}: duplicate features {', '.join(map(repr, duplicates))}")


@dataclass(frozen=True, kw_only=True)
class Report:
    """One device's measurements over one window, with who measured them."""

    schema_version: int = SCHEMA_VERSION
    fleet: str
    device_id: str
    sequence: int
    window_start: float
    window_end: float
    model_name: str
    model_version: str
    cohort: Cohort
    device_group: str
    scored: int
    failed: int
    features: tuple[FeatureSketch, ...]
    scores: ScoreSketch
    outcomes: ScoreSketch
    latency: LatencySketch
    dropped_reports: int = 0
    segments: tuple[SegmentSketch, ...] = ()
    shadow: ShadowSketch | None = None
    """A shadow device's challenger histograms (version 3 only)."""
    task: TaskSketch | None = None
    """A multi-class or regression model's sketch (version 4 only)."""

    def __post_init__(self) -> None:
        _check_version(self.schema_version)
        check_identifier(self.fleet, "report field 'fleet'")
        check_identifier(self.device_id, "report field 'device_id'")
        check_identifier(self.device_group, "report field 'device_group'")
        check_count(self.sequence, "report field 'sequence'")
        start = _check_time(self.window_start, "report field 'window_start'")
        end = _check_time(self.window_end, "report field 'window_end'")
        if start > end:
            raise InputError("report field 'window_end' is before 'window_start'")
        check_name(self.model_name, "report field 'model_name'")
        if not isinstance(self.model_version, str):
            raise InputError("report field 'model_version' must be text")
        try:
            parse_version(self.model_version)
        except InputError as error:
            raise InputError(f"report field 'model_version': {error}") from None
        if self.cohort not in COHORTS:
            raise InputError(f"report field 'cohort' must be one of {', '.join(COHORTS)}")
        check_count(self.scored, "report field 'scored'")
        check_count(self.failed, "report field 'failed'")
        check_count(self.dropped_reports, "report field 'dropped_reports'")
        _check_features(self.features, "report")
        for name, value, kind in (
            ("scores", self.scores, ScoreSketch),
            ("outcomes", self.outcomes, ScoreSketch),
            ("latency", self.latency, LatencySketch),
        ):
            if not isinstance(value, kind):
                raise InputError(f"report field {name!r} must be a {kind.__name__}")
        # Every scored row is counted once per feature and once in the score histogram:
        # a report whose totals disagree is corrupt, and would skew every merge it joins.
        for feature in self.features:
            if feature.total != self.scored:
                raise InputError(
                    f"report field 'features': feature {feature.name!r} counts "
                    f"{feature.total} rows but the report scored {self.scored}"
                )
        if self.scores.total != self.scored:
            raise InputError(
                f"report field 'scores': {self.scores.total} scores but {self.scored} scored"
            )
        _check_segments(self)
        _check_shadow(self)
        _check_task(self)

    @classmethod
    def from_body(
        cls,
        body: ReportBody,
        *,
        fleet: str,
        device_id: str,
        sequence: int,
        cohort: Cohort,
        device_group: str,
        dropped_reports: int = 0,
    ) -> Report:
        """A report of what a :class:`SketchBuilder` measured, from this device."""
        version = SEGMENTS_VERSION if body.segments else SCHEMA_VERSION
        shadow = _fitting_shadow(body)
        if shadow is not None:
            version = SHADOW_VERSION
        return cls(
            schema_version=TASK_VERSION if body.task is not None else version,
            fleet=fleet,
            device_id=device_id,
            sequence=sequence,
            window_start=body.window_start,
            window_end=body.window_end,
            model_name=body.model_name,
            model_version=body.model_version,
            cohort=cohort,
            device_group=device_group,
            scored=body.scored,
            failed=body.failed,
            features=body.features,
            scores=body.scores,
            outcomes=body.outcomes,
            latency=body.latency,
            dropped_reports=dropped_reports,
            segments=tuple(body.segments),
            shadow=shadow,
            task=body.task,
        )

    def feature(self, name: str) -> FeatureSketch:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise InputError(f"the report has no feature {name!r}")

    def to_dict(self) -> dict[str, Any]:
        data = {
            "schema_version": self.schema_version,
            "fleet": self.fleet,
            "device_id": self.device_id,
            "sequence": self.sequence,
            "window_start": float(self.window_start),
            "window_end": float(self.window_end),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "cohort": self.cohort,
            "device_group": self.device_group,
            "scored": self.scored,
            "failed": self.failed,
            "dropped_reports": self.dropped_reports,
            "features": [f.to_dict() for f in self.features],
            "scores": self.scores.to_dict(),
            "outcomes": self.outcomes.to_dict(),
            "latency": self.latency.to_dict(),
        }
        if self.schema_version in (SEGMENTS_VERSION, SHADOW_VERSION, TASK_VERSION):
            data["segments"] = [s.to_dict() for s in self.segments]
        if self.shadow is not None:
            data["shadow"] = self.shadow.to_dict()
        if self.task is not None:
            data["task"] = self.task.to_dict()
        return data

    def encode(self) -> bytes:
        """Compact UTF-8 JSON; :class:`InputError` if it would exceed MAX_REPORT_BYTES (a
        schema too large to report on), since no receiver would accept it."""
        payload = json.dumps(
            self.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
        if len(payload) > MAX_REPORT_BYTES:
            raise InputError(
                f"the report encodes to {len(payload)} bytes, over the {MAX_REPORT_BYTES} "
                "receivers accept: fewer features or bins"
            )
        return payload

    @classmethod
    def decode(
        cls, payload: bytes | bytearray | memoryview, *, max_bytes: int = MAX_REPORT_BYTES
    ) -> Report:
        """Parse and validate a report from the network (see the module docstring)."""
        raw = loads_strict(payload, max_bytes=max_bytes, what="report")
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> Report:
        """Validate a parsed report (a dict as JSON gives it)."""
        if not isinstance(raw, dict):
            raise InputError(f"a report is a JSON object, not {json_type(raw)}")
        if "schema_version" not in raw:
            raise InputError("report lacks the field 'schema_version'")
        version = raw["schema_version"]
        # Checked first: a newer report may have other fields, and this is the real cause.
        _check_version(version)
        optional = ("shadow",) if version == TASK_VERSION and "shadow" in raw else ()
        exact_keys(raw, REPORT_FIELDS + OPTIONAL_FIELDS[version] + optional, "report")
        return cls(
            schema_version=version,
            fleet=raw["fleet"],
            device_id=raw["device_id"],
            sequence=raw["sequence"],
            window_start=_check_time(raw["window_start"], "report field 'window_start'"),
            window_end=_check_time(raw["window_end"], "report field 'window_end'"),
            model_name=raw["model_name"],
            model_version=raw["model_version"],
            cohort=raw["cohort"],
            device_group=raw["device_group"],
            scored=raw["scored"],
            failed=raw["failed"],
            dropped_reports=raw["dropped_reports"],
            features=_features_from_json(raw["features"]),
            scores=_scores_from_json(raw["scores"], "scores"),
            outcomes=_scores_from_json(raw["outcomes"], "outcomes"),
            latency=_latency_from_json(raw["latency"]),
            segments=_segments_from_json(raw.get("segments", [])),
            shadow=None if "shadow" not in raw else ShadowSketch.from_json(raw["shadow"]),
            task=None if "task" not in raw else task_from_json(raw["task"]),
        )


def _fitting_shadow(body: ReportBody) -> ShadowSketch | None:
    """The window's shadow counts if they are of the champion's task (§17: a binary
    champion's histograms, another's paired losses); counts of another kind are left out,
    so that the champion's report stays valid."""
    shadow = body.shadow
    task = "binary" if body.task is None else body.task.kind
    return shadow if isinstance(shadow, ShadowSketch) and shadow.task == task else None


def _check_version(version: Any) -> None:
    if type(version) is not int or version not in SCHEMA_VERSIONS:
        raise InputError(
            f"report schema_version {version!r} is not one of "
            f"{', '.join(map(str, SCHEMA_VERSIONS))}, the ones this edgefleet reads: upgrade "
            "the side that is older"
        )


def _check_segments(report: Report) -> None:
    """Version 2 carries segments, version 1 none; each segment feature partitions the
    scores exactly and holds no more outcomes than the report (module docstring)."""
    segments = report.segments
    if not isinstance(segments, tuple) or not all(isinstance(s, SegmentSketch) for s in segments):
        raise InputError("report field 'segments' must be a tuple of SegmentSketch")
    if report.schema_version == SEGMENTS_VERSION and not segments:
        raise InputError("report field 'segments': a version 2 report carries segments")
    if report.schema_version == SCHEMA_VERSION and segments:
        raise InputError("report field 'segments': a version 1 report carries none")
    names = [s.feature for s in segments]
    if len(set(names)) != len(names):
        raise InputError("report field 'segments' names a feature twice")
    scores = list(report.scores.counts.counts)
    negatives, positives = (list(h.counts) for h in report.outcomes.by_label)
    for segment in segments:
        if segment.score_totals() != scores:
            raise InputError(
                f"report field 'segments': segment {segment.feature!r} does not partition "
                "the report's scores"
            )
        got_negatives, got_positives = segment.outcome_totals()
        if any(map(int.__gt__, got_negatives, negatives)) or any(
            map(int.__gt__, got_positives, positives)
        ):
            raise InputError(
                f"report field 'segments': segment {segment.feature!r} holds more outcomes "
                "than the report"
            )


def _check_shadow(report: Report) -> None:
    """Version 3 carries a challenger's histograms, version 4 may carry its paired losses
    (of the report's task), the others none; the challenger scored the records the champion
    scored, and its labelled records are the champion's."""
    shadow = report.shadow
    version = report.schema_version
    if version == SHADOW_VERSION and shadow is None:
        raise InputError("report field 'shadow': a version 3 report carries it")
    if shadow is None:
        return
    if not isinstance(shadow, ShadowSketch):
        raise InputError("report field 'shadow' must be a ShadowSketch")
    task = "binary" if report.task is None else report.task.kind
    if version not in (SHADOW_VERSION, TASK_VERSION) or shadow.task != task:
        raise InputError(
            "report field 'shadow': a binary model's challenger histograms come in version 3 "
            "reports, a multi-class or regression model's paired losses (of its task) in "
            "version 4, and no other report carries one"
        )
    if shadow.model_version == report.model_version:
        raise InputError("report field 'shadow': the challenger is the champion's version")
    if shadow.scores.total > report.scored or shadow.labelled > report.outcomes.labelled:
        raise InputError(
            "report field 'shadow': the challenger counts more records than the champion"
        )


def _check_task(report: Report) -> None:
    """Version 4 carries a task sketch, the others none; it counts the rows the report's
    histograms count (the meaning :mod:`edgefleet.edge.tasksketch` gives them)."""
    task = report.task
    if (report.schema_version == TASK_VERSION) != (task is not None):
        raise InputError("report field 'task': present in version 4 reports, and only there")
    if task is None:
        return
    if not isinstance(task, TaskSketch):
        raise InputError("report field 'task' must be a MulticlassSketch or RegressionSketch")
    if task.scored != report.scored:
        raise InputError(
            f"report field 'task': counts {task.scored} predictions but the report scored "
            f"{report.scored}"
        )
    wrong, right = (h.total for h in report.outcomes.by_label)
    if task.labelled != wrong + right:
        raise InputError(
            f"report field 'task': counts {task.labelled} labelled rows but the outcome "
            f"histograms {wrong + right}"
        )
    correct = task.correct
    if right != correct:
        raise InputError(
            f"report field 'outcomes': {right} right predictions but the task sketch has {correct}"
        )


def _segments_from_json(raw: Any) -> tuple[SegmentSketch, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_FEATURES:
        raise InputError("report field 'segments' must be an array of segment sketches")
    return tuple(SegmentSketch.from_json(item, f"segments[{i}]") for i, item in enumerate(raw))


def _dict(raw: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InputError(f"report field {where!r} must be an object, not {json_type(raw)}")
    exact_keys(raw, keys, f"report field {where!r}")
    return raw


def _histogram(values: Any, field: str, *, exact: int | None = None) -> Histogram:
    field = f"report field {field!r}"
    if not isinstance(values, list):
        raise InputError(f"{field} must be an array of counts, not {json_type(values)}")
    if exact is not None and len(values) != exact:
        raise InputError(f"{field} must have {exact} bins, not {len(values)}")
    if not 0 < len(values) <= MAX_BINS:
        raise InputError(f"{field} must have 1 to {MAX_BINS} bins, not {len(values)}")
    for i, value in enumerate(values):
        check_count(value, f"{field}[{i}]")
    return Histogram(tuple(values))


def _scores_from_json(raw: Any, where: str) -> ScoreSketch:
    sketch = _dict(raw, ("counts", "by_label"), where)
    by_label = sketch["by_label"]
    if not isinstance(by_label, list) or len(by_label) != 2:
        raise InputError(f"report field '{where}.by_label' must be an array of two histograms")
    counts = _histogram(sketch["counts"], f"{where}.counts", exact=SCORE_BINS)
    negative = _histogram(by_label[0], f"{where}.by_label[0]", exact=SCORE_BINS)
    positive = _histogram(by_label[1], f"{where}.by_label[1]", exact=SCORE_BINS)
    try:
        return ScoreSketch(counts=counts, by_label=(negative, positive))
    except InputError as error:
        raise InputError(f"report field {where!r}: {error}") from None


def _latency_from_json(raw: Any) -> LatencySketch:
    sketch = _dict(raw, ("counts",), "latency")
    return LatencySketch(_histogram(sketch["counts"], "latency.counts", exact=LATENCY_BUCKETS))


def _features_from_json(raw: Any) -> tuple[FeatureSketch, ...]:
    if not isinstance(raw, list):
        raise InputError(f"report field 'features' must be an array, not {json_type(raw)}")
    if not 0 < len(raw) <= MAX_FEATURES:
        raise InputError(f"report field 'features' has {len(raw)} features; 1 to {MAX_FEATURES}")
    features: list[FeatureSketch] = []
    for i, item in enumerate(raw):
        where = f"features[{i}]"
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind == "numeric":
            sketch = _dict(item, ("name", "kind", "bins", "missing", "out_of_range"), where)
        elif kind == "categorical":
            sketch = _dict(item, ("name", "kind", "bins", "missing", "unknown"), where)
        else:
            raise InputError(
                f"report field {where!r} must be an object of kind 'numeric' or 'categorical'"
            )
        name = check_name(sketch["name"], f"report field '{where}.name'")
        bins = _histogram(sketch["bins"], f"{where}.bins")
        counts = {
            key: check_count(sketch.get(key, 0), f"report field '{where}.{key}'")
            for key in ("missing", "out_of_range", "unknown")
        }
        try:
            features.append(FeatureSketch(name=name, kind=kind, bins=bins, **counts))
        except InputError as error:
            raise InputError(f"report field {where!r}: {error}") from None
    return tuple(features)
