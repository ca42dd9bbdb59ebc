"""Reports of multi-class and regression models for the monitoring tests (docs/architecture.md
§7c): rows, model outputs and labels drawn once, cut into several devices' windows, each
counted by a real :class:`SketchBuilder` and carried as report bytes, so that a test can
compare a measure of the merged reports with scikit-learn's metric on the very same rows."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.edge.profile import (
    SCORE_BINS,
    CategoricalProfile,
    NumericProfile,
    ReferenceProfile,
    ScoreProfile,
    categorical_counts,
    numeric_bin_counts,
    quantile_edges,
)
from edgefleet.edge.report import Report
from edgefleet.edge.schema import FeatureSchema, NumericFeature
from edgefleet.edge.sketch_builder import SketchBuilder

CLASSES = ("setosa", "versicolor", "virginica", "other")
EDGES = (-1.0, 0.0, 1.0)


def schema(task: str) -> FeatureSchema:
    classes = CLASSES if task == "multiclass" else ()
    return FeatureSchema(
        features=(NumericFeature("x1"), NumericFeature("x2")),
        target="species" if task == "multiclass" else "price",
        classes=classes,
        task=task,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class Rows:
    """Rows of one task: encoded inputs, the model's outputs (``[N, K]`` float32
    probabilities or ``[N]`` float32 predictions) and the true labels (class indices or
    values); ``labelled`` rows have their label come back."""

    task: str
    inputs: npt.NDArray[np.float32]
    outputs: npt.NDArray[np.float32]
    labels: npt.NDArray[Any]
    labelled: npt.NDArray[np.bool_]


@functools.cache
def rows(task: str, n: int = 6000, seed: int = 3, shift: float = 0.0) -> Rows:
    """``n`` rows of a 4-class classifier of moderate skill, or of a regressor whose target
    has mean 40 and spread 25 (``make_regression``-like), ``shift`` moving the inputs and so
    the predictions (drift)."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(shift, 1.0, size=(n, 2)).astype(np.float32)
    labelled = rng.random(n) < 0.7
    if task == "multiclass":
        truth = rng.choice(len(CLASSES), size=n, p=[0.4, 0.3, 0.2, 0.1])
        logits = rng.normal(0.0, 1.0, size=(n, len(CLASSES)))
        logits[np.arange(n), truth] += 1.5
        logits[:, 0] += 2.0 * shift  # a shift of the inputs favours class 0
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return Rows(task, inputs, probabilities.astype(np.float32), truth, labelled)
    target = 40.0 + 25.0 * rng.normal(size=n)
    predictions = target + rng.normal(0.0, 6.0, size=n) + 30.0 * shift
    return Rows(task, inputs, predictions.astype(np.float32), target, labelled)


def reference(task: str) -> ReferenceProfile:
    """The holdout profile of ``rows(task, seed=99)``: feature bins, and the predictions'."""
    holdout = rows(task, n=3000, seed=99)
    features = tuple(
        NumericProfile(name, EDGES, _bins(holdout.inputs[:, j]), 0, -5.0, 5.0)
        for j, name in enumerate(("x1", "x2"))
    )
    empty = (0,) * SCORE_BINS
    prediction: NumericProfile | CategoricalProfile
    if task == "multiclass":
        counts, _ = categorical_counts(holdout.outputs.argmax(axis=1).astype(np.float64), 4)
        prediction = CategoricalProfile("prediction", tuple(int(c) for c in counts), 0)
    else:
        values = holdout.outputs.astype(np.float64)
        edges = tuple(quantile_edges(values))
        counts, missing = numeric_bin_counts(values, np.asarray(edges))
        prediction = NumericProfile(
            "prediction",
            edges,
            tuple(int(c) for c in counts),
            missing,
            float(values.min()),
            float(values.max()),
        )
    return ReferenceProfile(
        rows=3000,
        features=features,
        scores=ScoreProfile(empty, (empty, empty)),
        prediction=prediction,
    )


def _bins(values: npt.NDArray[np.float32]) -> tuple[int, ...]:
    counts, _ = numeric_bin_counts(values, np.asarray(EDGES))
    return tuple(int(c) for c in counts)


def reports(
    data: Rows,
    devices: int = 5,
    windows: int = 3,
    *,
    version: str = "1.0.0",
    start: float = 1_750_000_000.0,
) -> list[bytes]:
    """The rows cut into ``devices * windows`` reports (uneven sizes), as report bytes:
    each device scores its rows and gets the labels of its labelled rows back in the same
    window. Window ``w`` of every device ends at ``start + 60 * w + device``."""
    model = schema(data.task)
    profile = reference(data.task)
    cuts = np.sort(np.random.default_rng(7).choice(len(data.labels), devices * windows - 1))
    parts = np.split(np.arange(len(data.labels)), cuts)
    payloads = []
    for i, part in enumerate(parts):
        device, window = i % devices, i // devices
        end = start + 60.0 * window + device
        builder = SketchBuilder(
            model,
            profile,
            model_name="iris",
            model_version=version,
            clock=iter((end - 60.0, end)).__next__,
        )
        builder.add(data.inputs[part], data.outputs[part], 0.001)
        back = part[data.labelled[part]]
        builder.add_outcomes(data.outputs[back], data.labels[back])
        report = Report.from_body(
            builder.snapshot(),
            fleet="acme",
            device_id=f"d{device}",
            sequence=window + 1,
            cohort="stable",
            device_group="eu" if device < 3 else "us",
        )
        payloads.append(report.encode())
    return payloads
