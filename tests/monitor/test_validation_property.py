"""Property (hypothesis): generated reports, mutations of valid ones, thrown at the
monitor's validation. Whatever arrives, the validator only ever accepts or refuses (an
:class:`InputError`, i.e. quarantine), never raises anything else; and everything it
accepts merges, with the version's other reports and with each other, and measures against
the version's reference.

The mutations: wrong bin counts, negative counts, NaN and Infinity, huge ints, wrong types,
missing and extra keys, duplicate keys, wrong feature names, other versions, truncation,
and any combination of them; version 2 reports (segments) among them."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.central.monitor.measures import measure
from edgefleet.central.monitor.merging import StoredMerge, StoredRow
from edgefleet.central.monitor.store import PreparedBatch, _version_refusal, prepare
from edgefleet.central.monitor.validation import VersionProfile
from edgefleet.edge.aggregate import merge_all
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.topics import Topics
from edgefleet.errors import InputError
from tests.monitor.conftest import _profile, make_report

TOPICS = Topics("acme")
SEGMENTS = ("senior_citizen", "region")
BASE = [make_report(f"d{i}", i, rows=20 + 10 * i) for i in range(3)] + [
    make_report(f"d{i}", 10 + i, rows=30, model_version="1.2.0", segments=SEGMENTS)
    for i in range(2)
]
SCHEMA, REFERENCE, _ = _profile()
PROFILE = VersionProfile.of(SCHEMA, REFERENCE, "churn", "1.0.0")
SEGMENTED = replace(SCHEMA, segments=SEGMENTS)
PROFILES = {
    "1.0.0": PROFILE,
    "1.2.0": VersionProfile.of(SEGMENTED, REFERENCE, "churn", "1.2.0"),
}


def lookup(name: str, version: str) -> VersionProfile | bool | None:
    if name == "churn" and version in PROFILES:
        return PROFILES[version]
    return True if (name, version) == ("churn", "1.1.0") else None  # known, no profile


# -- values and paths ----------------------------------------------------------------------

HUGE = st.sampled_from([2**63, 2**64 + 1, 10**400, -(2**63), 2**40 + 1, 2**62])
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=5),
    HUGE,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(min_value=0, max_value=3), max_size=4),
    # Fresh objects each draw: a shared ``st.just({})`` could be inserted into itself by a
    # later mutation (a cycle) and would carry one example's changes into the next.
    st.builds(dict),
    st.builds(lambda: {"counts": []}),
)


def _containers(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value in a parsed report (dict keys and list indices)."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _containers(item, (*path, key))
    elif isinstance(value, list) and len(value) <= 200:
        for index, item in enumerate(value[:8]):
            found += _containers(item, (*path, index))
        if len(value) > 8:
            found += _containers(value[-1], (*path, len(value) - 1))
    return found


def _parent(raw: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    for step in path[:-1]:
        raw = raw[step]
    return raw, path[-1]


@st.composite
def mutation(draw: st.DrawFn, raw: dict[str, Any]) -> None:
    """Change ``raw`` in place in one of the ways an attacker (or a bug) would."""
    paths = [p for p in _containers(raw) if p]
    path = draw(st.sampled_from(paths))
    parent, key = _parent(raw, path)
    kind = draw(
        st.sampled_from(["value", "delete", "extra", "bins", "negative", "name", "version", "swap"])
    )
    if kind == "value":
        parent[key] = draw(ODD_VALUES)
    elif kind == "delete":
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif kind == "extra":
        target = parent if isinstance(parent, dict) else raw
        target[draw(st.text(min_size=1, max_size=6))] = draw(ODD_VALUES)
    elif kind == "bins":
        # An earlier mutation may have replaced the features with any value.
        features = raw.get("features")
        feature = (
            draw(st.sampled_from(features)) if isinstance(features, list) and features else raw
        )
        bins = feature.get("bins") if isinstance(feature, dict) else None
        if isinstance(bins, list):
            if draw(st.booleans()) or len(bins) < 2:
                bins.append(0)
            else:  # one bin fewer, the counts kept: the totals still add up
                last = bins.pop()
                bins[-1] = [bins[-1], last] if isinstance(last, list) else bins[-1] + last
    elif kind == "negative":
        if isinstance(parent[key], int) and not isinstance(parent[key], bool):
            parent[key] = -parent[key] - 1
    elif kind == "name" and isinstance(raw.get("features"), list):
        # An earlier mutation may have replaced the features with any value.
        for feature in raw["features"]:
            if isinstance(feature, dict) and draw(st.booleans()):
                feature["name"] = draw(st.text(min_size=1, max_size=10))
                break
    elif kind == "version":
        raw["model_version"] = draw(
            st.sampled_from(["1.1.0", "1.1.0", "1.0.0", "1.2.0", "2.0.0", "1.0", "", "1.0.0 "])
        )
    elif kind == "swap" and isinstance(raw.get("features"), list) and len(raw["features"]) > 1:
        features = raw["features"]
        features[0], features[-1] = features[-1], features[0]


@st.composite
def payload(draw: st.DrawFn) -> bytes:
    """A valid report's JSON, mutated up to four times, then maybe garbled as text."""
    base = draw(st.sampled_from(BASE)).to_dict()
    raw = json.loads(json.dumps(base))
    # Weighted towards few changes, so that a good share is still accepted and merged.
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3, 4]))):
        draw(mutation(raw))
    text = json.dumps(raw, allow_nan=True)
    garble = draw(st.sampled_from(["none"] * 7 + ["duplicate", "truncate", "nan"]))
    if garble == "duplicate":
        text = text.replace('"failed": ', '"failed": 0, "failed": ', 1)
    elif garble == "truncate":
        text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
    elif garble == "nan":
        text = text.replace('"sequence": ', '"sequence": NaN, "x": ', 1)
    return text.encode()


def validate(data: bytes) -> PreparedBatch:
    """The monitor's whole check of one message, without a database."""
    batch = prepare([(TOPICS.report(_device(data)), data)], fleet="acme", prefix="edgefleet")
    for _, row, layout in batch.valid:
        reason = _version_refusal(row, layout, lookup, batch.received)
        if reason is not None:
            return PreparedBatch(batch.received, [], [{"reason": reason}])
    return batch


def _device(data: bytes) -> str:
    try:
        device = json.loads(data).get("device_id")
    except (ValueError, AttributeError, RecursionError):
        return "d0"
    return device if isinstance(device, str) and device in ("d0", "d1", "d2") else "d0"


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(payload(), min_size=1, max_size=4))
def test_the_validator_refuses_or_accepts_and_what_it_accepts_merges(
    payloads: list[bytes],
) -> None:
    accepted = []
    for data in payloads:
        # Any exception but a refusal fails the test here (prepare catches InputError).
        batch = validate(data)
        assert len(batch.valid) + len(batch.refused) == 1
        for refusal in batch.refused:
            assert refusal["reason"]
        accepted += [row for _, row, _ in batch.valid]
    by_version: dict[str, list[StoredRow]] = {}
    for number, row in enumerate(accepted):
        stored = StoredRow(id=number, **{k: row[k] for k in _ROW_KEYS}, body=row["body"])
        by_version.setdefault(row["model_version"], []).append(stored)
    for version, rows in by_version.items():
        merge = StoredMerge(PROFILES.get(version))
        # With the version's own valid reports, as in the store.
        others = [r for r in BASE if r.model_version == version]
        for number, report in enumerate(others):
            base_row = StoredRow(
                -1 - number,
                report.fleet,
                report.device_id,
                report.sequence,
                report.model_name,
                report.model_version,
                report.cohort,
                report.device_group,
                report.encode().decode(),
            )
            assert merge.add(base_row)
        for row in rows:
            assert merge.add(row)
        merged = merge.result()
        # Every row is merged or skipped by name, never lost, never an exception.
        assert merged.aggregate is not None
        assert merged.aggregate.reports + merged.skipped_total == len(others) + len(rows)
        if version in PROFILES:
            # Everything accepted for a version with a profile merges: nothing skipped.
            assert merged.skipped == (), merged.skipped
            assert merged.aggregate is not None
            assert merged.aggregate.reports == len(others) + len(rows)
            _measurable(merged.aggregate, MANIFESTS[version])
            if not rows:
                assert merged.aggregate == merge_all(others)


_ROW_KEYS = ("fleet", "device_id", "sequence", "model_name", "model_version", "cohort")
_ROW_KEYS = (*_ROW_KEYS, "device_group")


MANIFEST = Manifest(
    name="churn",
    version="1.0.0",
    created="2025-06-01T00:00:00+00:00",
    model_family="logreg",
    target=SCHEMA.target,
    data_sha256="0" * 64,
    schema=SCHEMA,
    metrics={"auroc": 0.8},
    reference=REFERENCE,
    golden=(),
    artifacts=(),
)


MANIFESTS = {"1.0.0": MANIFEST, "1.2.0": replace(MANIFEST, version="1.2.0", schema=SEGMENTED)}


def _measurable(aggregate: Any, manifest: Manifest) -> None:
    measures = measure(aggregate, manifest)
    for feature in measures.features:
        assert feature.js is None or math.isfinite(feature.js)
    assert len(measures.fairness) == len(manifest.schema.segments)


def test_a_refusal_is_an_input_error() -> None:
    """The one kind of exception the checks raise, which prepare turns into quarantine."""
    raw = BASE[0].to_dict()
    raw["features"][0]["bins"].append(0)
    data = json.dumps(raw).encode()
    (_, row, layout), *_ = prepare([(TOPICS.report("d0"), data)]).valid
    with pytest.raises(InputError, match="bins; the version has"):
        PROFILE.check(layout, row["window_end"], row["window_end"])
