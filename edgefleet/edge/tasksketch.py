"""Sketches of what a multi-class or a regression model did (docs/architecture.md §7c): the
``task`` field of a report (version 4), mergeable like every other sketch.

A binary model's quality lives in the report's score histograms (:mod:`edgefleet.edge.sketch`).
A model of another task reports those too, with a meaning that fits it, so every existing
count and check still adds up:

- multi-class: ``scores`` is the histogram of the *confidence* (the top class's probability)
  of every scored row; ``outcomes`` the confidence of the labelled rows, ``by_label[0]`` the
  wrong predictions and ``by_label[1]`` the right ones;
- regression: every scored row in ``scores``' bin 0, every labelled row in ``outcomes``' bin
  0 under ``by_label[0]`` (a regressor has no probability; its sketch is here).

and adds a :class:`MulticlassSketch` or a :class:`RegressionSketch`:

- :class:`MulticlassSketch` (K classes, 3 <= K <= :data:`MAX_CLASSES`): ``predicted``, the
  count of every scored row's predicted class (the class mix, a label-free drift proxy);
  ``confusion[t][p]``, labelled rows of true class t predicted p; per class k, the histogram
  of P(k) in :data:`SCORE_BINS` bins over the labelled rows whose true class is k
  (``positives[k]``) and is not (``negatives[k]``): one-vs-rest AUROC per class, within the
  binning bound of :func:`edgefleet.central.monitor.quality.auroc_error_bound`; and
  ``log_loss``, the exact sum of ``-log(clip(p_true, eps, 1 - eps))`` (scikit-learn's clip,
  ``eps`` of float64), and ``log_loss_squares``, the sum of its squares (the standard error
  of the mean loss, for comparing two models).
- :class:`RegressionSketch`: the histogram of every prediction in the bins of the reference
  profile's ``prediction`` (the holdout's quantiles, like a numeric feature's: prediction
  drift compares the two; fixed value buckets without one), the histogram of every labelled
  residual ``r = y - prediction`` in fixed signed log buckets (:func:`value_bucket_index`,
  5 % relative error, mergeable by adding), and the exact float sums ``sum_y``, ``sum_y2``,
  ``sum_r``, ``sum_abs_r``, ``sum_r2`` over the labelled rows (their count is the residual
  histogram's total): MAE, RMSE, mean error and R² follow from them exactly; ``sum_r4``
  gives the standard error of the mean squared error. A label or residual beyond
  :data:`MAX_VALUE` is refused at the device (its fourth power would leave the sums' range).

Every field is checked as hostile input (:meth:`MulticlassSketch.from_json`,
:meth:`RegressionSketch.from_json`): exact keys, K within its cap, exact shapes, counts
whole and non-negative, sums finite and within :data:`MAX_SUM`, and every cross-total
(the confusion rows against the one-vs-rest histograms, the sums against each other)
consistent.

:class:`TaskCounter` is the device's accumulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgefleet.edge.profile import SCORE_BINS, numeric_bin_counts, score_bin_index
from edgefleet.edge.schema import MAX_CLASSES
from edgefleet.edge.sketch import MAX_BINS, Histogram, check_count
from edgefleet.edge.wirejson import exact_keys, json_type
from edgefleet.errors import InputError

__all__ = [
    "MAX_CLASSES",
    "MAX_SUM",
    "VALUE_BUCKETS",
    "VALUE_RELATIVE_ERROR",
    "MulticlassSketch",
    "RegressionSketch",
    "TaskCounter",
    "TaskSketch",
    "finite_sum",
    "task_from_json",
    "value_bucket_index",
    "value_of_bucket",
]

TaskKind = Literal["multiclass", "regression"]
TASKS: tuple[TaskKind, ...] = ("multiclass", "regression")

# MAX_CLASSES (the schema's cap) bounds K: K * 2 * 100 histogram bins is what a report carries.

MAX_SUM = 1e100
"""Largest magnitude of a sum a sketch may hold: 2**40 rows of squared values up to 1e30
stay far below, and 2**23 merged reports at this bound still sum to a finite float."""

LOG_CLIP = float(np.finfo(np.float64).eps)
"""scikit-learn's clip of probabilities before the log (``log_loss``, float64 input)."""
MAX_ROW_LOSS = -math.log(LOG_CLIP)
"""The most one labelled row can add to ``log_loss`` (about 36.04)."""

VALUE_MIN = 1e-4
VALUE_MAX = 1e8
VALUE_RELATIVE_ERROR = 0.05
"""For ``VALUE_MIN <= |x| < VALUE_MAX`` a bucket's value is within 5 % of every value in it."""
_GAMMA = (1 + VALUE_RELATIVE_ERROR) / (1 - VALUE_RELATIVE_ERROR)
_LOG_GAMMA = math.log(_GAMMA)
_SIDE = math.ceil(math.log(VALUE_MAX / VALUE_MIN) / _LOG_GAMMA)
VALUE_BUCKETS = 2 * _SIDE + 3
"""Buckets of a value histogram, low to high: below -VALUE_MAX, the negative log buckets,
``|x| < VALUE_MIN``, the positive log buckets, VALUE_MAX and above (557)."""
_ZERO = _SIDE + 1

# Which float sum is which, in a regression sketch's flat form.
REGRESSION_SUMS = ("sum_y", "sum_y2", "sum_r", "sum_abs_r", "sum_r2", "sum_r4")
MULTICLASS_SUMS = ("log_loss", "log_loss_squares")

MAX_VALUE = 1e20
"""Largest magnitude of a regression label or residual a device counts: 2**40 rows of
fourth powers stay within :data:`MAX_SUM`."""
# Relative slack of the cross-checks between float sums (their rounding, not a fudge).
_SLACK = 1e-9


def value_bucket_index(values: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The bucket of each (finite) value; see :data:`VALUE_BUCKETS`."""
    x = np.asarray(values, dtype=np.float64)
    magnitude = np.abs(x)
    with np.errstate(divide="ignore"):
        logs = np.floor(np.log(np.maximum(magnitude, VALUE_MIN) / VALUE_MIN) / _LOG_GAMMA)
    steps = np.clip(logs, 0, _SIDE - 1).astype(np.int64) + 1
    steps[magnitude >= VALUE_MAX] = _SIDE + 1
    index = np.where(x > 0, _ZERO + steps, _ZERO - steps)
    index[magnitude < VALUE_MIN] = _ZERO
    return index.astype(np.int64)


def value_of_bucket(index: int) -> float:
    """The value standing for a bucket: equally far, relatively, from both its ends."""
    steps = index - _ZERO
    if steps == 0:
        return 0.0
    size = abs(steps)
    if size > _SIDE:
        magnitude = VALUE_MAX
    else:
        magnitude = VALUE_MIN * _GAMMA ** (size - 1) * 2 * _GAMMA / (1 + _GAMMA)
    return math.copysign(magnitude, steps)


def finite_sum(value: Any, field: str, *, non_negative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{field} must be a number, not {json_type(value)}")
    if isinstance(value, int) and abs(value) > MAX_SUM:
        raise InputError(f"{field} must be within +-{MAX_SUM:g}")
    number = float(value)
    if not math.isfinite(number) or abs(number) > MAX_SUM:
        raise InputError(f"{field} must be a finite number within +-{MAX_SUM:g}, not {value!r}")
    if non_negative and number < 0:
        raise InputError(f"{field} is a sum of non-negative terms, not {number!r}")
    return number


def _counts(values: Any, length: int, field: str) -> Histogram:
    if not isinstance(values, list) or len(values) != length:
        raise InputError(f"{field} must be an array of {length} counts")
    for i, value in enumerate(values):
        check_count(value, f"{field}[{i}]")
    return Histogram(tuple(values))


def _rows(values: Any, rows: int, length: int, field: str) -> tuple[Histogram, ...]:
    if not isinstance(values, list) or len(values) != rows:
        raise InputError(f"{field} must be an array of {rows} arrays of {length} counts")
    return tuple(_counts(v, length, f"{field}[{i}]") for i, v in enumerate(values))


@dataclass(frozen=True)
class MulticlassSketch:
    """A multi-class model's counts over a window (see the module docstring)."""

    classes: int
    predicted: Histogram
    confusion: tuple[Histogram, ...]
    """``confusion[t].counts[p]``: labelled rows of true class t predicted as p."""
    negatives: tuple[Histogram, ...]
    """``negatives[k]``: P(k) of the labelled rows whose true class is not k."""
    positives: tuple[Histogram, ...]
    """``positives[k]``: P(k) of the labelled rows whose true class is k."""
    log_loss: float
    """Sum over the labelled rows of ``-log(clip(p_true))``."""
    log_loss_squares: float
    """Sum over the labelled rows of the square of each row's loss."""

    kind: TaskKind = field(default="multiclass", init=False)

    def __post_init__(self) -> None:
        k = self.classes
        where = "report field 'task'"
        if type(k) is not int or not 3 <= k <= MAX_CLASSES:
            raise InputError(f"{where}: a multi-class model has 3 to {MAX_CLASSES} classes")
        if self.kind != "multiclass":
            raise InputError(f"{where}: kind must be 'multiclass'")
        _check_histograms(where, "predicted", (self.predicted,), 1, k)
        _check_histograms(where, "confusion", self.confusion, k, k)
        _check_histograms(where, "negatives", self.negatives, k, SCORE_BINS)
        _check_histograms(where, "positives", self.positives, k, SCORE_BINS)
        labelled = self.labelled
        for c in range(k):
            if self.positives[c].total != self.confusion[c].total:
                raise InputError(
                    f"{where}: class {c} has {self.confusion[c].total} labelled rows in the "
                    f"confusion counts but {self.positives[c].total} in 'positives'"
                )
            if self.negatives[c].total + self.positives[c].total != labelled:
                raise InputError(
                    f"{where}: class {c}'s one-vs-rest histograms hold "
                    f"{self.negatives[c].total + self.positives[c].total} rows, not the "
                    f"{labelled} labelled ones"
                )
        loss = finite_sum(self.log_loss, f"{where}.log_loss", non_negative=True)
        squares = finite_sum(self.log_loss_squares, f"{where}.log_loss_squares", non_negative=True)
        if loss * loss > labelled * squares * (1 + _SLACK) + 1e-300:
            raise InputError(f"{where}: log_loss and log_loss_squares are inconsistent")
        if loss > labelled * MAX_ROW_LOSS * (1 + _SLACK):
            raise InputError(
                f"{where}.log_loss {loss!r} is more than {labelled} labelled rows can add "
                f"({MAX_ROW_LOSS:.2f} each at most)"
            )

    @property
    def size(self) -> int:
        """What the layout of a report records of this sketch: its class count."""
        return self.classes

    @property
    def scored(self) -> int:
        return self.predicted.total

    @property
    def labelled(self) -> int:
        return sum(row.total for row in self.confusion)

    @property
    def correct(self) -> int:
        return sum(row.counts[i] for i, row in enumerate(self.confusion))

    def flat(self) -> tuple[list[int], list[float]]:
        """Counts (predicted, confusion rows, negatives, positives) and sums: what merges add."""
        rows = (self.predicted, *self.confusion, *self.negatives, *self.positives)
        return [c for h in rows for c in h.counts], [
            float(self.log_loss),
            float(self.log_loss_squares),
        ]

    @classmethod
    def from_flat(cls, classes: int, counts: list[int], sums: list[float]) -> MulticlassSketch:
        k = classes
        predicted = Histogram(tuple(counts[:k]))
        at = k
        confusion = tuple(Histogram(tuple(counts[at + i * k : at + (i + 1) * k])) for i in range(k))
        at += k * k
        b = SCORE_BINS
        negatives = tuple(Histogram(tuple(counts[at + i * b : at + (i + 1) * b])) for i in range(k))
        at += k * b
        positives = tuple(Histogram(tuple(counts[at + i * b : at + (i + 1) * b])) for i in range(k))
        return cls(k, predicted, confusion, negatives, positives, sums[0], sums[1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "multiclass",
            "classes": self.classes,
            "predicted": self.predicted.to_list(),
            "confusion": [h.to_list() for h in self.confusion],
            "negatives": [h.to_list() for h in self.negatives],
            "positives": [h.to_list() for h in self.positives],
            "log_loss": float(self.log_loss),
            "log_loss_squares": float(self.log_loss_squares),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> MulticlassSketch:
        keys = (
            "kind",
            "classes",
            "predicted",
            "confusion",
            "negatives",
            "positives",
            *MULTICLASS_SUMS,
        )
        exact_keys(raw, keys, "report field 'task'")
        k = raw["classes"]
        if type(k) is not int or not 3 <= k <= MAX_CLASSES:
            raise InputError(f"report field 'task.classes' must be 3 to {MAX_CLASSES}, not {k!r}")
        where = "report field 'task."
        return cls(
            classes=k,
            predicted=_counts(raw["predicted"], k, where + "predicted'"),
            confusion=_rows(raw["confusion"], k, k, where + "confusion'"),
            negatives=_rows(raw["negatives"], k, SCORE_BINS, where + "negatives'"),
            positives=_rows(raw["positives"], k, SCORE_BINS, where + "positives'"),
            log_loss=finite_sum(raw["log_loss"], where + "log_loss'", non_negative=True),
            log_loss_squares=finite_sum(
                raw["log_loss_squares"], where + "log_loss_squares'", non_negative=True
            ),
        )


@dataclass(frozen=True)
class RegressionSketch:
    """A regressor's counts and exact sums over a window (see the module docstring)."""

    predictions: Histogram
    residuals: Histogram
    sum_y: float
    sum_y2: float
    sum_r: float
    sum_abs_r: float
    sum_r2: float
    sum_r4: float

    kind: TaskKind = field(default="regression", init=False)

    def __post_init__(self) -> None:
        where = "report field 'task'"
        if self.kind != "regression":
            raise InputError(f"{where}: kind must be 'regression'")
        if not isinstance(self.predictions, Histogram):
            raise InputError(f"{where}: predictions must be a histogram")
        _check_histograms(where, "residuals", (self.residuals,), 1, VALUE_BUCKETS)
        sums = {name: getattr(self, name) for name in REGRESSION_SUMS}
        for name, value in sums.items():
            finite_sum(value, f"{where}.{name}", non_negative=name in _NON_NEGATIVE)
        n = self.labelled
        if n == 0 and any(sums.values()):
            raise InputError(f"{where}: sums over no labelled row must be 0")
        # Cauchy-Schwarz and |sum r| <= sum |r|: sums no set of rows can have are forged.
        bound = 1 + _SLACK
        if abs(self.sum_r) > self.sum_abs_r * bound + 1e-300 or (
            self.sum_abs_r**2 > n * self.sum_r2 * bound + 1e-300
        ):
            raise InputError(f"{where}: the residual sums are inconsistent with each other")
        if self.sum_r2**2 > n * self.sum_r4 * bound + 1e-300:
            raise InputError(f"{where}: sum_r2 and sum_r4 are inconsistent with each other")
        if self.sum_y**2 > n * self.sum_y2 * bound + 1e-300:
            raise InputError(f"{where}: sum_y and sum_y2 are inconsistent with each other")

    @property
    def size(self) -> int:
        """What the layout of a report records of this sketch: its prediction bins."""
        return self.predictions.bins

    @property
    def scored(self) -> int:
        return self.predictions.total

    @property
    def labelled(self) -> int:
        return self.residuals.total

    @property
    def correct(self) -> int:
        """A regressor's rows are never counted as right (the report's outcome histograms)."""
        return 0

    def flat(self) -> tuple[list[int], list[float]]:
        counts = [*self.predictions.counts, *self.residuals.counts]
        return counts, [float(getattr(self, name)) for name in REGRESSION_SUMS]

    @classmethod
    def from_flat(cls, size: int, counts: list[int], sums: list[float]) -> RegressionSketch:
        y, y2, r, abs_r, r2, r4 = sums
        predictions = Histogram(tuple(counts[:size]))
        residuals = Histogram(tuple(counts[size : size + VALUE_BUCKETS]))
        return cls(predictions, residuals, y, y2, r, abs_r, r2, r4)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "regression",
            "predictions": self.predictions.to_list(),
            "residuals": self.residuals.to_list(),
            **{name: float(getattr(self, name)) for name in REGRESSION_SUMS},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RegressionSketch:
        exact_keys(
            raw, ("kind", "predictions", "residuals", *REGRESSION_SUMS), "report field 'task'"
        )
        where = "report field 'task."
        y, y2, r, abs_r, r2, r4 = (
            finite_sum(raw[name], f"{where}{name}'", non_negative=name in _NON_NEGATIVE)
            for name in REGRESSION_SUMS
        )
        bins = raw["predictions"]
        if not isinstance(bins, list) or not 0 < len(bins) <= MAX_BINS:
            raise InputError(f"{where}predictions' must be an array of 1 to {MAX_BINS} counts")
        predictions = _counts(bins, len(bins), where + "predictions'")
        residuals = _counts(raw["residuals"], VALUE_BUCKETS, where + "residuals'")
        return cls(predictions, residuals, y, y2, r, abs_r, r2, r4)


_NON_NEGATIVE = frozenset(("sum_y2", "sum_abs_r", "sum_r2", "sum_r4"))

TaskSketch = MulticlassSketch | RegressionSketch


def _check_histograms(where: str, name: str, histograms: Any, rows: int, bins: int) -> None:
    if not isinstance(histograms, tuple) or len(histograms) != rows:
        raise InputError(f"{where}: {name} must hold {rows} histograms")
    for histogram in histograms:
        if not isinstance(histogram, Histogram) or histogram.bins != bins:
            raise InputError(f"{where}: {name} must hold histograms of {bins} bins")


def task_from_json(raw: Any) -> TaskSketch:
    """Parse the ``task`` field of a report (or of a rollup body) from the network."""
    if not isinstance(raw, dict):
        raise InputError(f"report field 'task' must be an object, not {json_type(raw)}")
    kind = raw.get("kind")
    if kind == "multiclass":
        return MulticlassSketch.from_json(raw)
    if kind == "regression":
        return RegressionSketch.from_json(raw)
    raise InputError(f"report field 'task.kind' must be one of {', '.join(TASKS)}")


def task_from_flat(kind: str, size: int, counts: list[int], sums: list[float]) -> TaskSketch:
    if kind == "multiclass":
        return MulticlassSketch.from_flat(size, counts, sums)
    return RegressionSketch.from_flat(size, counts, sums)


def flat_of_json(raw: dict[str, Any]) -> tuple[str, int, list[int], list[float]]:
    """``(kind, size, counts, sums)`` of a *checked* task field (a report's or a rollup's),
    laid out as the sketches' ``flat()``: what the monitor's merge adds without building
    the sketch."""
    if raw["kind"] == "multiclass":
        rows = (raw["predicted"], *raw["confusion"], *raw["negatives"], *raw["positives"])
        sums = [raw[name] for name in MULTICLASS_SUMS]
        return "multiclass", raw["classes"], [c for h in rows for c in h], sums
    counts = [*raw["predictions"], *raw["residuals"]]
    return "regression", len(raw["predictions"]), counts, [raw[name] for name in REGRESSION_SUMS]


class TaskCounter:
    """The device's accumulator of a multi-class or regression model's :class:`TaskSketch`.

    Not locked: :class:`edgefleet.edge.sketch_builder.SketchBuilder` calls the ``*_counts`` methods
    (pure, outside its lock) and :meth:`add` under its lock."""

    def __init__(
        self, kind: str, classes: int = 0, prediction_edges: tuple[float, ...] | None = None
    ) -> None:
        """``prediction_edges``: a regressor's prediction bins (the reference profile's
        ``prediction`` edges); without them, the fixed value buckets."""
        if kind not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}, not {kind!r}")
        if kind == "multiclass" and not 3 <= classes <= MAX_CLASSES:
            raise InputError(
                f"a multi-class model has 3 to {MAX_CLASSES} classes to be monitored, not {classes}"
            )
        self.kind = kind
        self.classes = classes if kind == "multiclass" else 0
        self.edges = None if prediction_edges is None else np.asarray(prediction_edges, np.float64)
        if self.edges is not None and len(self.edges) + 1 > MAX_BINS:
            raise InputError(f"a regressor's predictions have more than {MAX_BINS} bins")
        self.bins = VALUE_BUCKETS if self.edges is None else len(self.edges) + 1
        empty = _empty(kind, self.classes, self.bins)
        self._template = empty.flat()
        self.zero()

    @property
    def outputs(self) -> int:
        """Columns of the model's output: K probabilities, or one value."""
        return self.classes if self.kind == "multiclass" else 1

    def zero(self) -> None:
        self.counts = np.zeros(len(self._template[0]), dtype=np.int64)
        self.sums = [0.0] * len(self._template[1])

    def outputs_of(self, values: npt.ArrayLike, rows: int) -> npt.NDArray[np.float64]:
        """``[rows, K]`` probabilities or ``[rows]`` predictions; :class:`InputError` for
        any other shape."""
        array = np.asarray(values, dtype=np.float64)
        if rows == 0 and array.size == 0:  # a call that only counts failed rows
            return np.zeros((0, self.classes) if self.kind == "multiclass" else 0)
        if self.kind == "regression":
            if array.ndim == 2 and array.shape[1] == 1:
                array = array[:, 0]
            if array.shape != (rows,):
                raise InputError(f"predictions must have shape [{rows}] or [{rows}, 1]")
            return array
        if array.shape != (rows, self.classes):
            raise InputError(
                f"probabilities must have shape [{rows}, {self.classes}], not {list(array.shape)}"
            )
        return array

    def base_scores(self, outputs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The score the report's binary histograms count per row: the confidence (multi-
        class) or 0 (regression); NaN where an output is not finite (a failed row)."""
        finite = np.isfinite(outputs) if outputs.ndim == 1 else np.isfinite(outputs).all(axis=1)
        if self.kind == "regression":
            return np.where(finite, 0.0, np.nan)
        top = outputs.max(axis=1, initial=-np.inf) if outputs.size else np.zeros(len(outputs))
        return np.where(finite, top, np.nan)

    def scored_counts(self, outputs: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """The counts of finite scored rows, in the flat layout."""
        delta = np.zeros_like(self.counts)
        if self.kind == "multiclass":
            predicted = np.argmax(outputs, axis=1) if len(outputs) else np.zeros(0, np.int64)
            delta[: self.classes] = np.bincount(predicted, minlength=self.classes)
        elif self.edges is None:
            delta[: self.bins] = np.bincount(value_bucket_index(outputs), minlength=self.bins)
        else:
            delta[: self.bins] = numeric_bin_counts(outputs, self.edges)[0]
        return delta

    def outcome_counts(
        self, outputs: npt.NDArray[np.float64], labels: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.int64], list[float], npt.NDArray[np.int64]]:
        """``(counts, sums, right)`` of labelled rows: their flat counts and sums, and per
        row 1 if the prediction was right (multi-class) or 0 (regression), for the
        report's outcome histograms."""
        if not np.isfinite(outputs).all():
            raise InputError("an outcome's prediction must be finite")
        if self.kind == "multiclass":
            return self._class_outcomes(outputs, labels)
        truth = np.asarray(labels, dtype=np.float64).ravel()
        if truth.shape != outputs.shape or not np.isfinite(truth).all():
            raise InputError("a regression outcome's label must be one finite number per row")
        residual = truth - outputs
        if (
            np.abs(truth).max(initial=0.0) > MAX_VALUE
            or np.abs(residual).max(initial=0.0) > MAX_VALUE
        ):
            raise InputError(
                f"a regression outcome's label or its distance from the prediction is over "
                f"{MAX_VALUE:g}: too large to be monitored (check the label's units)"
            )
        delta = np.zeros_like(self.counts)
        delta[self.bins :] = np.bincount(value_bucket_index(residual), minlength=VALUE_BUCKETS)
        sums = [
            math.fsum(truth),
            math.fsum(truth * truth),
            math.fsum(residual),
            math.fsum(np.abs(residual)),
            math.fsum(residual * residual),
            math.fsum(residual**4),
        ]
        return delta, sums, np.zeros(len(truth), dtype=np.int64)

    def _class_outcomes(
        self, outputs: npt.NDArray[np.float64], labels: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.int64], list[float], npt.NDArray[np.int64]]:
        k = self.classes
        raw = np.asarray(labels)
        if raw.shape != (len(outputs),) or (raw.size and raw.dtype.kind not in "iu"):
            raise InputError("a multi-class outcome's label is one class index per row")
        truth = raw.astype(np.int64)
        if truth.size and (truth.min() < 0 or truth.max() >= k):
            raise InputError(f"a multi-class outcome's class index must be 0 to {k - 1}")
        predicted = np.argmax(outputs, axis=1) if len(outputs) else truth
        delta = np.zeros_like(self.counts)
        delta[k : k + k * k] = np.bincount(truth * k + predicted, minlength=k * k)
        bins = score_bin_index(outputs)  # [N, K]
        is_true = truth[:, None] == np.arange(k)[None, :]
        flat_bins = np.arange(k)[None, :] * SCORE_BINS + bins
        at = k + k * k
        delta[at : at + k * SCORE_BINS] = np.bincount(flat_bins[~is_true], minlength=k * SCORE_BINS)
        at += k * SCORE_BINS
        delta[at:] = np.bincount(flat_bins[is_true], minlength=k * SCORE_BINS)
        p_true = outputs[np.arange(len(truth)), truth]
        losses = -np.log(np.clip(p_true, LOG_CLIP, 1 - LOG_CLIP))
        sums = [math.fsum(losses), math.fsum(losses * losses)]
        return delta, sums, (predicted == truth).astype(np.int64)

    def add(self, counts: npt.NDArray[np.int64], sums: list[float] | None = None) -> None:
        self.counts += counts
        if sums is not None:
            self.sums = [a + b for a, b in zip(self.sums, sums, strict=True)]

    def merge(self, sketch: TaskSketch) -> None:
        """Add a sketch of the same model measured elsewhere (a scoring-service worker)."""
        if sketch.kind != self.kind or sketch.size != (self.classes or self.bins):
            raise InputError("the task counts to merge are of another task or class count")
        counts, sums = sketch.flat()
        self.add(np.asarray(counts, dtype=np.int64), sums)

    def sketch(self) -> TaskSketch:
        size = self.classes if self.kind == "multiclass" else self.bins
        return task_from_flat(self.kind, size, [int(c) for c in self.counts], list(self.sums))


def _empty(kind: str, classes: int, bins: int) -> TaskSketch:
    if kind == "multiclass":
        zeros = Histogram.empty(SCORE_BINS)
        row = Histogram.empty(classes)
        return MulticlassSketch(
            classes, row, (row,) * classes, (zeros,) * classes, (zeros,) * classes, 0.0, 0.0
        )
    return RegressionSketch(
        Histogram.empty(bins), Histogram.empty(VALUE_BUCKETS), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    )
