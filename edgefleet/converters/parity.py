"""The parity gate: an artifact must reproduce scikit-learn's outputs (docs/architecture.md
§2: class probabilities ``[N, K]``, or a regressor's value ``[N, 1]``).

Probabilities must agree within an absolute tolerance. A regressor's value is in the
target's units, where float32 arithmetic alone is off by a few parts in 10^7 per operation,
so it must agree within ``tolerance + REGRESSION_RTOL * |expected|``
(``manifest.within_tolerance``, the device self-test's rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.edge.manifest import REGRESSION_RTOL
from edgefleet.errors import ParityError


@dataclass(frozen=True)
class ParityResult:
    format: str
    max_abs_diff: float
    worst_row: int
    rows: int
    # The largest difference beyond the relative allowance (regression), which the absolute
    # tolerance bounds; for probabilities it is max_abs_diff.
    max_excess: float = 0.0
    task: str = "binary"

    def __post_init__(self) -> None:
        if self.task != "regression":
            object.__setattr__(self, "max_excess", self.max_abs_diff)


def expected_outputs(pipeline: Any, inputs: Any) -> npt.NDArray[np.float64]:
    """scikit-learn's outputs in the contract's shape: ``predict_proba`` of a classifier,
    ``predict`` as one column for a regressor."""
    if hasattr(pipeline, "predict_proba"):
        return np.asarray(pipeline.predict_proba(inputs), dtype=np.float64)
    return np.asarray(pipeline.predict(inputs), dtype=np.float64).reshape(len(inputs), -1)


def measure_parity(
    fmt: str, got: npt.NDArray[Any], expected: npt.NDArray[Any], task: str = "binary"
) -> ParityResult:
    got64 = np.asarray(got, dtype=np.float64)
    expected64 = np.asarray(expected, dtype=np.float64)
    if got64.shape != expected64.shape:
        raise ParityError(
            f"{fmt}: the artifact returns shape {list(got64.shape)}, "
            f"scikit-learn {list(expected64.shape)}"
        )
    difference = np.abs(got64 - expected64)
    if not np.isfinite(difference).all():
        row = int(np.flatnonzero(~np.isfinite(difference).all(axis=1))[0])
        raise ParityError(f"{fmt}: the artifact returns a non-finite output for row {row}")
    rtol = REGRESSION_RTOL if task == "regression" else 0.0
    excess = (difference - rtol * np.abs(expected64)).max(axis=1, initial=0.0)
    worst = int(excess.argmax()) if excess.size else 0
    return ParityResult(
        fmt,
        float(difference.max(initial=0.0)),
        worst,
        len(difference),
        float(excess.max(initial=0.0)),
        task,
    )


def require_parity(result: ParityResult, tolerance: float, what: str) -> None:
    if result.max_excess > tolerance:
        relative = f" + {REGRESSION_RTOL:g} x |value|" if result.task == "regression" else ""
        raise ParityError(
            f"the {result.format} artifact of {what} differs from scikit-learn by "
            f"{result.max_abs_diff:.3g} (row {result.worst_row} of {result.rows}); the "
            f"tolerance is {tolerance:g}{relative}. No bundle was written."
        )
