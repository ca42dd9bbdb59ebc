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

A multi-class or regression champion (report version 4) pairs the models by their loss
instead (:class:`PairedLoss`): per labelled record both scored, the champion's and the
challenger's loss (log loss of the true class, clipped as the monitor's; squared error) and
their difference ``d = loss(challenger) - loss(champion)``, summed with ``d**2``. Exact sums
that merge by addition, from which the central side has the mean paired difference and its
standard error. Its ``scores`` histogram is the challenger's in the task's meaning (§7c: the
top class's probability; a regressor's all in bin 0); it has no by-label histograms.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.edge.manifest import parse_version
from edgefleet.edge.profile import SCORE_BINS, score_bin_index
from edgefleet.edge.sketch import Histogram, ReportBody, check_count
from edgefleet.edge.tasksketch import LOG_CLIP, MAX_ROW_LOSS, MAX_SUM, finite_sum
from edgefleet.edge.wirejson import exact_keys, json_type
from edgefleet.errors import InputError

SHADOW_FIELDS = ("model_version", "scores", "challenger", "champion")
TASK_SHADOW_FIELDS = ("model_version", "task", "scores", "paired")
"""A multi-class or regression champion's shadow field (version 4 reports)."""
PAIRED_FIELDS = ("labelled", "champion", "challenger", "difference", "difference_squares")
PAIRED_TASKS = ("multiclass", "regression")
# Float sums of the same terms added in another order (a merge) differ by rounding only:
# relative 1e-8 is far above it and far below any lie worth telling.
_SUM_SLACK = 1e-8


@dataclass(frozen=True)
class PairedLoss:
    """The paired losses of the labelled records both models scored (module docstring):
    ``champion`` and ``challenger`` are each model's summed loss, ``difference`` the sum of
    ``loss(challenger) - loss(champion)`` and ``difference_squares`` of its squares."""

    task: str
    labelled: int
    champion: float
    challenger: float
    difference: float
    difference_squares: float

    def __post_init__(self) -> None:
        where = "report field 'shadow.paired'"
        if self.task not in PAIRED_TASKS:
            raise InputError(f"report field 'shadow.task' must be one of {PAIRED_TASKS}")
        n = check_count(self.labelled, f"{where}.labelled")
        for name in PAIRED_FIELDS[1:]:
            finite_sum(getattr(self, name), f"{where}.{name}", non_negative=name != "difference")
        scale = self.champion + self.challenger + self.difference_squares
        if n == 0 and (scale or self.difference):
            raise InputError(f"{where}: sums over no labelled record")
        if abs(self.difference - (self.challenger - self.champion)) > _SUM_SLACK * scale:
            raise InputError(
                f"{where}: the difference is not the challenger's minus the champion's"
            )
        if self.difference**2 > n * self.difference_squares * (1 + _SUM_SLACK):
            raise InputError(f"{where}: the squares are too small for the sum (Cauchy-Schwarz)")
        if self.task == "multiclass" and max(self.champion, self.challenger) > n * MAX_ROW_LOSS * (
            1 + _SUM_SLACK
        ):
            raise InputError(f"{where}: a log loss sum beyond {MAX_ROW_LOSS:.1f} per record")

    def sums(self) -> list[float]:
        return [self.champion, self.challenger, self.difference, self.difference_squares]

    def merge(self, other: PairedLoss) -> PairedLoss:
        if other.task != self.task:
            raise InputError("cannot merge the paired losses of two tasks")
        added = [a + b for a, b in zip(self.sums(), other.sums(), strict=True)]
        return PairedLoss(self.task, self.labelled + other.labelled, *added)

    def to_dict(self) -> dict[str, Any]:
        return {
            "labelled": self.labelled,
            "champion": self.champion,
            "challenger": self.challenger,
            "difference": self.difference,
            "difference_squares": self.difference_squares,
        }

    @classmethod
    def from_json(cls, task: Any, raw: Any) -> PairedLoss:
        if not isinstance(task, str):
            raise InputError("report field 'shadow.task' must be text")
        if not isinstance(raw, dict):
            raise InputError(
                f"report field 'shadow.paired' must be an object, not {json_type(raw)}"
            )
        exact_keys(raw, PAIRED_FIELDS, "report field 'shadow.paired'")
        return cls(task, *(raw[k] for k in PAIRED_FIELDS))


def record_loss(task: str, predicted: Any, truth: Any) -> float:
    """One labelled record's loss: ``-log`` of the true class's probability clipped to
    ``[LOG_CLIP, 1 - LOG_CLIP]`` (``predicted``: every class's probability; ``truth``: the
    class index), or the squared error of a regressor's value."""
    if task == "multiclass":
        p = min(max(float(predicted[int(truth)]), LOG_CLIP), 1 - LOG_CLIP)
        return -math.log(p)
    error = float(truth) - float(predicted)
    return error * error


@dataclass(frozen=True)
class ShadowSketch:
    """The challenger's histograms of one window (see the module docstring)."""

    model_version: str
    scores: Histogram
    challenger: tuple[Histogram, Histogram]
    """The challenger's scores of labelled records: (label 0, label 1)."""
    champion: tuple[Histogram, Histogram]
    """The champion's scores of the same labelled records: (label 0, label 1)."""
    paired: PairedLoss | None = None
    """A multi-class or regression champion's paired losses (its by-label histograms are
    then empty)."""

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
        if self.paired is not None and (
            not isinstance(self.paired, PairedLoss)
            or any(h.total for h in (*self.challenger, *self.champion))
        ):
            raise InputError("report field 'shadow': paired losses and no by-label histograms")
        if self.labelled > self.scores.total:
            raise InputError("report field 'shadow': more labelled records than scored ones")

    @property
    def labelled(self) -> int:
        if self.paired is not None:
            return self.paired.labelled
        return self.challenger[0].total + self.challenger[1].total

    @property
    def task(self) -> str:
        """``binary``, or the task of the paired losses."""
        return "binary" if self.paired is None else self.paired.task

    def flat(self) -> list[int]:
        """All counts in one list (scores, challenger 0/1, champion 0/1): what sums add."""
        return [c for h in (self.scores, *self.challenger, *self.champion) for c in h.counts]

    @classmethod
    def from_flat(
        cls, model_version: str, counts: list[int], paired: PairedLoss | None = None
    ) -> ShadowSketch:
        h = [Histogram(tuple(counts[i * SCORE_BINS : (i + 1) * SCORE_BINS])) for i in range(5)]
        return cls(model_version, h[0], (h[1], h[2]), (h[3], h[4]), paired)

    def merge(self, other: ShadowSketch) -> ShadowSketch:
        if other.model_version != self.model_version:
            raise InputError("cannot merge the shadow counts of two challengers")
        return ShadowSketch.from_flat(
            self.model_version,
            [a + b for a, b in zip(self.flat(), other.flat(), strict=True)],
            merge_paired(self.paired, other.paired),
        )

    def to_dict(self) -> dict[str, Any]:
        if self.paired is not None:
            return {
                "model_version": self.model_version,
                "task": self.paired.task,
                "scores": self.scores.to_list(),
                "paired": self.paired.to_dict(),
            }
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
        if "task" in raw:
            exact_keys(raw, TASK_SHADOW_FIELDS, "report field 'shadow'")
            if not isinstance(raw["model_version"], str):
                raise InputError("report field 'shadow.model_version' must be text")
            empty = Histogram((0,) * SCORE_BINS)
            paired = PairedLoss.from_json(raw["task"], raw["paired"])
            scores = _histogram(raw["scores"], "scores")
            return cls(raw["model_version"], scores, (empty, empty), (empty, empty), paired)
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


def merge_paired(mine: PairedLoss | None, theirs: PairedLoss | None) -> PairedLoss | None:
    """Two challengers' paired losses summed; both None for a binary champion's."""
    if mine is None and theirs is None:
        return None
    if mine is None or theirs is None:
        raise InputError("cannot merge a binary shadow sketch with a multi-class or regression one")
    return mine.merge(theirs)


def flat_of_json(raw: dict[str, Any]) -> tuple[list[int], PairedLoss | None]:
    """A stored (already checked) shadow field as :meth:`ShadowSketch.flat` lays out its
    counts, and its paired losses: what the monitor's merge of stored JSON adds."""
    if "task" not in raw:
        counts = [
            *raw["scores"],
            *(c for key in ("challenger", "champion") for h in raw[key] for c in h),
        ]
        return counts, None
    paired = raw["paired"]
    loss = PairedLoss(raw["task"], *(paired[k] for k in PAIRED_FIELDS))
    return [*raw["scores"], *([0] * (4 * SCORE_BINS))], loss


def _histogram(values: Any, key: str) -> Histogram:
    if not isinstance(values, list) or len(values) != SCORE_BINS:
        raise InputError(f"report field 'shadow.{key}' must hold histograms of {SCORE_BINS} bins")
    if any(type(v) is not int or v < 0 for v in values):
        raise InputError(f"report field 'shadow.{key}' must hold counts (whole numbers >= 0)")
    return Histogram(tuple(values))


class ShadowCounter:
    """The device's accumulator of one challenger's histograms (a binary champion's) or
    paired losses (a multi-class or regression champion's, ``task``); thread-safe."""

    def __init__(self, model_version: str, task: str = "binary") -> None:
        self.model_version = model_version
        self.task = task
        self._lock = threading.Lock()
        self._counts = np.zeros((5, SCORE_BINS), dtype=np.int64)
        self._losses = [0, 0.0, 0.0, 0.0, 0.0]
        """Records, then the sums of :data:`PAIRED_FIELDS` after ``labelled``."""

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

    def add_losses(self, champion: float, challenger: float) -> None:
        """One labelled record's loss under each model (:func:`record_loss`)."""
        difference = challenger - champion
        if not all(math.isfinite(v) and abs(v) <= MAX_SUM for v in (champion, challenger)):
            return  # cannot be reported; the champion's own sketch refuses such a record
        with self._lock:
            totals = self._losses
            self._losses = [
                totals[0] + 1,
                totals[1] + champion,
                totals[2] + challenger,
                totals[3] + difference,
                totals[4] + difference * difference,
            ]

    def roll(self, champion: ReportBody) -> ShadowSketch | None:
        """The window's sketch beside the ``champion``'s window, and a new window; None
        when the challenger saw nothing, or counted more than the champion (rows the
        champion failed on): a report must add up, and the champion's counts come first."""
        with self._lock:
            counts, self._counts = self._counts, np.zeros_like(self._counts)
            losses, self._losses = self._losses, [0, 0.0, 0.0, 0.0, 0.0]
        if not counts.any() or champion.model_version == self.model_version:
            return None
        paired = None
        if self.task != "binary":
            counts[1:] = 0
            paired = PairedLoss(self.task, int(losses[0]), *map(float, losses[1:]))
        flat = [int(c) for c in counts.ravel()]
        try:
            sketch = ShadowSketch.from_flat(self.model_version, flat, paired)
        except InputError:
            return None  # sums out of range: better no shadow counts than a refused report
        if sketch.scores.total > champion.scored or sketch.labelled > champion.outcomes.labelled:
            return None
        return sketch
