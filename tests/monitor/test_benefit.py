"""Benefit of a retrain: the paired bootstrap, the calibration exception, and the training
window chosen by validation (real scikit-learn fits on generated data)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import load_training_table
from edgefleet.central.monitor.benefit import auroc, judge_benefit, log_loss, paired_gain
from edgefleet.central.monitor.windows import (
    choose_window,
    fitter,
    recency_weights,
    split,
    windows_of,
)
from edgefleet.errors import DataError, InputError


def test_auroc_and_log_loss_equal_scikit_learns() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = np.round(0.01 + 0.98 * rng.random(500), 2)  # ties, none at 0 or 1
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert log_loss(labels, scores) == pytest.approx(sk_log_loss(labels, scores), abs=1e-9)


def test_pairing_makes_the_interval_narrow_and_centred() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 3000)
    shared = rng.normal(0, 1, 3000)
    running = labels + 1.2 * shared + 0.8 * rng.normal(0, 1, 3000)
    candidate = labels + 1.2 * shared
    gain = paired_gain(labels, running, candidate, resamples=400)
    assert gain.low < gain.value < gain.high
    assert gain.low > 0  # a real gain of a few points is seen through the shared noise
    assert gain.high - gain.low < 0.03
    # Each model's own AUROC varies by more than that with the rows drawn: pairing helps.
    rows = np.random.default_rng(9).integers(0, 3000, (200, 3000))
    alone = [auroc(labels[r], running[r]) for r in rows]
    assert np.percentile(alone, 97.5) - np.percentile(alone, 2.5) > gain.high - gain.low


def test_a_calibration_fix_helps_only_when_an_alert_asked_for_it() -> None:
    rng = np.random.default_rng(5)
    truth = rng.random(4000) * 0.6
    labels = (rng.random(4000) < truth).astype(int)
    running = truth * 0.6  # same ranking, under-predicts
    judged = judge_benefit(labels, running=running, candidate=truth, resamples=200)
    assert judged.gain.high >= 0 > judged.gain.low - 1e-9
    assert not judged.better_with_confidence
    assert judged.fixes_calibration
    assert judged.helps
    assert judged.reason.startswith("fixes calibration")
    quiet = judge_benefit(
        labels, running=running, candidate=truth, resamples=200, calibration_alert=False
    )
    assert not quiet.helps
    assert quiet.reason.startswith("retraining does not help")


def test_log_loss_gain_is_positive_when_the_candidate_is_better() -> None:
    rng = np.random.default_rng(6)
    truth = rng.random(3000)
    labels = (rng.random(3000) < truth).astype(int)
    judged = judge_benefit(
        labels, running=np.full(3000, 0.5), candidate=truth, metric="log_loss", resamples=200
    )
    assert judged.gain.low > 0
    assert judged.helps


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "accuracy"}, "choose one of"),
        ({"confidence": 1.0}, "confidence"),
        ({"resamples": 10}, "resamples"),
    ],
)
def test_bad_settings_say_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    labels = np.array([0, 1] * 50)
    with pytest.raises(InputError, match=message):
        judge_benefit(labels, running=labels * 0.5, candidate=labels * 0.4, **kwargs)  # type: ignore[arg-type]


def test_one_class_cannot_be_compared() -> None:
    with pytest.raises(DataError, match="only one class"):
        judge_benefit(np.zeros(50), running=np.zeros(50), candidate=np.zeros(50))


def test_recency_weights_give_the_newest_rows_their_share() -> None:
    weights = recency_weights(3000, 1000, 0.5)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[3000:].sum() == pytest.approx(weights[:3000].sum())


def test_validation_picks_the_newest_rows_under_concept_drift_and_not_without_it() -> None:
    reference = generate(3000, seed=21)
    schema = reference.schema
    ref = load_training_table(reference.frame, "churn", schema=schema)
    fit = fitter("logreg", {}, 0)
    concept = load_training_table(
        generate(3000, seed=22, scenario="competitor_offer").frame, "churn", schema=schema
    )
    choice = choose_window(split(concept, 0.25, 0)[0], ref, fit)
    assert choice.chosen in ("newest", "both")
    assert choice.scores[choice.chosen] > choice.scores["reference"]
    assert [w.name for w in windows_of(concept, ref)] == ["newest", "reference", "both"]
    assert choose_window(concept, None, fit).chosen == "newest"  # nothing else to choose
