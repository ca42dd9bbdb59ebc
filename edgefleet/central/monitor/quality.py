"""Model quality from score histograms: what devices report, never raw scores.

A device reports the positive-class probability binned into ``SCORE_BINS`` equal-width
bins on [0, 1] (:mod:`edgefleet.edge.profile`), separately for records whose label came back
negative and positive. From those two histograms:

- :func:`binned_auroc` is the exact AUROC *of the binned scores*, and
  :func:`auroc_error_bound` the most it can differ from the AUROC of the raw scores: only
  pairs in the same bin can be misordered, and those count 1/2 instead of 0 or 1.
- :func:`binned_average_precision` is the exact average precision of the binned scores,
  and :func:`average_precision_bounds` an interval that must hold the raw scores' value.
- :func:`expected_performance` estimates AUROC and the positive rate *without labels*,
  from the overall score histogram, while the labels are still pending.
- :func:`score_drift` compares score histograms with the drift measures of
  :mod:`edgefleet.central.monitor.drift`; :func:`rate` turns a count into a rate with a
  Wilson interval.

>>> negatives = [40, 30, 20, 10]   # four score bins, low to high
>>> positives = [5, 10, 20, 25]
>>> round(binned_auroc(negatives, positives), 4), round(auroc_error_bound(negatives, positives), 4)
(0.7708, 0.0958)

Four bins leave a fifth of the pairs tied, hence the loose bound; 100 bins on the churn
model's scores give a bound near 0.005 (tests/central/test_quality.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt
from scipy.special import digamma

from edgefleet.central.monitor.drift import Counts, DriftDetector, FeatureDrift, as_counts, coarsen
from edgefleet.edge.profile import QUANTILE_BINS
from edgefleet.errors import InputError

FloatArray = npt.NDArray[np.float64]


def binned_auroc(neg_counts: Counts, pos_counts: Counts) -> float:
    """AUROC of binned scores: ``P(score_pos > score_neg) + 0.5 P(same bin)``.

    ``neg_counts[b]`` and ``pos_counts[b]`` count the negatives and positives whose score fell
    in bin ``b``, bins in increasing score order. Counts may be fractional (expected counts).
    This equals scikit-learn's ``roc_auc_score`` on the bin indices exactly.

    >>> binned_auroc([10, 0], [0, 10])
    1.0
    >>> binned_auroc([5, 5], [5, 5])
    0.5
    """
    neg, pos = _labelled(neg_counts, pos_counts)
    below = np.cumsum(neg) - neg
    ordered = float(np.sum(pos * below)) + 0.5 * float(np.sum(pos * neg))
    return ordered / (float(neg.sum()) * float(pos.sum()))


def auroc_error_bound(neg_counts: Counts, pos_counts: Counts) -> float:
    """The largest possible ``|binned_auroc - AUROC of the raw scores|``.

    Pairs in different bins are ordered the same by raw and binned scores. A pair in the
    same bin counts 1/2 binned, and 0, 1/2 or 1 raw, so the difference is at most
    ``0.5 * sum_b neg_b * pos_b / (N * P)``; it is reached when every bin's positives
    outscore its negatives (or the reverse), so no smaller bound holds for every data set.

    >>> auroc_error_bound([10, 0], [0, 10])
    0.0
    >>> auroc_error_bound([5, 5], [5, 5])
    0.25
    """
    neg, pos = _labelled(neg_counts, pos_counts)
    return 0.5 * float(np.sum(pos * neg)) / (float(neg.sum()) * float(pos.sum()))


def binned_average_precision(neg_counts: Counts, pos_counts: Counts) -> float:
    """Average precision of binned scores: thresholds at the bin edges, from the top bin
    down, ``AP = sum_b (pos_b / P) * precision(score >= bin b)``.

    The step-wise definition scikit-learn's ``average_precision_score`` uses (no
    interpolation), so it equals that function on the bin indices exactly. Against the raw
    scores, :func:`average_precision_bounds` gives a guaranteed interval (about 0.02 wide
    for the churn model's scores in 100 bins); the observed error there is about 0.0035
    for every model family (tests/central/test_quality.py).

    >>> binned_average_precision([0, 10], [10, 0])   # every positive below every negative
    0.5
    >>> binned_average_precision([10, 0], [0, 10])
    1.0
    """
    neg, pos = _labelled(neg_counts, pos_counts)
    true_pos = np.cumsum(pos[::-1])[::-1]
    false_pos = np.cumsum(neg[::-1])[::-1]
    hit = pos > 0
    precision = true_pos[hit] / (true_pos[hit] + false_pos[hit])
    return float(np.sum(pos[hit] * precision) / pos.sum())


def average_precision_bounds(neg_counts: Counts, pos_counts: Counts) -> tuple[float, float]:
    """An interval that holds the average precision of *any* raw scores with these binned
    counts (ties included, as scikit-learn scores them).

    Each positive is credited with the precision at its threshold. Records of higher bins
    are always above it, so only the order inside its bin is unknown: at best the bin's
    positives all come first (``upper``); at worst the bin's negatives all come first
    (``lower``). The binned value lies inside; the interval is as wide as the bins are
    mixed.

    >>> low, high = average_precision_bounds([5, 5], [5, 5])
    >>> round(low, 3), round(binned_average_precision([5, 5], [5, 5]), 3), round(high, 3)
    (0.398, 0.5, 0.833)
    """
    neg, pos = _labelled(neg_counts, pos_counts)
    # Counts strictly above each bin (bins are in increasing score order).
    pos_above = np.cumsum(pos[::-1])[::-1] - pos
    neg_above = np.cumsum(neg[::-1])[::-1] - neg
    hit = pos > 0
    a, t, f, n = pos[hit], pos_above[hit], neg_above[hit], neg[hit]
    upper = a * (t + a) / (t + f + a)
    # sum_{j=1..a} (t + j) / (m + j) with m = t + f + n, in closed form through digamma
    # (works for fractional, expected counts too).
    m = t + f + n
    lower = a - (m - t) * (digamma(m + a + 1.0) - digamma(m + 1.0))
    total = float(pos.sum())
    return float(np.sum(lower)) / total, min(1.0, float(np.sum(upper)) / total)


@dataclass(frozen=True)
class ExpectedPerformance:
    """A label-free estimate of the model's performance (see :func:`expected_performance`).

    ``n`` is the number of scored records behind it; ``positive_rate`` the expected share of
    positive labels; ``auroc`` and ``average_precision`` the expected values.
    """

    n: int
    positive_rate: float
    auroc: float
    average_precision: float


def expected_performance(score_counts: Counts) -> ExpectedPerformance:
    """Estimate AUROC, average precision and the positive rate from scores alone.

    Assumption: the model is calibrated, so a record scored ``p`` is positive with
    probability ``p``. A bin with ``n_b`` records and midpoint ``p_b`` then holds
    ``n_b * p_b`` positives and ``n_b * (1 - p_b)`` negatives in expectation, and the
    metrics of those expected counts estimate the realized ones: confidence-based
    performance estimation (CBPE), as NannyML does it. Bins are equal-width on [0, 1], as
    many as ``score_counts`` has.

    It sees what the scores see: covariate shift (the records move to bins where the model
    is less or more sure) changes the estimate. It cannot see concept drift: when the same
    inputs start to mean another outcome, the scores and so the estimate stay as they were
    while the realized AUROC falls. Only labels (:func:`binned_auroc`) reveal that, so the
    estimate bridges the wait for labels and never replaces them. It also inherits the
    model's miscalibration: recalibrate on the holdout if the estimate must be trusted.

    >>> estimate = expected_performance([0, 50, 0, 50])   # four bins: midpoints 1/8 .. 7/8
    >>> estimate.positive_rate, round(estimate.auroc, 4)
    (0.625, 0.7667)
    """
    counts = as_counts(score_counts, "score counts")
    total = float(counts.sum())
    if total <= 0:
        raise InputError("the score histogram is empty: no scored records to estimate from")
    midpoints = (np.arange(len(counts), dtype=np.float64) + 0.5) / len(counts)
    expected_pos = counts * midpoints
    expected_neg = counts * (1.0 - midpoints)
    return ExpectedPerformance(
        n=round(total),
        positive_rate=float(expected_pos.sum()) / total,
        auroc=binned_auroc(expected_neg, expected_pos),
        average_precision=binned_average_precision(expected_neg, expected_pos),
    )


def score_drift(
    reference_counts: Counts,
    current_counts: Counts,
    *,
    detector: DriftDetector | None = None,
    bins: int = QUANTILE_BINS,
) -> FeatureDrift:
    """Drift of the score distribution, as a :class:`FeatureDrift` named ``"score"``.

    The fine score histograms are first merged into ``bins`` groups of about equal reference
    mass (:func:`~edgefleet.central.monitor.drift.coarsen`). On 100 bins sampling noise
    alone gives a PSI near ``(k - 1)(1/n + 1/m)`` over the ``k`` filled bins: for the churn
    model, 2000 no-drift records against the holdout's 1000 scores measure PSI 0.12 and
    JS 0.15, a false alarm for every cohort; merged into 10 groups, JS 0.05.

    >>> reference = [0] * 20 + [10] * 60 + [0] * 20
    >>> score_drift(reference, [0] * 20 + [20] * 60 + [0] * 20).verdict
    'no_drift'
    >>> score_drift(reference, [0] * 50 + [40] * 30 + [0] * 20).verdict
    'drift'
    """
    merged_reference, merged_current = coarsen(reference_counts, current_counts, bins=bins)
    return (detector or DriftDetector()).assess("score", merged_reference, merged_current)


@dataclass(frozen=True)
class Rate:
    """``numerator / denominator`` with its Wilson score interval ``[low, high]``.

    With a zero denominator the value is NaN and the interval is the whole [0, 1].
    """

    numerator: int
    denominator: int
    value: float
    low: float
    high: float
    confidence: float


def rate(numerator: int, denominator: int, *, confidence: float = 0.95) -> Rate:
    """A rate (e.g. errors per scored record) with a Wilson score interval.

    Wilson rather than the normal approximation: it stays inside [0, 1] and is honest for
    the small counts and the rates near 0 that an error rate per device usually has.

    >>> r = rate(3, 1000)
    >>> r.value, round(r.low, 5), round(r.high, 5)
    (0.003, 0.00102, 0.00878)
    >>> rate(0, 0).high
    1.0
    """
    for label, count in (("numerator", numerator), ("denominator", denominator)):
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise InputError(f"{label} must be a whole number >= 0, not {count!r}")
    if numerator > denominator:
        raise InputError(f"numerator {numerator} exceeds denominator {denominator}")
    if not (0 < confidence < 1):
        raise InputError(f"confidence must be between 0 and 1, not {confidence!r}")
    if denominator == 0:
        return Rate(0, 0, math.nan, 0.0, 1.0, confidence)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    n = float(denominator)
    p = numerator / n
    shrink = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / shrink
    return Rate(
        numerator=int(numerator),
        denominator=int(denominator),
        value=p,
        low=max(0.0, centre - half),
        high=min(1.0, centre + half),
        confidence=confidence,
    )


def _labelled(neg_counts: Counts, pos_counts: Counts) -> tuple[FloatArray, FloatArray]:
    neg = as_counts(neg_counts, "negative counts")
    pos = as_counts(pos_counts, "positive counts")
    if len(neg) != len(pos):
        raise InputError(
            f"the negative and positive histograms have different bins ({len(neg)} vs "
            f"{len(pos)}); both must count the same score bins"
        )
    if neg.sum() <= 0 or pos.sum() <= 0:
        raise InputError(
            "the metric needs both classes: "
            f"{neg.sum():g} negatives and {pos.sum():g} positives were counted"
        )
    return neg, pos
