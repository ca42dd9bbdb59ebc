"""Reference profile: how the training data and the holdout scores were distributed.

The same binning serves the trainer (reference counts in the manifest) and, later, the
devices' reports, so that drift is measured between histograms with identical bins.

Numeric bins are left-closed: with internal edges ``e_0 < ... < e_{k-1}`` bin 0 is
``(-inf, e_0)``, bin i is ``[e_{i-1}, e_i)`` and bin k is ``[e_{k-1}, +inf)``. Missing values
and values outside the schema's allowed range are counted beside the bins (out-of-range
values also land in their bin, since they were scored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.errors import InputError

SCORE_BINS = 100
"""Equal-width bins of the positive-class probability on [0, 1]."""

QUANTILE_BINS = 10
"""Numeric features get (at most) this many bins, cut at training-data quantiles."""


def quantile_edges(values: npt.NDArray[np.floating[Any]], bins: int = QUANTILE_BINS) -> list[float]:
    """Internal bin edges at the training quantiles, duplicates removed (discrete features
    have fewer distinct quantiles than bins)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    cuts = np.quantile(finite.astype(np.float64), np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return [float(c) for c in np.unique(cuts)]


def numeric_bin_counts(
    values: npt.NDArray[np.floating[Any]], edges: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], int]:
    """Counts per bin (len(edges) + 1 of them) and the count of missing values."""
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values[~missing], side="right")
    counts = np.bincount(index, minlength=len(np.asarray(edges)) + 1).astype(np.int64)
    return counts, int(missing.sum())


def categorical_counts(
    codes: npt.NDArray[np.floating[Any]], vocabulary_size: int
) -> tuple[npt.NDArray[np.int64], int]:
    """Counts per vocabulary code and the count of unknown (or missing) codes."""
    codes = np.asarray(codes, dtype=np.float64)
    known = (codes >= 0) & (codes < vocabulary_size)
    counts = np.bincount(codes[known].astype(np.int64), minlength=vocabulary_size)
    return counts.astype(np.int64), int((~known).sum())


def score_bin_index(scores: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The score bin of each probability; 1.0 belongs to the last bin."""
    scaled = np.floor(np.asarray(scores, dtype=np.float64) * SCORE_BINS)
    return np.clip(scaled, 0, SCORE_BINS - 1).astype(np.int64)


def score_histogram(scores: npt.ArrayLike) -> npt.NDArray[np.int64]:
    return np.bincount(score_bin_index(scores), minlength=SCORE_BINS).astype(np.int64)


@dataclass(frozen=True)
class NumericProfile:
    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    missing: int
    minimum: float
    maximum: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "numeric",
            "edges": list(self.edges),
            "counts": list(self.counts),
            "missing": self.missing,
            "minimum": self.minimum,
            "maximum": self.maximum,
        }


@dataclass(frozen=True)
class CategoricalProfile:
    name: str
    counts: tuple[int, ...]
    unknown: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "categorical",
            "counts": list(self.counts),
            "unknown": self.unknown,
        }


FeatureProfile = NumericProfile | CategoricalProfile


@dataclass(frozen=True)
class ScoreProfile:
    """Histogram of the positive-class probability on the holdout, overall and per label
    (``by_label[0]`` for the negative class, ``by_label[1]`` for the positive)."""

    counts: tuple[int, ...]
    by_label: tuple[tuple[int, ...], tuple[int, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bins": SCORE_BINS,
            "counts": list(self.counts),
            "by_label": [list(self.by_label[0]), list(self.by_label[1])],
        }


@dataclass(frozen=True)
class ReferenceProfile:
    rows: int
    features: tuple[FeatureProfile, ...]
    scores: ScoreProfile
    prediction: FeatureProfile | None = None
    """The holdout's predictions, for prediction drift of a non-binary model (docs/
    architecture.md §2): a multi-class model's predicted classes (a categorical profile
    over the schema's classes), a regressor's values (a numeric profile, cut at their
    quantiles). None for a binary model, whose scores say it; written only when set, so
    binary manifests read and hash as before."""

    def to_dict(self) -> dict[str, Any]:
        data = {
            "rows": self.rows,
            "features": [f.to_dict() for f in self.features],
            "scores": self.scores.to_dict(),
        }
        if self.prediction is not None:
            data["prediction"] = self.prediction.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ReferenceProfile:
        try:
            features = [_feature_profile(item) for item in data["features"]]
            prediction = data.get("prediction")
            scores = data["scores"]
            if int(scores["bins"]) != SCORE_BINS:
                raise InputError(f"score histogram has {scores['bins']} bins, not {SCORE_BINS}")
            by_label = scores["by_label"]
            profile = cls(
                rows=int(data["rows"]),
                features=tuple(features),
                scores=ScoreProfile(
                    counts=tuple(int(c) for c in scores["counts"]),
                    by_label=(
                        tuple(int(c) for c in by_label[0]),
                        tuple(int(c) for c in by_label[1]),
                    ),
                ),
                prediction=None if prediction is None else _feature_profile(prediction),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise InputError(f"reference profile is malformed: {error!r}") from None
        described = (*profile.features, *([profile.prediction] if profile.prediction else []))
        for feature in described:
            if (
                isinstance(feature, NumericProfile)
                and len(feature.counts) != len(feature.edges) + 1
            ):
                raise InputError(
                    f"reference profile of {feature.name!r}: counts and edges disagree"
                )
        return profile


def _feature_profile(item: Any) -> FeatureProfile:
    if item["kind"] == "numeric":
        return NumericProfile(
            name=str(item["name"]),
            edges=tuple(float(e) for e in item["edges"]),
            counts=tuple(int(c) for c in item["counts"]),
            missing=int(item["missing"]),
            minimum=float(item["minimum"]),
            maximum=float(item["maximum"]),
        )
    if item["kind"] == "categorical":
        return CategoricalProfile(
            name=str(item["name"]),
            counts=tuple(int(c) for c in item["counts"]),
            unknown=int(item["unknown"]),
        )
    raise InputError(f"unknown profile kind {item['kind']!r}")
