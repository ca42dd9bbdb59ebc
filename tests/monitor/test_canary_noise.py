"""A young canary is not rolled back for the sampling noise of its score histogram
(central/monitor/canary.py ``js_beyond_noise``), and a real score drift still counts."""

from __future__ import annotations

import numpy as np

from edgefleet.central.monitor.canary import js_beyond_noise
from edgefleet.central.monitor.quality import score_drift


def _histogram(rng: np.random.Generator, probabilities: np.ndarray, n: int) -> list[int]:
    return np.bincount(rng.choice(100, n, p=probabilities), minlength=100).tolist()


def test_no_drift_at_a_canarys_counts_stays_under_the_threshold_beyond_noise() -> None:
    rng = np.random.default_rng(7)
    spread = np.full(100, 1 / 100)  # scores over every bin: the most noise per count
    raw, corrected = [], []
    for _ in range(400):
        drift = score_drift(_histogram(rng, spread, 1000), _histogram(rng, spread, 600))
        raw.append(drift.js)
        corrected.append(js_beyond_noise(drift))
    assert np.mean(raw) > 0.05  # what the threshold of 0.1 met before
    assert np.percentile(corrected, 99) < 0.1
    assert np.mean(corrected) < 0.5 * np.mean(raw)


def test_a_real_score_drift_is_barely_changed() -> None:
    rng = np.random.default_rng(8)
    before = np.linspace(2, 0.1, 100)
    after = before[::-1].copy()
    drift = score_drift(
        _histogram(rng, before / before.sum(), 1000), _histogram(rng, after / after.sum(), 600)
    )
    assert drift.js > 0.3
    assert js_beyond_noise(drift) > 0.95 * drift.js
