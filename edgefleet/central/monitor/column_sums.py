"""Summing many reports' counts column-wise (docs/architecture.md §7b).

Adding each report's counts to the running sums one list at a time made a minute rollup
cost the monitor about 80 µs per report, most of the rollups' share of ingest. Here a
report's counts are laid out as one flat row and held; every :data:`SETTLE_ROWS` rows (and
before the sums are read) the rows are summed column by column (``map(sum, zip(*rows))``,
in C, exact Python ints: faster here than converting to numpy, and never overflowing) and
added to the sums once.
"""

from __future__ import annotations

import operator
from typing import Any

from edgefleet.edge.aggregate import Aggregate, SketchSums

SETTLE_ROWS = 256
"""Rows held before they are summed (bounds the memory of a long merge)."""


def flat_counts(raw: dict[str, Any]) -> list[int]:
    """A checked report's counts as one row: features (bins, missing, out of range,
    unknown), the seven histograms, the three totals, then the segments, in the order of
    :class:`SketchSums`'s lists."""
    flat: list[int] = []
    extend, append = flat.extend, flat.append
    for feature in raw["features"]:
        extend(feature["bins"])
        append(feature["missing"])
        append(feature.get("out_of_range", 0))
        append(feature.get("unknown", 0))
    for sketch in (raw["scores"], raw["outcomes"]):
        extend(sketch["counts"])
        for histogram in sketch["by_label"]:
            extend(histogram)
    extend(raw["latency"]["counts"])
    extend((raw["scored"], raw["failed"], raw["dropped_reports"]))
    for segment in raw.get("segments", ()):
        for key in ("scores", "negatives", "positives"):
            for level in segment[key]:
                extend(level)
    return flat


class ColumnSums(SketchSums):
    """:class:`SketchSums` that holds reports' flat counts (:meth:`hold`) and sums them in
    blocks; reading the sums (:meth:`freeze`, :meth:`to_dict`) settles what is held."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[list[int]] = []
        self._width = -1

    def width(self) -> int:
        """The length of a flat row of these sums' layout (set by the first report)."""
        if self._width < 0:
            lists = (*self.features, *self.histograms, self.totals, *self.segments)
            self._width = sum(len(counts) for counts in lists)
        return self._width

    def hold(self, flat: list[int]) -> None:
        """Hold one report's :func:`flat_counts` (the sums' layout already set)."""
        if len(flat) != self.width():
            raise ValueError("a report's counts do not fit the layout of the reports before it")
        self.held.append(flat)
        if len(self.held) >= SETTLE_ROWS:
            self.settle()

    def settle(self) -> None:
        """Add the held rows to the sums."""
        if not self.held:
            return
        self._add_flat(_column_totals(self.held))
        self.held = []

    def _add_flat(self, sums: list[int]) -> None:
        start = 0

        def take(counts: list[int]) -> list[int]:
            nonlocal start
            part = sums[start : start + len(counts)]
            start += len(counts)
            return list(map(operator.add, counts, part))

        self.features = [take(counts) for counts in self.features]
        self.histograms = [take(counts) for counts in self.histograms]
        self.totals = take(self.totals)
        self.segments = [take(counts) for counts in self.segments]

    def freeze(self) -> Aggregate:
        self.settle()
        return super().freeze()

    def to_dict(self) -> dict[str, Any]:
        self.settle()
        return super().to_dict()


def _column_totals(rows: list[list[int]]) -> list[int]:
    return list(map(sum, zip(*rows, strict=True)))
