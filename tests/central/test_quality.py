"""Quality from score histograms: binned AUROC and AP against scikit-learn's exact values on
the raw scores, the label-free estimate and its blind spot, score drift, rates."""

from __future__ import annotations

import doctest
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features
from edgefleet.central.monitor import quality
from edgefleet.central.monitor.drift import DriftDetector
from edgefleet.central.monitor.quality import (
    auroc_error_bound,
    average_precision_bounds,
    binned_auroc,
    binned_average_precision,
    expected_performance,
    rate,
    score_drift,
)
from edgefleet.central.trainer import TrainedModel
from edgefleet.edge.profile import SCORE_BINS, score_bin_index, score_histogram
from edgefleet.errors import InputError

Labelled = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]
FAMILIES = ("logreg", "rf", "gb", "hgb", "et", "dt")


def test_docstring_examples_run() -> None:
    result = doctest.testmod(quality)
    assert result.attempted > 0
    assert result.failed == 0


def histograms(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[list[int], list[int]]:
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    return (
        score_histogram(scores[labels == 0]).tolist(),
        score_histogram(scores[labels == 1]).tolist(),
    )


def scored(model: TrainedModel, rows: int, *, seed: int, scenario: str = "none") -> Labelled:
    data = generate(rows, seed=seed, scenario=scenario)
    inputs = encode_features(data.frame[list(model.schema.names)], model.schema)
    labels = (data.frame["churn"] == "Yes").to_numpy().astype(np.int64)
    return labels, model.pipeline.predict_proba(inputs)[:, 1].astype(np.float64)


# ----------------------------------------------------- exactness on the binned scores

# Raw data a bin cannot see into: records packed into a few bins, each at any position
# inside its bin, with labels free to favour either end of a bin.
records = st.lists(
    st.tuples(
        st.integers(0, SCORE_BINS - 1),
        st.floats(0, 1, exclude_max=True),
        st.booleans(),
    ),
    min_size=2,
    max_size=300,
).filter(lambda rows: 0 < sum(label for _, _, label in rows) < len(rows))


def raw(rows: list[tuple[int, float, bool]], levels: int | None) -> Labelled:
    """Labels and raw scores; ``levels`` rounds the position in the bin to create ties."""
    position = np.array([offset for _, offset, _ in rows])
    if levels is not None:
        position = np.floor(position * levels) / levels
    scores = (np.array([b for b, _, _ in rows]) + position) / SCORE_BINS
    return np.array([int(label) for _, _, label in rows]), scores


few_bins = st.lists(st.integers(0, SCORE_BINS - 1), min_size=1, max_size=4)


@given(records, few_bins, st.sampled_from([None, 1, 3]))
@settings(max_examples=300, deadline=None)
def test_binned_metrics_equal_sklearn_on_the_bin_indices(
    rows: list[tuple[int, float, bool]], bins: list[int], levels: int | None
) -> None:
    rows = [(bins[b % len(bins)], offset, label) for b, offset, label in rows]
    labels, scores = raw(rows, levels)
    neg, pos = histograms(labels, scores)
    index = score_bin_index(scores)
    assert binned_auroc(neg, pos) == pytest.approx(roc_auc_score(labels, index), abs=1e-12)
    assert binned_average_precision(neg, pos) == pytest.approx(
        average_precision_score(labels, index), abs=1e-12
    )


@given(records, few_bins, st.sampled_from([None, 1, 3]))
@settings(max_examples=300, deadline=None)
def test_the_raw_scores_metrics_stay_within_the_bounds(
    rows: list[tuple[int, float, bool]], bins: list[int], levels: int | None
) -> None:
    """Adversarial: few bins, so most pairs share one, and exact ties (``levels``) that
    scikit-learn averages over."""
    rows = [(bins[b % len(bins)], offset, label) for b, offset, label in rows]
    labels, scores = raw(rows, levels)
    neg, pos = histograms(labels, scores)
    exact = roc_auc_score(labels, scores)
    assert abs(binned_auroc(neg, pos) - exact) <= auroc_error_bound(neg, pos) + 1e-12
    low, high = average_precision_bounds(neg, pos)
    assert low - 1e-12 <= average_precision_score(labels, scores) <= high + 1e-12
    assert low - 1e-12 <= binned_average_precision(neg, pos) <= high + 1e-12


def test_the_auroc_bound_is_reached() -> None:
    """Positives at the top of every bin: the raw scores rank every same-bin pair right,
    the bins call them all ties, and the difference is exactly the bound."""
    rng = np.random.default_rng(0)
    bins = rng.integers(0, SCORE_BINS, 2000)
    labels = rng.integers(0, 2, 2000)
    scores = (bins + np.where(labels == 1, 0.9, 0.1)) / SCORE_BINS
    neg, pos = histograms(labels, scores)
    gap = roc_auc_score(labels, scores) - binned_auroc(neg, pos)
    assert gap == pytest.approx(auroc_error_bound(neg, pos), abs=1e-12)


# ---------------------------------------------------------- the churn model's scores


@pytest.mark.parametrize("family", FAMILIES)
def test_binning_error_on_the_churn_models_scores(
    trained: Callable[[str], TrainedModel], family: str
) -> None:
    """100 bins, 20 000 records. Measured |binned - exact|: AUROC at most 0.0015 (bound
    0.004 to 0.006, 0.035 for the single tree, whose few leaf scores crowd some bins); AP
    about 0.0035 for every family, inside a guaranteed interval about 0.02 wide (0.09 for
    the tree)."""
    labels, scores = scored(trained(family), 20_000, seed=21)
    neg, pos = histograms(labels, scores)
    auroc_error = abs(binned_auroc(neg, pos) - roc_auc_score(labels, scores))
    assert auroc_error <= auroc_error_bound(neg, pos)
    assert auroc_error < 0.01
    if family != "dt":
        assert auroc_error_bound(neg, pos) < 0.01
    exact_ap = average_precision_score(labels, scores)
    assert abs(binned_average_precision(neg, pos) - exact_ap) < 0.01
    low, high = average_precision_bounds(neg, pos)
    assert low <= exact_ap <= high


# ------------------------------------------------------------ label-free estimate


def test_expected_performance_tracks_a_calibrated_model_without_concept_drift(
    trained: Callable[[str], TrainedModel],
) -> None:
    """Logistic regression on generated data, 50 000 new records: estimated AUROC 0.842
    vs realized 0.834, positive rate 0.234 vs 0.228 (measured)."""
    labels, scores = scored(trained("logreg"), 50_000, seed=21)
    estimate = expected_performance(score_histogram(scores))
    assert estimate.n == 50_000
    assert abs(estimate.auroc - roc_auc_score(labels, scores)) < 0.03
    assert abs(estimate.positive_rate - labels.mean()) < 0.015
    assert abs(estimate.average_precision - average_precision_score(labels, scores)) < 0.05


def test_expected_performance_cannot_see_concept_drift(
    trained: Callable[[str], TrainedModel],
) -> None:
    """competitor_offer leaves the inputs as they were, so the scores and the estimate do
    not move (0.842), while the labelled AUROC falls from 0.834 to 0.785 (measured)."""
    model = trained("logreg")
    labels_before, scores_before = scored(model, 50_000, seed=21)
    labels_after, scores_after = scored(model, 50_000, seed=21, scenario="competitor_offer")
    before = expected_performance(score_histogram(scores_before))
    after = expected_performance(score_histogram(scores_after))
    assert after == before
    realized_before = binned_auroc(*histograms(labels_before, scores_before))
    realized_after = binned_auroc(*histograms(labels_after, scores_after))
    assert realized_before - realized_after > 0.04
    assert after.auroc - realized_after > 0.04
    # Score drift is blind to it too: the score histogram is the same.
    assert not score_drift(score_histogram(scores_before), score_histogram(scores_after)).drifted


def test_expected_performance_of_extreme_histograms() -> None:
    sure = [0] * SCORE_BINS
    sure[-1] = 100
    estimate = expected_performance(sure)
    # One bin: every pair is a tie.
    assert estimate.auroc == 0.5
    assert estimate.positive_rate == pytest.approx(0.995)
    with pytest.raises(InputError):
        expected_performance([0] * SCORE_BINS)


# ------------------------------------------------------------------- score drift


def test_score_drift_on_the_reference_profile(trained: Callable[[str], TrainedModel]) -> None:
    """The holdout's 1000 scores are the reference. 2000 new no-drift records: quiet once
    merged into 10 groups (JS 0.048), while on the raw 100 bins sampling noise alone gives
    JS 0.15 and PSI 0.12, a false alarm. A price rise of 40 % moves the scores enough to
    flag (JS 0.17); at 20 % the score shift is JS ~0.09, below the threshold, and it is the
    feature monitor (monthly_charges, JS 0.26) that catches it."""
    model = trained("logreg")
    reference = np.array(model.reference.scores.counts)
    assert reference.sum() == 1000
    _, fresh = scored(model, 2000, seed=31)
    current = score_histogram(fresh)
    result = score_drift(reference, current)
    assert result.verdict == "no_drift"
    assert result.feature == "score"
    assert DriftDetector().assess("score", reference, current).drifted
    data = generate(5000, seed=31, scenario="price_increase", drift_strength=2.0)
    inputs = encode_features(data.frame[list(model.schema.names)], model.schema)
    pricier = model.pipeline.predict_proba(inputs)[:, 1]
    assert score_drift(reference, score_histogram(pricier)).drifted


# ------------------------------------------------------------------------- rates


def test_wilson_interval_by_hand() -> None:
    z = 1.959963984540054
    n, p = 200, 0.1
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    result = rate(20, 200)
    assert result.value == 0.1
    assert result.low == pytest.approx(centre - half)
    assert result.high == pytest.approx(centre + half)


def test_wilson_interval_edges() -> None:
    none = rate(0, 50)
    assert none.low == 0.0
    assert 0 < none.high < 0.1
    every = rate(50, 50)
    assert every.high == 1.0
    assert 0.9 < every.low < 1.0
    empty = rate(0, 0)
    assert math.isnan(empty.value)
    assert (empty.low, empty.high) == (0.0, 1.0)
    assert rate(5, 100, confidence=0.99).high > rate(5, 100).high


def test_wilson_interval_covers_rare_rates() -> None:
    """The reason for Wilson: at a 1 % error rate and 200 records the normal approximation
    covers well under 95 %; Wilson covers at least that."""
    rng = np.random.default_rng(1)
    errors = rng.binomial(200, 0.01, 4000)
    covered = [(r.low <= 0.01 <= r.high) for r in (rate(int(k), 200) for k in errors)]
    assert np.mean(covered) >= 0.93


@pytest.mark.parametrize(
    ("numerator", "denominator", "confidence"),
    [(-1, 10, 0.95), (11, 10, 0.95), (1, 10, 1.0), (1, 10, 0.0), (1.5, 10, 0.95), (True, 5, 0.9)],
)
def test_bad_rates_are_refused(numerator: int, denominator: int, confidence: float) -> None:
    with pytest.raises(InputError):
        rate(numerator, denominator, confidence=confidence)


@pytest.mark.parametrize(
    ("neg", "pos"),
    [([1, 2], [1, 2, 3]), ([0, 0], [1, 2]), ([1, 2], [0, 0]), ([1, -1], [1, 1]), ([], [])],
)
def test_bad_labelled_histograms_are_refused(neg: list[int], pos: list[int]) -> None:
    for metric in (
        binned_auroc,
        auroc_error_bound,
        binned_average_precision,
        average_precision_bounds,
    ):
        with pytest.raises(InputError):
            metric(neg, pos)
