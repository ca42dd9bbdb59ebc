"""Distinct devices (edge/distinct.py, docs/architecture.md §7b): exact up to EXACT_LIMIT,
then HyperLogLog registers whose union does not depend on how the ids were grouped."""

from __future__ import annotations

import base64
import random
from dataclasses import replace

import pytest

from edgefleet.edge.aggregate import SketchSums, merge_all
from edgefleet.edge.distinct import EXACT_LIMIT, REGISTERS, DistinctIds
from edgefleet.errors import InputError
from tests.edge.test_sketch_report import _report

TOLERANCE = 0.05
"""About three standard errors of 4,096 registers (1.04 / 64 = 1.6%)."""


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"dev-{i:07d}" for i in range(start, start + n)]


def test_a_count_is_exact_up_to_the_limit() -> None:
    ids = _ids(EXACT_LIMIT)
    counted = DistinctIds(ids + ids[:10])
    assert counted.exact
    assert counted.count() == EXACT_LIMIT
    assert counted.to_json() == sorted(ids)
    counted.add("one-more")
    assert not counted.exact


@pytest.mark.parametrize("n", [EXACT_LIMIT + 1, 1000, 10_000, 100_000])
def test_past_the_limit_the_estimate_is_within_its_bound(n: int) -> None:
    estimate = DistinctIds(_ids(n)).count()
    assert abs(estimate - n) <= TOLERANCE * n, (n, estimate)


def test_a_union_does_not_depend_on_the_grouping() -> None:
    """As rollups group a window's reports into buckets in many ways: the same registers
    (and with the exact sets of small groups mixed in)."""
    ids = _ids(5000)
    whole = DistinctIds(ids)
    rng = random.Random(3)
    for _ in range(3):
        shuffled = ids + rng.sample(ids, 500)  # devices in several buckets
        rng.shuffle(shuffled)
        merged = DistinctIds()
        start = 0
        while start < len(shuffled):
            size = rng.choice([1, 7, 100, 900])
            merged.merge(
                DistinctIds.from_json(DistinctIds(shuffled[start : start + size]).to_json())
            )
            start += size
        assert merged.to_json() == whole.to_json()
        assert merged.count() == whole.count()


def test_stored_registers_are_checked() -> None:
    good = DistinctIds(_ids(1000)).to_json()
    assert isinstance(good, dict)
    bad = [
        {"hll12": "not base64!"},
        {"hll12": base64.b64encode(bytes(REGISTERS - 1)).decode()},
        {"hll12": base64.b64encode(bytes([60]) * REGISTERS).decode()},
        {"hll12": good["hll12"], "more": 1},
        ["dev-1", 2],
        "dev-1",
    ]
    for value in bad:
        with pytest.raises(InputError):
            DistinctIds.from_json(value)


def test_an_aggregate_of_many_devices_counts_them_without_listing_them() -> None:
    base = _report(1)
    reports = [replace(base, device_id=device) for device in _ids(1000)]
    whole = merge_all(reports)
    assert whole.devices == frozenset()
    assert whole.device_sketch is not None
    assert abs(whole.n_devices - 1000) <= TOLERANCE * 1000
    halves = merge_all([merge_all(reports[:600]), merge_all(reports[400:])])
    assert (halves.device_sketch, halves.reports) == (whole.device_sketch, 1200)
    assert isinstance(whole.to_dict()["devices"], dict)
    small = merge_all(reports[:3])
    assert (small.devices, small.device_sketch, small.n_devices) == (frozenset(_ids(3)), None, 3)


def test_sums_write_the_body_an_aggregate_writes_past_the_limit() -> None:
    from edgefleet.central.monitor.merging import add_counts
    from edgefleet.central.monitor.validation import layout_of

    base = _report(2)
    total = SketchSums()
    for device in _ids(EXACT_LIMIT + 50):
        raw = replace(base, device_id=device).to_dict()
        add_counts(total, raw, layout_of(raw))
    assert total.to_dict() == total.freeze().to_dict()
