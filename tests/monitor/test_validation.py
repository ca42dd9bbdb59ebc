"""Reports checked against the model version they claim, on SQLite and PostgreSQL: a
well-formed report that does not fit its version is quarantined with the reason, counted
against its device and not acknowledged, while the good reports beside it are stored exactly
once; stored rows that cannot be merged are skipped by name; a device's reports can be
deleted (docs/architecture.md §10)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from edgefleet.central.monitor.merging import MAX_REPORT_COUNT
from edgefleet.central.monitor.purge import count_device_records, delete_device_records
from edgefleet.central.monitor.store import IngestCounts, MonitorStore
from edgefleet.central.monitor.validation import (
    MAX_CLOCK_AHEAD,
    CachedProfiles,
    VersionProfile,
    layout_of,
)
from edgefleet.edge.aggregate import merge_all
from edgefleet.edge.report import Report
from edgefleet.edge.status import DeviceStatus
from edgefleet.edge.topics import Topics
from edgefleet.errors import InputError
from tests.monitor.conftest import _profile, insert_stored_row, make_report

TOPICS = Topics("acme")
NOW = 1_750_000_100.0


def profile(version: str = "1.0.0") -> VersionProfile:
    schema, reference, _ = _profile()
    return VersionProfile.of(schema, reference, "churn", version)


def lookup(name: str, version: str) -> VersionProfile | None:
    return profile(version) if name == "churn" and version in ("1.0.0", "1.1.0") else None


def forged(report: Report, change: Callable[[dict[str, Any]], None]) -> tuple[str, bytes]:
    raw = report.to_dict()
    change(raw)
    return TOPICS.report(report.device_id), json.dumps(raw).encode()


def _extra_bin(raw: dict[str, Any]) -> None:
    raw["features"][0]["bins"].append(0)


def _categorical_bin(raw: dict[str, Any]) -> None:
    feature = next(f for f in raw["features"] if f["kind"] == "categorical")
    feature["bins"] = [*feature["bins"][:-2], feature["bins"][-2] + feature["bins"][-1]]


def _swapped(raw: dict[str, Any]) -> None:
    raw["features"][0], raw["features"][1] = raw["features"][1], raw["features"][0]


def _renamed(raw: dict[str, Any]) -> None:
    raw["features"][2]["name"] = "something_else"


def _dropped(raw: dict[str, Any]) -> None:
    raw["features"].pop()


def _added(raw: dict[str, Any]) -> None:
    raw["features"].append({**raw["features"][0], "name": "extra_feature"})


def _future(raw: dict[str, Any]) -> None:
    raw["window_end"] = time.time() + 2 * MAX_CLOCK_AHEAD
    raw["window_start"] = raw["window_end"] - 60


def _huge(raw: dict[str, Any]) -> None:
    raw["scored"] = MAX_REPORT_COUNT + 1
    for feature in raw["features"]:
        feature["bins"][0] += MAX_REPORT_COUNT + 1 - sum(feature["bins"]) - feature["missing"]
        feature["bins"][0] -= feature.get("unknown", 0)
    raw["scores"]["counts"][0] += MAX_REPORT_COUNT + 1 - sum(raw["scores"]["counts"])


def _other_version(raw: dict[str, Any]) -> None:
    raw["model_version"] = "7.0.0"


# (mutation, words the quarantine reason must hold)
ATTACKS: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (_extra_bin, "bins; the version has"),
    (_categorical_bin, "vocabulary values"),
    (_swapped, "schema order"),
    (_renamed, "'something_else' where the version has"),
    (_dropped, "features; the version has"),
    (_added, "features; the version has"),
    (_future, "clock is wrong"),
    (_huge, "no device scores that much"),
    (_other_version, "not a known version"),
]


def test_the_profile_is_what_a_device_reports() -> None:
    report = make_report("d1", 0)
    assert layout_of(report.to_dict()) == profile().layout
    profile().check(layout_of(report.to_dict()), report.window_end, NOW)


def test_reports_that_do_not_fit_their_version_are_quarantined(db_url: str) -> None:
    store = MonitorStore(db_url)
    good = [make_report(f"d{i}", 0) for i in range(3)]
    bad = [forged(make_report("evil", i), change) for i, (change, _) in enumerate(ATTACKS)]
    items = [(TOPICS.report(r.device_id), r.encode()) for r in good]
    counts = store.ingest_many(items[:1] + bad + items[1:], known_version=lookup)
    assert counts == IngestCounts(stored=3, quarantined=len(ATTACKS))
    # Only the good reports are acknowledged; the refused ones are re-sent by the device.
    assert sorted(counts.committed) == [("acme", f"d{i}", 0) for i in range(3)]
    kept = store.quarantined("acme", limit=100, device_id="evil")
    assert len(kept) == len(ATTACKS)
    for sequence, (_, words) in enumerate(ATTACKS):
        (row,) = [r for r in kept if f'"sequence": {sequence},' in r.excerpt]
        assert words in row.reason, (words, row.reason)
    (evil,) = store.refusal_counts("acme")
    assert (evil.device_id, evil.refused) == ("evil", len(ATTACKS))
    # The good ones again with more refusals: counted, not overwritten; each stored once.
    again = store.ingest_many(items + bad[:2], known_version=lookup)
    assert again == IngestCounts(duplicates=3, quarantined=2)
    assert store.refusal_counts("acme")[0].refused == len(ATTACKS) + 2
    merged = store.merged("acme", expected=profile())
    assert merged.aggregate == merge_all(good)
    assert merged.skipped == ()
    store.close()


def test_refusals_are_counted_per_device_beyond_the_quarantine_limit(db_url: str) -> None:
    store = MonitorStore(db_url, quarantine_limit=3)
    junk = [(TOPICS.report("noisy"), b"junk")] * 5 + [(TOPICS.report("quiet"), b"junk")]
    junk.append(("edgefleet/acme/devices/../report", b"junk"))
    store.ingest_many(junk)
    counts = {c.device_id: c.refused for c in store.refusal_counts("acme")}
    assert counts == {"noisy": 5, "quiet": 1, "": 1}
    assert store.quarantine_count("acme") == 3
    store.close()


def test_cached_profiles_learn_a_new_version_at_most_every_refresh() -> None:
    known = {("churn", "1.0.0"): profile()}
    loads = []
    now = [0.0]

    def load() -> dict[tuple[str, str], VersionProfile]:
        loads.append(now[0])
        return dict(known)

    cached = CachedProfiles(load, refresh_seconds=10.0, clock=lambda: now[0])
    assert cached("churn", "1.0.0") == profile()
    known[("churn", "1.1.0")] = profile("1.1.0")
    now[0] = 5.0
    assert cached("churn", "1.1.0") is None  # too soon to reload
    for _ in range(100):
        assert cached("churn", "6.6.6") is None  # a flood of made-up versions
    now[0] = 10.0
    assert cached("churn", "1.1.0") == profile("1.1.0")
    assert loads == [0.0, 10.0]


def test_a_merge_follows_the_majority_whatever_the_order(db_url: str) -> None:
    store = MonitorStore(db_url)
    good = [make_report(f"d{i}", 0) for i in range(3)]
    odd = make_report("odd", 0).to_dict()
    _extra_bin(odd)
    # The odd one first: before, it set the layout, and every good report "disagreed".
    insert_stored_row(store, json.dumps(odd))
    store.ingest_many([(TOPICS.report(r.device_id), r.encode()) for r in good])
    merged = store.merged("acme")
    assert merged.aggregate == merge_all(good)
    (skipped,) = merged.skipped
    assert (skipped.device_id, merged.skipped_total) == ("odd", 1)
    assert "differ from those of the 3 other reports" in skipped.reason
    assert store.aggregate("acme") == merge_all(good)  # logged, not raised
    store.close()


@pytest.mark.parametrize(
    "body",
    [
        "",
        "null",
        "[]",
        '{"schema_version": 1}',
        "{" * 5000,
        '{"a": NaN}',
        "\x00\x01",
    ],
)
def test_a_merge_skips_what_is_not_a_report(db_url: str, body: str) -> None:
    store = MonitorStore(db_url)
    good = make_report("d1", 0)
    store.ingest_many([(TOPICS.report("d1"), good.encode())])
    insert_stored_row(store, body.replace("\x00", "\\u0000"), device_id="hand", sequence=7)
    merged = store.merged("acme", model_version="1.0.0")
    assert merged.aggregate == merge_all([good])
    assert [(s.device_id, s.sequence) for s in merged.skipped] == [("hand", 7)]
    store.close()


def test_deleting_a_devices_reports(db_url: str) -> None:
    store = MonitorStore(db_url)
    reports = [make_report(d, s, window_end=1000.0 * (s + 1)) for d in ("a", "b") for s in range(4)]
    store.ingest_many([(TOPICS.report(r.device_id), r.encode()) for r in reports])
    store.put_statuses("acme", [DeviceStatus(device_id=d, state="online") for d in ("a", "b")])
    store.ingest_many([(TOPICS.report("a"), b"junk")])
    with pytest.raises(InputError, match="before"):
        count_device_records(store, "acme", "a", since=5.0, until=5.0)
    # A time range: window ends in [2000, 4000), the status row stays.
    ranged = count_device_records(store, "acme", "a", since=2000.0, until=4000.0)
    assert (ranged.reports, ranged.statuses) == (2, 0)
    assert delete_device_records(store, "acme", "a", since=2000.0, until=4000.0) == ranged
    assert store.report_count("acme", device_id="a") == 2
    # Everything: the rest of its reports and its status row; b and the evidence stay.
    whole = delete_device_records(store, "acme", "a")
    assert (whole.reports, whole.statuses) == (2, 1)
    assert store.report_count("acme", device_id="a") == 0
    assert store.report_count("acme", device_id="b") == 4
    assert set(store.statuses("acme")) == {"b"}
    assert store.refusal_counts("acme")[0].device_id == "a"
    assert [d.device_id for d in store.devices("acme")] == ["b"]
    assert delete_device_records(store, "acme", "a").total == 0
    store.close()
