"""The parity gate: an artifact must reproduce scikit-learn's probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.errors import ParityError


@dataclass(frozen=True)
class ParityResult:
    format: str
    max_abs_diff: float
    worst_row: int
    rows: int


def measure_parity(fmt: str, got: npt.NDArray[Any], expected: npt.NDArray[Any]) -> ParityResult:
    got64 = np.asarray(got, dtype=np.float64)
    expected64 = np.asarray(expected, dtype=np.float64)
    if got64.shape != expected64.shape:
        raise ParityError(
            f"{fmt}: the artifact returns shape {list(got64.shape)}, "
            f"scikit-learn {list(expected64.shape)}"
        )
    difference = np.abs(got64 - expected64).max(axis=1)
    if not np.isfinite(difference).all():
        row = int(np.flatnonzero(~np.isfinite(difference))[0])
        raise ParityError(f"{fmt}: the artifact returns a non-finite probability for row {row}")
    worst = int(difference.argmax()) if difference.size else 0
    return ParityResult(fmt, float(difference.max(initial=0.0)), worst, len(difference))


def require_parity(result: ParityResult, tolerance: float, what: str) -> None:
    if result.max_abs_diff > tolerance:
        raise ParityError(
            f"the {result.format} artifact of {what} differs from scikit-learn by "
            f"{result.max_abs_diff:.3g} (row {result.worst_row} of {result.rows}); the "
            f"tolerance is {tolerance:g}. No bundle was written."
        )
