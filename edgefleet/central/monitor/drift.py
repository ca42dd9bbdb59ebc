"""Input drift between two histograms with identical bins.

Two effect sizes, not tests: the population stability index (:func:`psi`) and the
Jensen-Shannon distance (:func:`js_distance`). A chi-square p-value answers "are these two
samples from exactly the same distribution?", and with the counts a fleet reports (hundreds
of thousands of rows) the answer is "no" for every feature, every day: the smallest
irrelevant wobble is significant. An effect size measures *how different* the distributions
are and stays put as counts grow, so a fixed threshold keeps its meaning; the only place
counts matter is below :attr:`DriftDetector.min_count`, where the sampling noise of the
histogram itself approaches the threshold.

Values without a bin (a missing number, a category outside the vocabulary) are compared as
one more bin: the caller passes their count as ``reference_extra`` / ``current_extra`` to
:meth:`DriftDetector.assess`. That is how a new device type that the vocabulary never held
shows up as drift of ``device_type`` rather than vanishing from the histogram.

>>> detector = DriftDetector()
>>> reference = [500, 300, 200]
>>> detector.assess("plan", reference, [4900, 3100, 2000]).verdict
'no_drift'
>>> detector.assess("plan", reference, [2000, 3000, 5000]).verdict
'drift'
>>> detector.assess("plan", reference, [49, 31, 20]).verdict
'insufficient_data'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.spatial.distance import jensenshannon

from edgefleet.errors import InputError

Counts = Sequence[float] | npt.NDArray[np.integer] | npt.NDArray[np.floating]
"""A histogram: one non-negative count per bin (floats allowed for expected counts)."""

Verdict = Literal["drift", "no_drift", "insufficient_data"]

DEFAULT_EPSILON = 1e-4
"""Smoothing of bin proportions in :func:`psi` (the value Evidently and most PSI code use)."""


def psi(
    reference_counts: Counts, current_counts: Counts, *, epsilon: float = DEFAULT_EPSILON
) -> float:
    """Population stability index ``sum_b (c_b - r_b) ln(c_b / r_b)`` over bin proportions.

    PSI is symmetric and unbounded: a bin that was empty in one histogram and not in the
    other would make it infinite, so each proportion is smoothed as
    ``(p_b + epsilon) / (1 + k * epsilon)`` for ``k`` bins (it stays a distribution). An empty
    bin then counts as a share of about ``epsilon``, and mass ``a`` appearing in it adds
    about ``a * ln(a / epsilon)``: a bin's contribution is capped, and the cap depends on
    ``epsilon``, which is why the verdict also looks at the smoothing-free
    :func:`js_distance`. Rule of thumb from credit scoring: below 0.1 stable, 0.1 to 0.25
    a moderate shift, above 0.25 a major one.

    >>> psi([100, 100], [100, 100])
    0.0
    >>> round(psi([50, 50], [60, 40]), 4)
    0.0405
    >>> round(psi([100, 0], [90, 10]), 2)   # an empty bin: finite thanks to epsilon
    0.7
    """
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise InputError(f"epsilon must be a finite number > 0, not {epsilon!r}")
    reference, current = _pair(reference_counts, current_counts)
    k = len(reference)
    r = (reference / reference.sum() + epsilon) / (1.0 + k * epsilon)
    c = (current / current.sum() + epsilon) / (1.0 + k * epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def js_distance(reference_counts: Counts, current_counts: Counts) -> float:
    """Jensen-Shannon distance (base 2): the square root of the Jensen-Shannon divergence,
    a metric in [0, 1] (0 for identical histograms, 1 for disjoint ones).

    It needs no smoothing: each distribution is compared with their average, which is
    never zero where either is not.

    >>> js_distance([100, 100], [100, 100])
    0.0
    >>> js_distance([10, 0], [0, 10])
    1.0
    >>> round(js_distance([50, 50], [60, 40]), 4)
    0.0854
    """
    reference, current = _pair(reference_counts, current_counts)
    distance = float(jensenshannon(reference, current, base=2.0))
    # Rounding can leave a hair outside [0, 1]; the metric itself never is.
    return min(1.0, max(0.0, distance))


@dataclass(frozen=True)
class ExtraShare:
    """Values outside a feature's regular bins, each as a share of its side's values.

    ``reference`` and ``current`` are the shares of missing or unknown values (those
    compared as the extra bin); ``out_of_range`` is the share of current values outside
    the schema's allowed range. Those also sit in their (tail) bin, because they were
    scored; the reference has none by construction, since training refuses them.
    """

    reference: float
    current: float
    out_of_range: float = 0.0

    @property
    def change(self) -> float:
        """How much the missing/unknown share grew (negative if it shrank)."""
        return self.current - self.reference


@dataclass(frozen=True)
class FeatureDrift:
    """The drift of one feature: both effect sizes, the counts behind them and the verdict.

    ``psi`` and ``js`` are NaN when there are no current observations at all.
    """

    feature: str
    psi: float
    js: float
    reference_n: int
    current_n: int
    verdict: Verdict
    extra: ExtraShare

    @property
    def drifted(self) -> bool:
        return self.verdict == "drift"

    def to_dict(self, *, name_key: str = "feature") -> dict[str, Any]:
        """The JSON form every document uses; ``name_key`` names the feature's key (the
        dashboard's feature rows call it ``name``)."""
        return {
            name_key: self.feature,
            "psi": self.psi,
            "js": self.js,
            "reference_n": self.reference_n,
            "current_n": self.current_n,
            "verdict": self.verdict,
            "extra_reference": self.extra.reference,
            "extra_current": self.extra.current,
            "out_of_range": self.extra.out_of_range,
        }


class DriftDetector:
    """Drift verdicts for features' histograms.

    Parameters
    ----------
    psi_threshold
        Flag when PSI reaches this (default 0.2: inside the 0.1 to 0.25 band that Evidently
        and credit-scoring practice use).
    js_threshold
        Flag when the Jensen-Shannon distance reaches this (default 0.1, Evidently's
        default for JS and Wasserstein).
    min_count
        Below this many observations (current or reference, extra bin included) the
        verdict is ``"insufficient_data"``. The noise of a histogram of ``n`` values and
        ``k`` bins, with no drift at all, is about ``PSI ~ (k - 1)(1/n + 1/m)`` against a
        reference of ``m``, and ``JS ~ sqrt(PSI / (8 ln 2))``: for 11 bins, 500 values and
        a reference of 3000, about 0.023 and 0.065. At 500 values about 1 % of no-drift
        checks of such a feature cross a threshold, at 250 values 27 %; by 1000 values
        none do (tests/central/test_drift.py).

    Why two measures. JS is bounded, a metric, and needs no smoothing. PSI is the figure
    risk teams read (the 0.1 / 0.25 rule of thumb) and keeps growing with the size of a
    shift where JS saturates at 1, but it hinges on the smoothing of empty bins. They weigh
    shifts differently: for small shifts ``PSI ~ 8 ln 2 * JS^2`` (about 5.5 JS^2), so JS
    0.1 is PSI 0.055 and the JS threshold is the sensitive one; mass moving into an empty
    bin raises ``PSI / JS^2`` towards ``2 ln(1 / epsilon)``, yet below JS 0.1 PSI stays
    under 0.11 (worst case: 2 % of the mass in a bin that was empty). With the defaults JS
    therefore decides, and the network-outage scenario shows it must: the extra calls pile
    into the top bin, PSI saturates at 0.13 (dropped calls) and 0.075 (support calls) and
    only JS (0.15, 0.12) flags them. PSI's threshold takes over when ``js_threshold`` is
    raised above about 0.13 (to quiet small cohorts, say): it then still catches mass
    appearing in empty bins, such as a new category.
    Both are effect sizes: unlike a chi-square p-value they do not flag everything once
    counts grow (at 200 000 rows against 100 000, a 1 % price rise has a p-value near
    1e-12, but PSI 0.001 and JS 0.015).

    >>> detector = DriftDetector(psi_threshold=0.25, js_threshold=0.1, min_count=100)
    >>> result = detector.assess("device_type", [600, 400], [450, 300],
    ...                          reference_extra=0, current_extra=250)
    >>> result.verdict, round(result.extra.current, 2), round(result.js, 2)
    ('drift', 0.25, 0.37)
    """

    def __init__(
        self, psi_threshold: float = 0.2, js_threshold: float = 0.1, min_count: int = 500
    ) -> None:
        if not (math.isfinite(psi_threshold) and psi_threshold > 0):
            raise InputError(f"psi_threshold must be a finite number > 0, not {psi_threshold!r}")
        if not (math.isfinite(js_threshold) and 0 < js_threshold <= 1):
            raise InputError(f"js_threshold must be in (0, 1], not {js_threshold!r}")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise InputError(f"min_count must be a whole number >= 1, not {min_count!r}")
        self.psi_threshold = float(psi_threshold)
        self.js_threshold = float(js_threshold)
        self.min_count = min_count

    def __repr__(self) -> str:
        return (
            f"DriftDetector(psi_threshold={self.psi_threshold}, "
            f"js_threshold={self.js_threshold}, min_count={self.min_count})"
        )

    def assess(
        self,
        name: str,
        reference_counts: Counts,
        current_counts: Counts,
        *,
        reference_extra: float = 0,
        current_extra: float = 0,
        current_out_of_range: float = 0,
    ) -> FeatureDrift:
        """Compare one feature's histograms.

        ``reference_extra`` and ``current_extra`` count the values with no bin (missing
        numbers, unknown or missing categories); they are compared as one more bin.
        ``current_out_of_range`` counts current values outside the allowed range (already
        in their bins); it is only reported, in :attr:`FeatureDrift.extra`.
        """
        reference = as_counts(reference_counts, "reference counts")
        current = as_counts(current_counts, "current counts")
        if len(reference) != len(current):
            raise InputError(
                f"feature {name!r}: the histograms have different bins "
                f"({len(reference)} vs {len(current)}); compare counts of identical bins"
            )
        reference_extra = _extra_count(name, "reference_extra", reference_extra)
        current_extra = _extra_count(name, "current_extra", current_extra)
        current_out_of_range = _extra_count(name, "current_out_of_range", current_out_of_range)
        reference = np.append(reference, reference_extra)
        current = np.append(current, current_extra)
        reference_n = float(reference.sum())
        current_n = float(current.sum())
        if reference_n <= 0:
            raise InputError(f"feature {name!r}: the reference histogram is empty")
        if current_out_of_range > current_n:
            raise InputError(
                f"feature {name!r}: {current_out_of_range} out-of-range values of only "
                f"{current_n:g} observations"
            )
        if current_n > 0:
            psi_value, js_value = psi(reference, current), js_distance(reference, current)
            extra = ExtraShare(
                reference=reference_extra / reference_n,
                current=current_extra / current_n,
                out_of_range=current_out_of_range / current_n,
            )
        else:
            psi_value = js_value = math.nan
            extra = ExtraShare(reference_extra / reference_n, math.nan, math.nan)
        verdict: Verdict
        if min(reference_n, current_n) < self.min_count:
            verdict = "insufficient_data"
        elif psi_value >= self.psi_threshold or js_value >= self.js_threshold:
            verdict = "drift"
        else:
            verdict = "no_drift"
        return FeatureDrift(
            feature=name,
            psi=psi_value,
            js=js_value,
            reference_n=round(reference_n),
            current_n=round(current_n),
            verdict=verdict,
            extra=extra,
        )


def coarsen(
    reference_counts: Counts, current_counts: Counts, *, bins: int = 10
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Merge adjacent bins into at most ``bins`` groups of about equal reference mass.

    Sampling noise of PSI and JS grows with the number of bins (see
    :class:`DriftDetector`), so a fine histogram, such as the 100 score bins, false-alarms
    at counts where a 10-bin one is quiet. Groups follow the reference's quantiles, like the
    numeric features' bins: a bin joins the quantile group that holds the middle of its
    reference mass. A bin without reference mass joins the group before it (the first
    group, at the start), so that no group is empty in the reference; mass appearing there
    now still counts, as a shift into that group.

    >>> reference, current = coarsen([1, 1, 1, 1, 0, 0, 4, 0], [0, 2, 2, 0, 1, 1, 1, 1], bins=2)
    >>> reference.tolist(), current.tolist()
    ([4.0, 4.0], [6.0, 2.0])
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InputError(f"bins must be a whole number >= 1, not {bins!r}")
    reference, current = _pair(reference_counts, current_counts)
    share = reference / reference.sum()
    middle = np.cumsum(share) - share / 2
    quantile_group = np.minimum(np.floor(middle * bins), bins - 1)
    filled = reference > 0
    # Forward-fill the groups of filled bins over the empty ones; leading empties take the
    # first filled bin's group.
    last_filled = np.maximum.accumulate(np.where(filled, np.arange(len(reference)), -1))
    last_filled[last_filled < 0] = int(np.argmax(filled))
    _, group = np.unique(quantile_group[last_filled], return_inverse=True)
    return (
        np.bincount(group, weights=reference).astype(np.float64),
        np.bincount(group, weights=current).astype(np.float64),
    )


def as_counts(counts: Counts, what: str = "counts") -> npt.NDArray[np.float64]:
    """``counts`` as a float64 array, or :class:`InputError` naming ``what`` was wrong."""
    try:
        array = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers, not {counts!r}") from None
    if array.ndim != 1 or array.size == 0:
        raise InputError(f"{what} must be a non-empty list of counts, one per bin")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise InputError(f"{what} must be finite and >= 0")
    return array


def _extra_count(name: str, label: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number >= 0):
        raise InputError(f"feature {name!r}: {label} must be a count >= 0, not {value!r}")
    return number


def _pair(
    reference_counts: Counts, current_counts: Counts
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    reference = as_counts(reference_counts, "reference counts")
    current = as_counts(current_counts, "current counts")
    if len(reference) != len(current):
        raise InputError(
            f"the histograms have different bins ({len(reference)} vs {len(current)}); "
            "compare counts of identical bins"
        )
    if reference.sum() <= 0 or current.sum() <= 0:
        raise InputError("cannot compare an empty histogram (all counts are zero)")
    return reference, current
