"""The bundle manifest (docs/architecture.md §3): what a model is, how it was made, how to
check it, and which artifacts carry it.

The manifest is stored as JSON (``manifest.json``) and signed byte for byte; parsing never
normalises the bytes that were signed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.edge.profile import ReferenceProfile
from edgefleet.edge.schema import FeatureSchema
from edgefleet.errors import InputError, ManifestError

MANIFEST_FORMAT = 1
FORMATS = ("onnx", "tflite", "coreml", "web", "pmml")
"""Artifact formats a bundle can carry. A device runs only those of its backends
(``backends/base.py``); ``pmml`` is carried for central scoring engines and never loaded
here. Devices running an edgefleet older than this list refuse a manifest naming it: keep
PMML in a bundle of its own (``--formats pmml``) unless the fleet is up to date."""

DEFAULT_TOLERANCE = 1e-5
"""Largest absolute probability difference any artifact may show against scikit-learn (for
regression, the absolute part of the tolerance: see :func:`within_tolerance`)."""

REGRESSION_RTOL = 1e-5
"""Relative part of a regressor's tolerance: a predicted value ``a`` agrees with
scikit-learn's ``b`` when ``|a - b| <= tolerance + REGRESSION_RTOL * |b|``. Values are in the
target's units (hundreds for some targets), where float32 arithmetic alone is off by a few
parts in 10^7 per operation, so an absolute bound cannot fit every target."""

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Value = float | str | None


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.4.0"`` -> ``(1, 4, 0)``; :class:`InputError` for anything that is not
    MAJOR.MINOR.PATCH."""
    match = _SEMVER.match(version) if isinstance(version, str) else None
    if not match:
        raise InputError(f"{version!r} is not a version of the form MAJOR.MINOR.PATCH")
    return int(match[1]), int(match[2]), int(match[3])


@dataclass(frozen=True)
class Artifact:
    format: str
    path: str
    sha256: str
    bytes: int
    runtime: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "runtime": self.runtime,
        }


def within_tolerance(
    got: npt.NDArray[np.float64],
    expected: npt.NDArray[np.float64],
    *,
    task: str,
    tolerance: float,
) -> npt.NDArray[np.bool_]:
    """Element-wise parity of model outputs ``[N, n_outputs]`` (docs/architecture.md §2):
    probabilities within ``tolerance``; regression values within ``tolerance +
    REGRESSION_RTOL * |expected|``. NaN or infinity is never within."""
    rtol = REGRESSION_RTOL if task == "regression" else 0.0
    with np.errstate(invalid="ignore"):
        allowed = tolerance + rtol * np.abs(expected)
        return np.isfinite(got) & (np.abs(got - expected) <= allowed)


def task_tolerance(task: str, expected: npt.NDArray[Any], tolerance: float) -> float:
    """The absolute part of a model's tolerance (docs/architecture.md §2): ``tolerance`` for
    probabilities; for a regressor, ``tolerance`` times the mean |value| of the rows checked
    (at least 1). float32 arithmetic errs relative to the terms a value sums, so a value near
    zero of a model whose values are in the hundreds carries their rounding. The export
    writes it as the manifest's ``tolerance``."""
    values = np.asarray(expected, dtype=np.float64)
    if task != "regression" or values.size == 0:
        return tolerance
    return tolerance * max(1.0, float(np.abs(values).mean()))


@dataclass(frozen=True)
class GoldenVector:
    """A record, its encoding under the schema (None = NaN), and the outputs that
    scikit-learn gave for it: ``probabilities`` holds ``schema.n_outputs`` values, the class
    probabilities in schema class order, or the one predicted value of a regressor (the JSON
    key is ``probabilities`` for every task, so binary manifests stay byte-identical).
    ``note`` says why it is there (holdout row, edge case)."""

    record: Mapping[str, Value]
    input: tuple[float | None, ...]
    probabilities: tuple[float, ...]
    note: str

    def input_values(self) -> list[float]:
        return [math.nan if v is None else v for v in self.input]

    def to_dict(self) -> dict[str, Any]:
        return {
            "record": dict(self.record),
            "input": list(self.input),
            "probabilities": list(self.probabilities),
            "note": self.note,
        }


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    created: str
    model_family: str
    target: str
    data_sha256: str
    schema: FeatureSchema
    metrics: Mapping[str, float]
    reference: ReferenceProfile
    golden: tuple[GoldenVector, ...]
    artifacts: tuple[Artifact, ...]
    parity: Mapping[str, float] = field(default_factory=dict)
    tolerance: float = DEFAULT_TOLERANCE
    params: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = MANIFEST_FORMAT

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        return parse_version(self.version)

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def artifact(self, fmt: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.format == fmt:
                return artifact
        have = ", ".join(a.format for a in self.artifacts) or "none"
        raise ManifestError(f"{self.label} has no {fmt} artifact (it has: {have})")

    def formats(self) -> tuple[str, ...]:
        return tuple(a.format for a in self.artifacts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "model_family": self.model_family,
            "target": self.target,
            "data_sha256": self.data_sha256,
            "schema": self.schema.to_dict(),
            "metrics": dict(self.metrics),
            "parity": dict(self.parity),
            "tolerance": self.tolerance,
            "params": dict(self.params),
            "reference": self.reference.to_dict(),
            "golden": [g.to_dict() for g in self.golden],
            "artifacts": [a.to_dict() for a in self.artifacts],
        }

    def to_bytes(self) -> bytes:
        """The bytes that are written and signed. NaN never appears: golden inputs use
        null for it, and ``allow_nan=False`` makes any other NaN a bug we hear about."""
        text = json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False)
        return (text + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "manifest.json") -> Manifest:
        try:
            raw = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ManifestError(f"{source} is not UTF-8 text: not a manifest") from None
        except json.JSONDecodeError as error:
            # A manifest is one JSON object: text that stops before its closing brace was cut.
            ends_early = not data.rstrip().endswith(b"}")
            hint = " (the file ends early: truncated)" if ends_early else ""
            raise ManifestError(
                f"{source} is not valid JSON at line {error.lineno} column {error.colno}"
                f"{hint}: {error.msg}"
            ) from None
        return cls.from_dict(raw, source=source)

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "manifest.json") -> Manifest:
        if not isinstance(raw, dict):
            raise ManifestError(f"{source} must hold a JSON object")
        try:
            format_version = raw["format_version"]
            if format_version != MANIFEST_FORMAT:
                raise ManifestError(
                    f"{source} has format_version {format_version!r}; this edgefleet reads "
                    f"{MANIFEST_FORMAT}: upgrade edgefleet on this device"
                )
            version = str(raw["version"])
            parse_version(version)
            artifacts = tuple(_artifact(a) for a in raw["artifacts"])
            schema = FeatureSchema.from_dict(raw["schema"])
            golden = tuple(_golden(g, schema) for g in raw["golden"])
            return cls(
                format_version=format_version,
                name=str(raw["name"]),
                version=version,
                created=str(raw["created"]),
                model_family=str(raw["model_family"]),
                target=str(raw["target"]),
                data_sha256=str(raw["data_sha256"]),
                schema=schema,
                metrics={str(k): float(v) for k, v in raw["metrics"].items()},
                reference=ReferenceProfile.from_dict(raw["reference"]),
                golden=golden,
                artifacts=artifacts,
                parity={str(k): float(v) for k, v in raw.get("parity", {}).items()},
                tolerance=float(raw.get("tolerance", DEFAULT_TOLERANCE)),
                params=dict(raw.get("params", {})),
            )
        except ManifestError:
            raise
        except InputError as error:
            raise ManifestError(f"{source}: {error}") from None
        except KeyError as missing:
            raise ManifestError(f"{source} lacks the field {missing}") from None
        except (TypeError, ValueError, AttributeError) as error:
            raise ManifestError(f"{source} has a field of the wrong type: {error}") from None


def _artifact(raw: Any) -> Artifact:
    artifact = Artifact(
        format=str(raw["format"]),
        path=str(raw["path"]),
        sha256=str(raw["sha256"]),
        bytes=int(raw["bytes"]),
        runtime=str(raw["runtime"]),
    )
    if artifact.format not in FORMATS:
        raise ManifestError(f"artifact format {artifact.format!r} is not one of {FORMATS}")
    if not _SHA256.match(artifact.sha256):
        raise ManifestError(f"artifact {artifact.path!r}: sha256 is not 64 hex digits")
    parts = artifact.path.split("/")
    if artifact.path.startswith("/") or ".." in parts or "\\" in artifact.path:
        raise ManifestError(f"artifact path {artifact.path!r} leaves the bundle")
    if artifact.bytes < 0:
        raise ManifestError(f"artifact {artifact.path!r}: negative size")
    return artifact


def _golden(raw: Any, schema: FeatureSchema) -> GoldenVector:
    values = raw["input"]
    if len(values) != schema.n_features:
        raise ManifestError(
            f"a golden vector has {len(values)} inputs, the schema {schema.n_features}"
        )
    outputs = raw["probabilities"]
    if len(outputs) != schema.n_outputs:
        what = "value" if schema.task == "regression" else "class probabilities"
        raise ManifestError(
            f"a golden vector has {len(outputs)} outputs; a {schema.task} model with this "
            f"schema outputs {schema.n_outputs} ({what})"
        )
    return GoldenVector(
        record=dict(raw["record"]),
        input=tuple(None if v is None else float(v) for v in values),
        probabilities=tuple(float(p) for p in outputs),
        note=str(raw.get("note", "")),
    )
