"""Arrow columns to the model contract's float32 matrix, a whole chunk at a time, with the
reason each refused row is refused.

The policy is the device's (``edge/encoding.py``: one record at a time), applied to columns:
a missing value is an error unless the feature allows it; text in a number field, an
infinity or a number beyond float32 is an error; a number outside the allowed range is
refused, clipped or accepted as the feature says; an unknown category is "unknown", never an
error. Categorical values that are not text (a Parquet integer column, a CSV code read as a
number) are read as text the way training reads them (``central/data/loader.py``: 2.0 is
"2"). ``tests/central/test_batch.py`` holds the two encoders to the same values and the same
refusals on the same records.

A row's reason is its first problem in schema order, worded as the device words it
(``field 'tenure_months': expected a number, got text 'ten'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from edgefleet.edge.encoding import FLOAT32_MAX
from edgefleet.edge.schema import UNKNOWN_CODE, CategoricalFeature, FeatureSchema, NumericFeature
from edgefleet.errors import DataError, RecordError

Reasons = npt.NDArray[np.object_]  # None where the row is fine, else the reason


@dataclass(frozen=True)
class EncodedChunk:
    inputs: npt.NDArray[np.float32]  # [N, F], rows with a reason hold garbage
    reasons: Reasons

    @property
    def ok(self) -> npt.NDArray[np.bool_]:
        return unset(self.reasons)


def unset(reasons: Reasons) -> npt.NDArray[np.bool_]:
    """Where ``reasons`` holds None (a row without a problem)."""
    return np.asarray(np.equal(reasons, None))  # type: ignore[call-overload]


def required_columns(schema: FeatureSchema, available: list[str]) -> list[str]:
    """The features an input must have: every one, except those that allow missing values
    (absent, they are missing in every row). Raises :class:`DataError` naming the absent."""
    absent = [f.name for f in schema.features if f.name not in available and not f.allow_missing]
    if absent:
        raise DataError(
            f"the input lacks the column(s) {', '.join(map(repr, absent))} that the model "
            f"needs; it has: {', '.join(available[:30])}"
        )
    return [f.name for f in schema.features if f.name in available]


def encode_batch(batch: pa.RecordBatch | pa.Table, schema: FeatureSchema) -> EncodedChunk:
    rows = batch.num_rows
    inputs = np.empty((rows, schema.n_features), dtype=np.float32)
    reasons: Reasons = np.full(rows, None, dtype=object)
    names = batch.schema.names
    for position, feature in enumerate(schema.features):
        column = (
            batch.column(names.index(feature.name))
            if feature.name in names
            else pa.nulls(rows, pa.float64())
        )
        if isinstance(feature, NumericFeature):
            values = _numeric(feature, column, reasons)
            with np.errstate(over="ignore"):  # only refused rows overflow float32
                inputs[:, position] = values
        else:
            inputs[:, position] = _categorical(feature, column, reasons)
    return EncodedChunk(inputs, reasons)


def _refuse(reasons: Reasons, where: npt.NDArray[np.bool_], field: str, message: Any) -> None:
    """Give each row of ``where`` that has no reason yet this one (``message`` may be a
    function of the row index)."""
    for row in np.flatnonzero(where & unset(reasons)):
        text = message(int(row)) if callable(message) else message
        reasons[row] = str(RecordError(text, field=field))


def _numeric(
    feature: NumericFeature, column: pa.Array | pa.ChunkedArray, reasons: Reasons
) -> npt.NDArray[np.float64]:
    values, text = _as_float(column)
    name = feature.name
    if text is not None:
        bad = text[0]
        _refuse(reasons, bad, name, lambda row: f"expected a number, got text {text[1][row]!r}")
    missing = np.isnan(values)
    if not feature.allow_missing:
        _refuse(reasons, missing, name, "value is missing and this feature requires one")
    _refuse(reasons, np.isinf(values), name, "value is infinite")
    low = -FLOAT32_MAX if feature.minimum is None else feature.minimum
    high = FLOAT32_MAX if feature.maximum is None else feature.maximum
    with np.errstate(invalid="ignore"):
        outside = ~missing & ~np.isinf(values) & ((values < low) | (values > high))
    if feature.out_of_range == "clip":
        values = np.where(outside, np.clip(values, low, high), values)
    elif feature.out_of_range == "accept":
        outside &= np.abs(values) > FLOAT32_MAX
    if feature.out_of_range != "clip":
        _refuse(
            reasons,
            outside,
            name,
            lambda row: (
                f"value {float(values[row])!r} is outside the allowed range [{low}, {high}]"
            ),
        )
    return values


def _as_float(
    column: pa.Array | pa.ChunkedArray,
) -> tuple[npt.NDArray[np.float64], tuple[npt.NDArray[np.bool_], npt.NDArray[Any]] | None]:
    """Float64 values (NaN where missing) and, for a text column, which rows hold text that
    is not a number (with the texts)."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = pc.cast(column, kind.value_type)
        kind = column.type
    if pa.types.is_boolean(kind):
        column = pc.cast(column, pa.int8())
        kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind):
        return np.array(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)), None
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"a numeric feature's column has type {kind}; expected numbers or text")
    stripped = pc.utf8_trim_whitespace(column)
    blank = pc.fill_null(pc.equal(stripped, ""), True)
    # Blank is missing; a parse failure is found per value only when the fast cast fails.
    text = pc.if_else(blank, pa.scalar(None, pa.string()), stripped)
    try:
        return np.array(pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)), None
    except pa.ArrowInvalid:
        pass
    raw = np.array(text.to_numpy(zero_copy_only=False), dtype=object)
    values = np.full(len(raw), np.nan)
    bad = np.zeros(len(raw), dtype=bool)
    for row, value in enumerate(raw):
        if value is None:
            continue
        try:
            values[row] = float(value)
        except ValueError:
            bad[row] = True
    return values, (bad, raw)


def _categorical(
    feature: CategoricalFeature, column: pa.Array | pa.ChunkedArray, reasons: Reasons
) -> npt.NDArray[np.float64]:
    vocabulary = pa.array(feature.vocabulary, pa.string())
    parts = [_category_codes(chunk, vocabulary) for chunk in _chunks(column)]
    codes = np.concatenate([p[0] for p in parts]) if parts else np.empty(0)
    missing = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, dtype=bool)
    if not feature.allow_missing:
        _refuse(reasons, missing, feature.name, "value is missing and this feature requires one")
    return codes


def _chunks(column: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return list(column.chunks) if isinstance(column, pa.ChunkedArray) else [column]


def _category_codes(
    values: pa.Array, vocabulary: pa.Array
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Codes (-1 unknown or missing) and where the value is missing. A dictionary column
    (Parquet's categoricals, read as such) is looked up once per distinct value."""
    if pa.types.is_dictionary(values.type):
        codes, missing = _category_codes(values.dictionary, vocabulary)
        indices = values.indices
        absent = np.asarray(pc.is_null(indices).to_numpy(zero_copy_only=False), dtype=bool)
        positions = np.asarray(pc.fill_null(indices, 0).to_numpy(zero_copy_only=False))
        if not len(codes):
            return np.full(len(values), UNKNOWN_CODE), absent
        return np.where(absent, UNKNOWN_CODE, codes[positions]), absent | missing[positions]
    text = as_text(values)
    missing = np.asarray(pc.is_null(text).to_numpy(zero_copy_only=False), dtype=bool)
    codes = pc.fill_null(pc.cast(pc.index_in(text, value_set=vocabulary), pa.float64()), -1.0)
    return np.array(codes.to_numpy(zero_copy_only=False)), missing


def as_text(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Text with blanks as missing; numbers as training reads them (whole floats as
    integers: a code column with a blank reads as 0.0/1.0), booleans as True/False."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = pc.cast(column, kind.value_type)
        kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
    if pa.types.is_floating(kind):
        column = pc.if_else(pc.is_nan(column), pa.scalar(None, kind), column)
        whole = pc.fill_null(pc.equal(pc.floor(column), column), False)
        as_int = pc.cast(pc.if_else(whole, column, 0.0), pa.int64(), safe=False)
        return pc.if_else(whole, pc.cast(as_int, pa.string()), pc.cast(column, pa.string()))
    if pa.types.is_boolean(kind):
        return pc.if_else(column, "True", "False")
    return pc.cast(column, pa.string())
