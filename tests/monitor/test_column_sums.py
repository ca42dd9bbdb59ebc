"""Column-wise sums of reports (central/monitor/column_sums.py) equal one-by-one sums,
exactly, across settling blocks, with segments, and past the counts numpy may hold."""

from __future__ import annotations

import copy

import pytest

from edgefleet.central.monitor.column_sums import SETTLE_ROWS, ColumnSums
from edgefleet.central.monitor.merging import add_counts
from edgefleet.central.monitor.validation import layout_of
from edgefleet.edge.aggregate import SketchSums, merge_all
from tests.monitor.conftest import make_report


def _sum(total: SketchSums, raws: list[dict[str, object]]) -> SketchSums:
    for raw in raws:
        add_counts(total, raw, layout_of(raw))
    return total


def test_column_sums_equal_one_by_one_sums_across_blocks() -> None:
    reports = [
        make_report(f"d{i % 7}", i, rows=12, segments=("contract",), window_end=1e9 + i)
        for i in range(SETTLE_ROWS + 9)
    ]
    raws = [r.to_dict() for r in reports]
    columns = _sum(ColumnSums(), raws)
    assert columns.to_dict() == _sum(SketchSums(), raws).to_dict()
    assert columns.freeze() == merge_all(reports)


def test_counts_beyond_64_bits_are_summed_exactly() -> None:
    raws = [make_report("d1", i, rows=10, window_end=1e9 + i).to_dict() for i in range(3)]
    huge = copy.deepcopy(raws[1])
    huge["features"][0]["bins"][0] = 2**70  # not a count a device makes: still exact
    columns = _sum(ColumnSums(), [raws[0], huge, raws[2]])
    expected = sum(r["features"][0]["bins"][0] for r in (raws[0], raws[2])) + 2**70
    assert columns.to_dict()["features"][0]["bins"][0] == expected


def test_a_report_of_another_width_is_refused_when_added() -> None:
    raws = [make_report("d1", i, rows=10, window_end=1e9 + i).to_dict() for i in range(2)]
    raws[1]["latency"]["counts"] = [*raws[1]["latency"]["counts"], 0]
    with pytest.raises(ValueError, match="do not fit the layout"):
        _sum(ColumnSums(), raws)
