"""Records to the model contract's float32 matrix, with validation that names the record
and field of every problem.

Per-record encoding is on the scoring hot path (one dict should cost no more than the
model itself), so each feature gets a small precompiled encoder function and the common
case (an int or float in range; a known category) takes one type check and one compare.

Policy, per field:
- a missing field, or None/NaN, is an error unless the schema allows missing values
  (numeric: NaN, imputed by the graph; categorical: scored as an unknown category);
- numeric fields take int, float and numpy numbers (bool as 0/1); text is an error;
  infinities, and numbers too large for float32, are an error (they would reach the model
  as infinities);
- a numeric value outside the allowed range follows the feature's ``out_of_range`` policy:
  ``error`` (default), ``clip`` to the bound, or ``accept``;
- categorical fields take text; a value outside the vocabulary is encoded as
  :data:`UNKNOWN_CODE`, never an error;
- fields the schema does not know are ignored (records often carry ids and timestamps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.edge.schema import UNKNOWN_CODE, CategoricalFeature, FeatureSchema, NumericFeature
from edgefleet.errors import RecordError

Encoder = Callable[[Any, int], float]
FLOAT32_MAX = float(np.finfo(np.float32).max)
_ABSENT = object()


def _numeric_encoder(feature: NumericFeature) -> Encoder:
    name = feature.name
    # Unbounded still means "fits the model's float32 input": +-inf fail the range test.
    low = -FLOAT32_MAX if feature.minimum is None else feature.minimum
    high = FLOAT32_MAX if feature.maximum is None else feature.maximum
    allow_missing = feature.allow_missing
    policy = feature.out_of_range

    def missing(index: int) -> float:
        if allow_missing:
            return math.nan
        raise RecordError(
            "value is missing and this feature requires one", record=index, field=name
        )

    def out_of_range(value: float, index: int) -> float:
        if policy == "clip":
            return min(max(value, low), high)
        if policy == "accept" and abs(value) <= FLOAT32_MAX:
            return value
        raise RecordError(
            f"value {value!r} is outside the allowed range [{low}, {high}]",
            record=index,
            field=name,
        )

    def encode(value: Any, index: int) -> float:
        kind = type(value)
        if kind is float or kind is int:
            number = float(value)
        elif value is None or value is _ABSENT:
            return missing(index)
        elif isinstance(value, str | bytes):
            raise RecordError(f"expected a number, got text {value!r}", record=index, field=name)
        elif isinstance(value, Real):  # numpy scalars, bool, Fraction
            number = float(value)
        else:
            raise RecordError(f"expected a number, got {kind.__name__}", record=index, field=name)
        if low <= number <= high:
            return number
        if number != number:
            return missing(index)
        if math.isinf(number):
            raise RecordError("value is infinite", record=index, field=name)
        return out_of_range(number, index)

    return encode


def _categorical_encoder(feature: CategoricalFeature) -> Encoder:
    name = feature.name
    codes = {value: float(code) for code, value in enumerate(feature.vocabulary)}
    allow_missing = feature.allow_missing

    def encode(value: Any, index: int) -> float:
        if type(value) is str:
            return codes.get(value, UNKNOWN_CODE)
        if value is None or value is _ABSENT or (type(value) is float and value != value):
            if allow_missing:
                return UNKNOWN_CODE
            raise RecordError(
                "value is missing and this feature requires one", record=index, field=name
            )
        raise RecordError(
            f"expected text (one of {len(codes)} categories), got {type(value).__name__} {value!r}",
            record=index,
            field=name,
        )

    return encode


class RecordEncoder:
    """Encodes dict records (or checks pre-encoded arrays) for one feature schema."""

    def __init__(self, schema: FeatureSchema):
        self.schema = schema
        self._fields: list[tuple[str, Encoder]] = [
            (
                f.name,
                _numeric_encoder(f) if isinstance(f, NumericFeature) else _categorical_encoder(f),
            )
            for f in schema.features
        ]
        self._categorical = np.array(schema.categorical_indices(), dtype=np.int64)
        self._vocabulary_sizes = np.array(
            [len(f.vocabulary) for f in schema.features if isinstance(f, CategoricalFeature)],
            dtype=np.float32,
        )

    def encode_row(self, record: Mapping[str, Any], index: int = 0) -> list[float]:
        if not isinstance(record, Mapping):
            raise RecordError(
                f"expected a mapping of field names to values, got {type(record).__name__}",
                record=index,
            )
        get = record.get
        return [encode(get(name, _ABSENT), index) for name, encode in self._fields]

    def encode(
        self, records: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> npt.NDArray[np.float32]:
        """One record or a sequence of records -> float32 ``[N, F]``."""
        if isinstance(records, Mapping):
            return np.array([self.encode_row(records)], dtype=np.float32)
        return np.array(
            [self.encode_row(r, i) for i, r in enumerate(records)], dtype=np.float32
        ).reshape(len(records), len(self._fields))

    def check_array(self, array: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Validate an already-encoded ``[N, F]`` array (schema order, category codes)."""
        matrix = np.asarray(array, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
        if matrix.ndim != 2 or matrix.shape[1] != len(self._fields):
            raise RecordError(
                f"expected an array of shape [N, {len(self._fields)}] in schema order, got "
                f"shape {list(np.shape(array))}"
            )
        if self._categorical.size:
            codes = matrix[:, self._categorical]
            bad = ~(
                (codes == UNKNOWN_CODE)
                | ((codes >= 0) & (codes < self._vocabulary_sizes) & (codes == np.floor(codes)))
            )
            if bad.any():
                row, column = (int(i) for i in np.argwhere(bad)[0])
                feature = self.schema.features[int(self._categorical[column])]
                highest = int(self._vocabulary_sizes[column]) - 1
                raise RecordError(
                    f"{float(codes[row, column])!r} is not a category code (0..{highest} or -1)",
                    record=row,
                    field=feature.name,
                )
        return matrix
