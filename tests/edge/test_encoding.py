"""The record encoder: the per-field policy, and agreement with the central side's
vectorised encoder that produced the training data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features
from edgefleet.edge.encoding import RecordEncoder
from edgefleet.edge.schema import (
    UNKNOWN_CODE,
    CategoricalFeature,
    FeatureSchema,
    NumericFeature,
)
from edgefleet.errors import RecordError

SCHEMA = FeatureSchema(
    features=(
        NumericFeature("tenure", minimum=0, maximum=100),
        NumericFeature("charges", minimum=0, maximum=500, allow_missing=True),
        NumericFeature("calls", minimum=0, maximum=10, out_of_range="clip"),
        NumericFeature("usage", minimum=0, maximum=10, out_of_range="accept"),
        CategoricalFeature("contract", ("monthly", "yearly")),
        CategoricalFeature("region", ("north", "south"), allow_missing=True),
    ),
    target="churn",
    classes=("No", "Yes"),
)
GOOD = {
    "tenure": 5,
    "charges": 70.5,
    "calls": 1,
    "usage": 2.0,
    "contract": "yearly",
    "region": "south",
}


def encode(**changes: object) -> list[float]:
    return RecordEncoder(SCHEMA).encode_row({**GOOD, **changes})


def test_good_record() -> None:
    assert encode() == [5.0, 70.5, 1.0, 2.0, 1.0, 1.0]


def test_unknown_category_is_encoded_never_an_error() -> None:
    assert encode(contract="weekly")[4] == UNKNOWN_CODE


def test_missing_allowed_numeric_is_nan_and_categorical_unknown() -> None:
    row = encode(charges=None, region=None)
    assert math.isnan(row[1])
    assert row[5] == UNKNOWN_CODE


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tenure": None}, "field 'tenure': value is missing"),
        ({"tenure": "ten"}, "field 'tenure': expected a number, got text 'ten'"),
        ({"tenure": [1]}, "field 'tenure': expected a number, got list"),
        ({"tenure": 101}, r"field 'tenure': value 101.0 is outside the allowed range"),
        ({"tenure": math.inf}, "field 'tenure': value is infinite"),
        ({"tenure": math.nan}, "field 'tenure': value is missing"),
        ({"usage": 1e300}, r"field 'usage': value 1e\+300 is outside the allowed range"),
        ({"contract": 3}, "field 'contract': expected text"),
        ({"contract": None}, "field 'contract': value is missing"),
    ],
)
def test_bad_values_name_record_and_field(changes: dict[str, object], message: str) -> None:
    records = [GOOD, {**GOOD, **changes}]
    with pytest.raises(RecordError, match=f"record 1, {message}"):
        RecordEncoder(SCHEMA).encode(records)


def test_missing_field_is_named() -> None:
    record = dict(GOOD)
    del record["contract"]
    with pytest.raises(RecordError, match="record 0, field 'contract': value is missing"):
        RecordEncoder(SCHEMA).encode([record])


def test_unbounded_feature_refuses_what_float32_cannot_hold() -> None:
    schema = FeatureSchema((NumericFeature("free"),), target="y", classes=("0", "1"))
    encoder = RecordEncoder(schema)
    assert encoder.encode_row({"free": -3.0e38}) == [-3.0e38]
    with pytest.raises(RecordError, match="value is infinite"):
        encoder.encode_row({"free": math.inf})
    with pytest.raises(RecordError, match="outside the allowed range"):
        encoder.encode_row({"free": 1e39})


def test_out_of_range_policies() -> None:
    assert encode(calls=25)[2] == 10.0
    assert encode(usage=25)[3] == 25.0


def test_numpy_scalars_and_bools_are_numbers() -> None:
    assert encode(tenure=np.int64(7), usage=True)[:4] == [7.0, 70.5, 1.0, 1.0]


def test_extra_fields_are_ignored() -> None:
    assert encode(customer_id="c-17") == encode()


def test_check_array_refuses_bad_shapes_and_codes() -> None:
    encoder = RecordEncoder(SCHEMA)
    good = np.array([encode()], dtype=np.float32)
    assert encoder.check_array(good).shape == (1, 6)
    with pytest.raises(RecordError, match=r"shape \[N, 6\]"):
        encoder.check_array(np.zeros((2, 5), dtype=np.float32))
    bad = good.copy()
    bad[0, 4] = 7
    with pytest.raises(
        RecordError, match=r"record 0, field 'contract': 7\.0 is not a category code"
    ):
        encoder.check_array(bad)


def test_agrees_with_central_vectorised_encoder_on_generated_data() -> None:
    data = generate(500, seed=11, scenario="new_segment")
    features = data.frame.drop(columns=["churn"])
    expected = encode_features(features, data.schema)
    records = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in features.to_dict("records")
    ]
    got = RecordEncoder(data.schema).encode(records)
    assert np.array_equal(got, expected, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(
    tenure=st.floats(0, 100, allow_nan=False),
    charges=st.one_of(st.none(), st.floats(0, 500, allow_nan=False)),
    contract=st.sampled_from(["monthly", "yearly", "weekly", ""]),
    region=st.one_of(st.none(), st.sampled_from(["north", "south", "east"])),
)
def test_property_matches_vectorised_encoder(
    tenure: float, charges: float | None, contract: str, region: str | None
) -> None:
    record = {**GOOD, "tenure": tenure, "charges": charges, "contract": contract, "region": region}
    frame = pd.DataFrame([record], columns=list(SCHEMA.names))
    for name in ("tenure", "charges", "calls", "usage"):
        frame[name] = pd.to_numeric(frame[name]).astype(np.float64)
    expected = encode_features(frame, SCHEMA)
    assert np.array_equal(RecordEncoder(SCHEMA).encode(record), expected, equal_nan=True)
