"""Feature schema: the names, kinds and allowed values of a model's inputs.

The model contract (docs/architecture.md §2): every exported format takes one float32 tensor
``[N, F]`` with the features in schema order. A numeric feature is its value (NaN where
missing is allowed: the graph imputes it). A categorical feature is the index of its value
in the vocabulary; a value outside the vocabulary is :data:`UNKNOWN_CODE`, which every
graph one-hot encodes as "no category".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from edgefleet.errors import InputError

UNKNOWN_CODE = -1.0

OutOfRangePolicy = Literal["error", "clip", "accept"]
_POLICIES: tuple[OutOfRangePolicy, ...] = ("error", "clip", "accept")

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[Task, ...] = ("binary", "multiclass", "regression")
Outputs = Literal["probabilities", "decision"]
OUTPUTS: tuple[Outputs, ...] = ("probabilities", "decision")
MAX_CLASSES = 64
"""Most classes a model may have: every report holds two 100-bin histograms per class
(edge/tasksketch.py), and 64 classes keep a report far under the 256 KB receivers accept.
A schema with more is refused at registration, not when a device first reports."""


@dataclass(frozen=True)
class NumericFeature:
    """A numeric input. ``minimum``/``maximum`` bound what is *allowed* (a validity range,
    not the training range); ``out_of_range`` says what scoring does with a value outside
    it: refuse the record (default), clip it to the bound, or accept it as is."""

    name: str
    minimum: float | None = None
    maximum: float | None = None
    allow_missing: bool = False
    out_of_range: OutOfRangePolicy = "error"

    @property
    def kind(self) -> Literal["numeric"]:
        return "numeric"

    def __post_init__(self) -> None:
        _check_name(self.name)
        for bound in (self.minimum, self.maximum):
            if bound is not None and not math.isfinite(bound):
                raise InputError(f"feature {self.name!r}: bounds must be finite numbers")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise InputError(
                f"feature {self.name!r}: minimum {self.minimum} is above maximum {self.maximum}"
            )
        if self.out_of_range not in _POLICIES:
            raise InputError(
                f"feature {self.name!r}: out_of_range must be one of {', '.join(_POLICIES)}"
            )

    def in_range(self, value: float) -> bool:
        return (self.minimum is None or value >= self.minimum) and (
            self.maximum is None or value <= self.maximum
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "numeric",
            "minimum": self.minimum,
            "maximum": self.maximum,
            "allow_missing": self.allow_missing,
            "out_of_range": self.out_of_range,
        }


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical input with a fixed vocabulary; its code is the index in ``vocabulary``.
    A missing value (where allowed) is scored like an unknown category."""

    name: str
    vocabulary: tuple[str, ...]
    allow_missing: bool = False

    @property
    def kind(self) -> Literal["categorical"]:
        return "categorical"

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not self.vocabulary:
            raise InputError(f"feature {self.name!r}: a categorical feature needs a vocabulary")
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise InputError(f"feature {self.name!r}: the vocabulary has duplicate values")
        if not all(isinstance(v, str) for v in self.vocabulary):
            raise InputError(f"feature {self.name!r}: vocabulary values must be strings")

    def code(self, value: str) -> float:
        """The integer code of ``value`` as a float, :data:`UNKNOWN_CODE` if unseen."""
        try:
            return float(self.vocabulary.index(value))
        except ValueError:
            return UNKNOWN_CODE

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "categorical",
            "vocabulary": list(self.vocabulary),
            "allow_missing": self.allow_missing,
        }


Feature = NumericFeature | CategoricalFeature


@dataclass(frozen=True)
class FeatureSchema:
    """The ordered inputs of a model, the target column, the task and its classes.

    ``task`` (docs/architecture.md §2): ``binary`` (``classes`` holds exactly two labels and
    ``classes[1]`` is the positive class: the probability a model reports for it is the
    "score", e.g. churn probability, that monitoring histograms), ``multiclass`` (three or
    more labels, in the order of the estimator's ``classes_``: the order of the model's
    probability columns) or ``regression`` (no classes: the model outputs one value).
    """

    features: tuple[Feature, ...]
    target: str
    classes: tuple[str, ...]
    segments: tuple[str, ...] = ()
    """Features whose groups the monitor compares (fairness; :mod:`edgefleet.edge.segments`).
    Left out of the JSON form when empty, so schemas without segments read and hash as
    before."""
    task: Task = "binary"
    """Left out of the JSON form when ``binary``, so binary schemas read and hash as before."""
    outputs: Outputs = "probabilities"
    """``decision``: a classifier's outputs are a monotone map of its decision function into
    (0, 1) (a score that ranks and picks the class, not a probability: docs/architecture.md
    §2). Left out of the JSON form when ``probabilities``, so schemas read and hash as
    before."""

    def __post_init__(self) -> None:
        if not self.features:
            raise InputError("a feature schema needs at least one feature")
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InputError(f"duplicate feature names in schema: {', '.join(duplicates)}")
        if self.target in names:
            raise InputError(f"the target {self.target!r} cannot also be a feature")
        object.__setattr__(self, "classes", tuple(self.classes))
        _check_classes(self.task, self.classes)
        _check_outputs(self.outputs, self.task)
        if self.segments:
            from edgefleet.edge.segments import check_segments  # segments builds on this module

            object.__setattr__(self, "segments", check_segments(self.features, self.segments))

    @property
    def n_outputs(self) -> int:
        """Columns of the model's output: one probability per class, or 1 (the value) for
        regression."""
        return 1 if self.task == "regression" else len(self.classes)

    @property
    def is_classifier(self) -> bool:
        return self.task != "regression"

    @property
    def scores_only(self) -> bool:
        """Whether the outputs are decision scores rather than probabilities: answers say
        "score" and calibration is not measured."""
        return self.outputs == "decision"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def n_features(self) -> int:
        return len(self.features)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise InputError(f"no feature named {name!r}; the schema has {', '.join(self.names)}")

    def numeric_indices(self) -> list[int]:
        return [i for i, f in enumerate(self.features) if isinstance(f, NumericFeature)]

    def categorical_indices(self) -> list[int]:
        return [i for i, f in enumerate(self.features) if isinstance(f, CategoricalFeature)]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "target": self.target,
            "classes": list(self.classes),
            "features": [f.to_dict() for f in self.features],
        }
        if self.segments:
            data["segments"] = list(self.segments)
        if self.task != "binary":
            data["task"] = self.task
        if self.outputs != "probabilities":
            data["outputs"] = self.outputs
        return data

    @classmethod
    def from_dict(cls, data: Any) -> FeatureSchema:
        """Build a schema from its JSON form; :class:`InputError` says what is wrong."""
        if not isinstance(data, dict):
            raise InputError("a feature schema must be a JSON object")
        try:
            target = data["target"]
            classes = data["classes"]
            raw_features = data["features"]
        except KeyError as missing:
            raise InputError(f"feature schema lacks the key {missing}") from None
        if not isinstance(target, str) or not isinstance(classes, list):
            raise InputError("feature schema: 'target' must be a string, 'classes' a list")
        if not isinstance(raw_features, list):
            raise InputError("feature schema: 'features' must be a list")
        features = tuple(_feature_from_dict(f, i) for i, f in enumerate(raw_features))
        task = data.get("task", "binary")
        if task not in TASKS:
            raise InputError(f"feature schema: 'task' must be one of {', '.join(TASKS)}")
        if len(classes) > MAX_CLASSES or not all(isinstance(c, str) for c in classes):
            raise InputError(
                f"feature schema: 'classes' must be a list of at most {MAX_CLASSES} strings"
            )
        segments = data.get("segments", [])
        if not isinstance(segments, list):
            raise InputError("feature schema: 'segments' must be a list of feature names")
        return cls(
            features=features,
            target=target,
            classes=tuple(classes),
            segments=tuple(segments),
            task=task,
            outputs=data.get("outputs", "probabilities"),
        )


def _feature_from_dict(data: Any, position: int) -> Feature:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise InputError(f"feature schema: feature {position} must be an object with a 'name'")
    kind = data.get("kind")
    name = data["name"]
    allow_missing = bool(data.get("allow_missing", False))
    if kind == "numeric":
        minimum, maximum = data.get("minimum"), data.get("maximum")
        for bound in (minimum, maximum):
            if bound is not None and (
                isinstance(bound, bool) or not isinstance(bound, int | float)
            ):
                raise InputError(f"feature {name!r}: bounds must be numbers or null")
        return NumericFeature(
            name=name,
            minimum=None if minimum is None else float(minimum),
            maximum=None if maximum is None else float(maximum),
            allow_missing=allow_missing,
            out_of_range=data.get("out_of_range", "error"),
        )
    if kind == "categorical":
        vocabulary = data.get("vocabulary")
        if not isinstance(vocabulary, list):
            raise InputError(f"feature {name!r}: a categorical feature needs a 'vocabulary' list")
        return CategoricalFeature(
            name=name, vocabulary=tuple(vocabulary), allow_missing=allow_missing
        )
    raise InputError(f"feature {name!r}: kind must be 'numeric' or 'categorical', not {kind!r}")


def _check_classes(task: str, classes: tuple[str, ...]) -> None:
    """The class labels a task needs: what is wrong and what the schema should hold."""
    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    if not all(isinstance(c, str) for c in classes):
        raise InputError("class labels must be strings (the labels as the model's classes_)")
    if len(set(classes)) != len(classes):
        raise InputError(f"the class labels {list(classes)} repeat a label")
    if task == "binary" and len(classes) != 2:
        raise InputError(
            f"a binary schema needs exactly two distinct classes, got {len(classes)}; "
            "use task 'multiclass' for three or more"
        )
    if task == "multiclass" and not 3 <= len(classes) <= MAX_CLASSES:
        raise InputError(
            f"a multiclass schema needs 3 to {MAX_CLASSES} classes, got {len(classes)}"
            + ("; use task 'binary' for two" if len(classes) == 2 else "")
        )
    if task == "regression" and classes:
        raise InputError(f"a regression schema has no classes, got {list(classes)}")


def _check_outputs(outputs: str, task: str) -> None:
    if outputs not in OUTPUTS:
        raise InputError(f"feature schema: 'outputs' must be one of {', '.join(OUTPUTS)}")
    if outputs == "decision" and task == "regression":
        raise InputError(
            "a regression schema outputs values: 'outputs' 'decision' is for classifiers"
        )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or name != name.strip():
        raise InputError(f"feature names must be non-empty strings without edge spaces: {name!r}")
