"""Shadow scoring on the device (docs/architecture.md §17): the challenger a rollout names
scores every record beside the champion, and only the champion's answer is returned.

What a shadow device measures per window, for the report's ``shadow`` field (report
version 3):

- ``scores``: the challenger's score histogram over every record both models scored;
- ``challenger``: the challenger's scores of the records whose label came back, by label;
- ``champion``: the champion's scores of *the same* records, by label.

The two outcome histograms are paired: the same labelled records under both models, so the
central side compares the models' AUROC and average precision on identical records, not
on two different samples of the fleet.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.edge.manifest import parse_version
from edgefleet.edge.profile import SCORE_BINS, score_bin_index
from edgefleet.edge.sketch import Histogram, ReportBody
from edgefleet.edge.wirejson import exact_keys, json_type
from edgefleet.errors import InputError

SHADOW_FIELDS = ("model_version", "scores", "challenger", "champion")


@dataclass(frozen=True)
class ShadowSketch:
    """The challenger's histograms of one window (see the module docstring)."""

    model_version: str
    scores: Histogram
    challenger: tuple[Histogram, Histogram]
    """The challenger's scores of labelled records: (label 0, label 1)."""
    champion: tuple[Histogram, Histogram]
    """The champion's scores of the same labelled records: (label 0, label 1)."""

    def __post_init__(self) -> None:
        try:
            parse_version(self.model_version)
        except (InputError, TypeError):
            raise InputError("report field 'shadow.model_version' is not a version") from None
        histograms = (self.scores, *self.challenger, *self.champion)
        if len(histograms) != 5 or any(
            not isinstance(h, Histogram) or h.bins != SCORE_BINS for h in histograms
        ):
            raise InputError(f"report field 'shadow': five histograms of {SCORE_BINS} bins")
        if self.challenger[0].total != self.champion[0].total or (
            self.challenger[1].total != self.champion[1].total
        ):
            raise InputError(
                "report field 'shadow': the champion's and the challenger's labelled counts "
                "differ, but they count the same records"
            )
        if self.challenger[0].total + self.challenger[1].total > self.scores.total:
            raise InputError("report field 'shadow': more labelled records than scored ones")

    @property
    def labelled(self) -> int:
        return self.challenger[0].total + self.challenger[1].total

    def flat(self) -> list[int]:
        """All counts in one list (scores, challenger 0/1, champion 0/1): what sums add."""
        return [c for h in (self.scores, *self.challenger, *self.champion) for c in h.counts]

    @classmethod
    def from_flat(cls, model_version: str, counts: list[int]) -> ShadowSketch:
        h = [Histogram(tuple(counts[i * SCORE_BINS : (i + 1) * SCORE_BINS])) for i in range(5)]
        return cls(model_version, h[0], (h[1], h[2]), (h[3], h[4]))

    def merge(self, other: ShadowSketch) -> ShadowSketch:
        if other.model_version != self.model_version:
            raise InputError("cannot merge the shadow counts of two challengers")
        return ShadowSketch.from_flat(
            self.model_version, [a + b for a, b in zip(self.flat(), other.flat(), strict=True)]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "scores": self.scores.to_list(),
            "challenger": [h.to_list() for h in self.challenger],
            "champion": [h.to_list() for h in self.champion],
        }

    @classmethod
    def from_json(cls, raw: Any) -> ShadowSketch:
        """Parse the ``shadow`` field of a report from the network."""
        if not isinstance(raw, dict):
            raise InputError(f"report field 'shadow' must be an object, not {json_type(raw)}")
        exact_keys(raw, SHADOW_FIELDS, "report field 'shadow'")
        pairs = []
        for key in ("challenger", "champion"):
            value = raw[key]
            if not isinstance(value, list) or len(value) != 2:
                raise InputError(f"report field 'shadow.{key}' must be two histograms")
            pairs.append((_histogram(value[0], key), _histogram(value[1], key)))
        if not isinstance(raw["model_version"], str):
            raise InputError("report field 'shadow.model_version' must be text")
        return cls(raw["model_version"], _histogram(raw["scores"], "scores"), pairs[0], pairs[1])


def _histogram(values: Any, key: str) -> Histogram:
    if not isinstance(values, list) or len(values) != SCORE_BINS:
        raise InputError(f"report field 'shadow.{key}' must hold histograms of {SCORE_BINS} bins")
    if any(type(v) is not int or v < 0 for v in values):
        raise InputError(f"report field 'shadow.{key}' must hold counts (whole numbers >= 0)")
    return Histogram(tuple(values))


class ShadowCounter:
    """The device's accumulator of one challenger's histograms; thread-safe."""

    def __init__(self, model_version: str) -> None:
        self.model_version = model_version
        self._lock = threading.Lock()
        self._counts = np.zeros((5, SCORE_BINS), dtype=np.int64)

    def add_scores(self, probabilities: npt.ArrayLike, model_version: str) -> None:
        """The challenger's scores of a batch (ignored if another challenger made them)."""
        if model_version != self.model_version:
            return
        index = score_bin_index(np.asarray(probabilities, dtype=np.float64).ravel())
        with self._lock:
            self._counts[0] += np.bincount(index, minlength=SCORE_BINS)

    def add_outcome(self, champion: float, challenger: float, label: int) -> None:
        """The label of one record both models scored: counted under both."""
        if label not in (0, 1):
            raise InputError("an outcome's label must be 0 or 1")
        index = score_bin_index(np.asarray([challenger, champion], dtype=np.float64))
        with self._lock:
            self._counts[1 + label, index[0]] += 1
            self._counts[3 + label, index[1]] += 1

    def roll(self, champion: ReportBody) -> ShadowSketch | None:
        """The window's sketch beside the ``champion``'s window, and a new window; None
        when the challenger saw nothing, or counted more than the champion (rows the
        champion failed on): a report must add up, and the champion's counts come first."""
        with self._lock:
            counts, self._counts = self._counts, np.zeros_like(self._counts)
        if not counts.any() or champion.model_version == self.model_version:
            return None
        sketch = ShadowSketch.from_flat(self.model_version, [int(c) for c in counts.ravel()])
        if sketch.scores.total > champion.scored or sketch.labelled > champion.outcomes.labelled:
            return None
        return sketch
