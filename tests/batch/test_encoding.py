"""The batch encoder (whole Arrow columns) and the device's encoder (one record at a time)
give the same values and refuse the same records for the same reasons."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from edgefleet.central.batch.encoding import encode_batch, required_columns
from edgefleet.edge.encoding import RecordEncoder
from edgefleet.edge.schema import CategoricalFeature, FeatureSchema, NumericFeature
from edgefleet.errors import DataError, RecordError

SCHEMA = FeatureSchema(
    features=(
        NumericFeature("a", minimum=0, maximum=10),
        NumericFeature("b", minimum=0, maximum=10, allow_missing=True, out_of_range="clip"),
        NumericFeature("c", maximum=5, out_of_range="accept"),
        CategoricalFeature("d", ("x", "y")),
        CategoricalFeature("e", ("p", "q"), allow_missing=True),
    ),
    target="t",
    classes=("n", "y"),
)

RECORDS: list[dict[str, Any]] = [
    {"a": 1.0, "b": 2.0, "c": 3.0, "d": "x", "e": "p"},
    {"a": 10.0, "b": None, "c": 7.5, "d": "y", "e": None},  # missing allowed; accepted
    {"a": 0.0, "b": 12.0, "c": -1e30, "d": "zz", "e": "q"},  # clipped; unknown category
    {"a": "ten", "b": 1.0, "c": 1.0, "d": "x", "e": "p"},  # text in a number field
    {"a": None, "b": 1.0, "c": 1.0, "d": "x", "e": "p"},  # missing, not allowed
    {"a": 11.0, "b": 1.0, "c": 1.0, "d": "x", "e": "p"},  # out of range: refused
    {"a": 1.0, "b": 1.0, "c": 1e39, "d": "x", "e": "p"},  # beyond float32: refused
    {"a": 1.0, "b": 1.0, "c": math.inf, "d": "x", "e": "p"},  # infinite
    {"a": 1.0, "b": 1.0, "c": 1.0, "d": None, "e": "p"},  # categorical missing, not allowed
    {"a": "2.5", "b": -3.0, "c": 5.0, "d": "y", "e": "nope"},  # number as text (CSV)
    {"a": "ten", "b": 1.0, "c": 1.0, "d": None, "e": "p"},  # two problems: the first wins
]


def _device(record: dict[str, Any], index: int) -> tuple[list[float] | None, str | None]:
    device_record = dict(record)
    text = device_record["a"]
    if isinstance(text, str) and text.replace(".", "", 1).isdigit():
        device_record["a"] = float(text)  # as `edgefleet score` reads a CSV cell
    try:
        return RecordEncoder(SCHEMA).encode_row(device_record, index), None
    except RecordError as error:
        return None, str(error).replace(f"record {index}, ", "")


def _text_table() -> pa.Table:
    """Every column as text, as a CSV input arrives."""

    def text(value: Any) -> str | None:
        return None if value is None else value if isinstance(value, str) else repr(value)

    return pa.table(
        {name: pa.array([text(r[name]) for r in RECORDS], pa.string()) for name in SCHEMA.names}
    )


def test_batch_and_device_encoders_agree_record_by_record() -> None:
    encoded = encode_batch(_text_table(), SCHEMA)
    for index, record in enumerate(RECORDS):
        values, reason = _device(record, index)
        assert encoded.reasons[index] == reason, record
        if values is not None:
            np.testing.assert_array_equal(encoded.inputs[index], np.float32(values))
    assert encoded.ok.sum() == 4


def test_typed_columns_read_as_training_reads_them() -> None:
    table = pa.table(
        {
            "a": pa.array([1, 2], pa.int64()),
            "b": pa.array([None, 3.5], pa.float64()),
            "c": pa.array([True, False]),
            "d": pa.array(["x", "zz"]).dictionary_encode(),  # as Parquet's categoricals
            "e": pa.array([1.0, float("nan")]),  # codes read as numbers: "1", then missing
        }
    )
    encoded = encode_batch(table, SCHEMA)
    assert list(encoded.reasons) == [None, None]
    np.testing.assert_array_equal(
        encoded.inputs, np.array([[1, np.nan, 1, 0, -1], [2, 3.5, 0, -1, -1]], dtype=np.float32)
    )


def test_absent_columns_are_missing_values_or_an_error() -> None:
    assert required_columns(SCHEMA, ["a", "c", "d"]) == ["a", "c", "d"]
    with pytest.raises(DataError, match="lacks the column"):
        required_columns(SCHEMA, ["a", "b"])
    encoded = encode_batch(_text_table().drop_columns(["b", "e"]), SCHEMA)
    assert np.isnan(encoded.inputs[0, 1])
    assert encoded.inputs[0, 4] == -1


def test_dictionary_columns_with_missing_values() -> None:
    table = _text_table()
    encoded = encode_batch(table, SCHEMA)
    dictionary = table.set_column(3, "d", table.column("d").dictionary_encode())
    again = encode_batch(dictionary, SCHEMA)
    assert list(again.reasons) == list(encoded.reasons)
    np.testing.assert_array_equal(again.inputs[again.ok], encoded.inputs[encoded.ok])
