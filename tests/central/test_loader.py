"""Loading users' tables: formats, schema inference, every bad-file case, encoding, hashing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.central.data.generator import GeneratedData, generate
from edgefleet.central.data.loader import (
    data_sha256,
    encode_features,
    load_training_table,
    read_table,
    write_table,
)
from edgefleet.edge.schema import (
    UNKNOWN_CODE,
    CategoricalFeature,
    FeatureSchema,
    NumericFeature,
)
from edgefleet.errors import DataError


@pytest.fixture(scope="module")
def data() -> GeneratedData:
    return generate(400, seed=21)


def small_frame(rows: int = 60, positives: int = 20) -> pd.DataFrame:
    """A valid little table: one numeric and one text feature, target 'churn'."""
    return pd.DataFrame(
        {
            "tenure": np.arange(rows, dtype=np.int64),
            "plan": ["basic", "premium", "standard"] * (rows // 3) + ["basic"] * (rows % 3),
            "churn": ["Yes"] * positives + ["No"] * (rows - positives),
        }
    )


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_then_read_round_trips(tmp_path: Path, data: GeneratedData, suffix: str) -> None:
    path = tmp_path / "sub" / f"churn{suffix}"
    write_table(data.frame, path)
    back = read_table(path)
    pd.testing.assert_frame_equal(back, data.frame, check_dtype=False)
    assert data_sha256(back) == data_sha256(data.frame)


def test_csv_and_parquet_load_to_the_same_training_table(
    tmp_path: Path, data: GeneratedData
) -> None:
    write_table(data.frame, tmp_path / "churn.csv")
    write_table(data.frame, tmp_path / "churn.parquet")
    from_csv = load_training_table(tmp_path / "churn.csv", "churn", schema=data.schema)
    from_parquet = load_training_table(tmp_path / "churn.parquet", "churn", schema=data.schema)
    pd.testing.assert_frame_equal(from_csv.features, from_parquet.features)
    np.testing.assert_array_equal(from_csv.labels, from_parquet.labels)


def test_training_table_has_the_promised_types(data: GeneratedData) -> None:
    table = load_training_table(data.frame, "churn", schema=data.schema)
    assert list(table.features.columns) == list(data.schema.names)
    assert table.labels.dtype == np.int8
    assert set(np.unique(table.labels)) == {0, 1}
    np.testing.assert_array_equal(table.labels, (data.frame["churn"] == "Yes").to_numpy())
    for feature in data.schema.features:
        column = table.features[feature.name]
        if isinstance(feature, NumericFeature):
            assert column.dtype == np.float64
        else:
            assert column.dtype == object
            assert all(type(v) is str for v in column)
    assert table.features["total_charges"].isna().any()


@pytest.mark.parametrize("suffix", [".xlsx", ".json", ""])
def test_unsupported_suffix(tmp_path: Path, suffix: str) -> None:
    with pytest.raises(DataError, match=r"unsupported file type.*\.csv, \.parquet"):
        read_table(tmp_path / f"data{suffix}")
    with pytest.raises(DataError, match="unsupported file type"):
        write_table(small_frame(), tmp_path / f"data{suffix}")


# -------------------------------------------------------------------- inference


def test_inferred_schema() -> None:
    frame = pd.DataFrame(
        {
            "age": np.linspace(18, 80, 100),
            "senior": np.tile([0, 1], 50),
            "income": [np.nan] + [1000.0] * 99,
            "plan": ["b", "a", None, "c"] * 25,
            "paperless": np.tile([True, False], 50),
            "label": ["stay"] * 70 + ["leave"] * 30,
        }
    )
    table = load_training_table(frame, "label", positive_class="leave")
    schema = table.schema
    assert schema.names == ("age", "senior", "income", "plan", "paperless")
    assert schema.feature("age") == NumericFeature("age")
    assert schema.feature("senior") == NumericFeature("senior")
    assert schema.feature("income") == NumericFeature("income", allow_missing=True)
    assert schema.feature("plan") == CategoricalFeature("plan", ("a", "b", "c"), True)
    assert schema.feature("paperless") == CategoricalFeature("paperless", ("False", "True"))
    assert schema.classes == ("stay", "leave")
    assert int(table.labels.sum()) == 30
    assert table.features["plan"].iloc[2] is None


def test_telco_style_blank_totals_are_numeric_with_missing(tmp_path: Path) -> None:
    frame = small_frame()
    frame["total"] = [" "] + [f"{v:.2f}" for v in range(1, len(frame))]
    path = write_csv(tmp_path / "telco.csv", frame)
    table = load_training_table(path, "churn")
    assert table.schema.feature("total") == NumericFeature("total", allow_missing=True)
    assert np.isnan(table.features["total"].iloc[0])
    assert table.features["total"].iloc[5] == 5.0


@pytest.mark.parametrize(
    ("values", "positive", "classes"),
    [
        (["No", "Yes"], None, ("No", "Yes")),
        ([0, 1], None, ("0", "1")),
        ([True, False], None, ("False", "True")),
        (["yes", "no"], None, ("no", "yes")),
        (["churned", "stayed"], None, ("churned", "stayed")),
        (["churned", "stayed"], "churned", ("stayed", "churned")),
    ],
)
def test_positive_class(
    values: list[object], positive: str | None, classes: tuple[str, str]
) -> None:
    frame = small_frame()
    frame["churn"] = pd.Series([values[0]] * 20 + [values[1]] * 40, dtype=object)
    table = load_training_table(frame, "churn", positive_class=positive)
    assert table.schema.classes == classes
    expected = [str(v) == classes[1] for v in frame["churn"]]
    np.testing.assert_array_equal(table.labels, expected)


def test_unknown_positive_class() -> None:
    with pytest.raises(DataError, match="positive class 'churned' is not a value"):
        load_training_table(small_frame(), "churn", positive_class="churned")


# ----------------------------------------------------------------- bad files


def schema_for_small() -> FeatureSchema:
    return FeatureSchema(
        features=(
            NumericFeature("tenure", 0.0, 1000.0),
            CategoricalFeature("plan", ("basic", "premium", "standard")),
        ),
        target="churn",
        classes=("No", "Yes"),
    )


def _write_text(text: str) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        path.write_text(text)
        return path

    return write


def _with(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        return write_csv(path, change(small_frame()))

    return write


def _set(frame: pd.DataFrame, column: str, row: int, value: Any) -> pd.DataFrame:
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    return frame


BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty file": (_write_text(""), "the file is empty"),
    "blank lines only": (_write_text("\n\n"), "no header line and no data"),
    "header only": (_write_text("tenure,plan,churn\n"), "columns but no rows"),
    "no header": (
        _write_text("".join(f"{i},basic,{'Yes' if i % 3 else 'No'}\n" for i in range(60))),
        "first line looks like data, not a header",
    ),
    "target missing": (
        _with(lambda f: f.rename(columns={"churn": "left"})),
        "no target column 'churn'; the columns are tenure, plan, left",
    ),
    "one class": (_with(lambda f: f.assign(churn="No")), "only one class"),
    "three classes": (
        _with(lambda f: _set(f, "churn", 5, "Maybe")),
        "has 3 values.*edgefleet train fits binary classifiers.*edgefleet register "
        "MODEL.joblib --reference DATA --target churn",
    ),
    "missing target": (
        _with(lambda f: _set(_set(f, "churn", 3, None), "churn", 7, None)),
        "target 'churn' is missing in 2 of 60 rows \\(first at row 4\\)",
    ),
    "all values missing": (
        _with(lambda f: f.assign(plan=None)),
        "column 'plan' has no values \\(all 60 rows are missing\\)",
    ),
    "duplicate columns": (
        _write_text(small_frame().to_csv(index=False).replace("plan", "tenure", 1)),
        "duplicate column names: 'tenure'",
    ),
    "too few rows": (_with(lambda f: f.head(30)), "only 30 rows; training needs at least 50"),
    "too few positives": (
        _with(lambda f: f.assign(churn=["Yes"] * 4 + ["No"] * 56)),
        "only 4 rows of class 'Yes' \\(of 60\\); training needs at least 10 of each",
    ),
    "unnamed index column": (
        lambda path: (small_frame().to_csv(path), path)[1],
        "a column has no name in the header",
    ),
    "not utf-8": (
        lambda path: (path.write_bytes(b"tenure,plan,churn\n1,\xff\xfe,No\n"), path)[1],
        "not a readable CSV file",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_a_data_error(tmp_path: Path, case: str) -> None:
    make, message = BAD_FILES[case]
    path = make(tmp_path / "bad.csv")
    with pytest.raises(DataError, match=message):
        load_training_table(path, "churn")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_training_table(tmp_path / "absent.csv", "churn")


def test_text_in_a_numeric_column_names_column_row_and_value(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.csv", _set(small_frame(), "tenure", 41, "forty"))
    pattern = "column 'tenure', row 42: the value 'forty' is text in a numeric column"
    with pytest.raises(DataError, match=pattern):
        load_training_table(path, "churn", schema=schema_for_small())


def test_schema_feature_missing_from_the_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.csv", small_frame().drop(columns=["plan"]))
    with pytest.raises(DataError, match="feature\\(s\\) 'plan' are not in the table"):
        load_training_table(path, "churn", schema=schema_for_small())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: _set(f, "tenure", 9, 5000), "row 10: the value 5000 is outside the allowed"),
        (lambda f: _set(f, "tenure", 2, None), "'tenure' has 1 missing value.*first at row 3"),
        (lambda f: _set(f, "plan", 2, None), "'plan' has 1 missing value.*first at row 3"),
        (lambda f: _set(f, "tenure", 2, "inf"), "row 3: the value 'inf' is not a finite"),
        (lambda f: f.assign(churn=["Y"] * 20 + ["N"] * 40), "the schema's classes are"),
    ],
)
def test_values_that_break_a_given_schema(
    change: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        load_training_table(change(small_frame()), "churn", schema=schema_for_small())


def test_clip_policy_clips_at_load() -> None:
    schema = FeatureSchema(
        features=(NumericFeature("tenure", 0.0, 10.0, out_of_range="clip"),),
        target="churn",
        classes=("No", "Yes"),
    )
    table = load_training_table(small_frame(), "churn", schema=schema)
    assert table.features["tenure"].max() == 10.0


def test_duplicate_columns_in_a_frame() -> None:
    frame = small_frame()
    frame.columns = pd.Index(["tenure", "tenure", "churn"])
    with pytest.raises(DataError, match="duplicate column names"):
        load_training_table(frame, "churn")


# --------------------------------------------------------------------- encoding


def test_encode_features_round_trip(data: GeneratedData) -> None:
    features = load_training_table(data.frame, "churn", schema=data.schema).features.copy()
    features.loc[0, "device_type"] = "satellite"
    features.loc[1, "region"] = None
    encoded = encode_features(features, data.schema)
    assert encoded.dtype == np.float32
    assert encoded.shape == (len(features), data.schema.n_features)
    for i, feature in enumerate(data.schema.features):
        column = encoded[:, i]
        if isinstance(feature, NumericFeature):
            expected = features[feature.name].to_numpy(dtype=np.float32)
            np.testing.assert_array_equal(column, expected)
        else:
            decoded = [None if c == UNKNOWN_CODE else feature.vocabulary[int(c)] for c in column]
            known = [v if v in feature.vocabulary else None for v in features[feature.name]]
            assert decoded == known
    device = data.schema.names.index("device_type")
    region = data.schema.names.index("region")
    assert encoded[0, device] == UNKNOWN_CODE
    assert encoded[1, region] == UNKNOWN_CODE
    assert np.isnan(encoded[:, data.schema.names.index("total_charges")]).any()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.sampled_from(["a", "b", "c", "A", "", "b "]), st.text()),
        min_size=1,
        max_size=30,
    )
)
def test_categorical_codes_match_the_per_record_rule(values: list[str | None]) -> None:
    feature = CategoricalFeature("plan", ("a", "b", "c"), allow_missing=True)
    schema = FeatureSchema(features=(feature,), target="y", classes=("0", "1"))
    encoded = encode_features(pd.DataFrame({"plan": pd.Series(values, dtype=object)}), schema)
    expected = [UNKNOWN_CODE if v is None else feature.code(v) for v in values]
    np.testing.assert_array_equal(encoded[:, 0], np.array(expected, dtype=np.float32))


def test_encode_refuses_text_in_numeric_and_absent_columns() -> None:
    schema = schema_for_small()
    with pytest.raises(DataError, match="'forty' is text"):
        encode_features(_set(small_frame(), "tenure", 0, "forty"), schema)
    with pytest.raises(DataError, match="'plan' absent"):
        encode_features(small_frame().drop(columns=["plan"]), schema)


# ---------------------------------------------------------------------- hashing


def test_data_hash_ignores_dtype_details_and_sees_content() -> None:
    frame = small_frame()
    as_float = frame.assign(tenure=frame["tenure"].astype(np.float64))
    assert data_sha256(as_float) == data_sha256(frame)
    text_none = _set(small_frame(), "plan", 0, None)
    text_nan = _set(small_frame(), "plan", 0, np.nan)
    assert data_sha256(text_none) == data_sha256(text_nan)
    assert data_sha256(_set(small_frame(), "tenure", 5, 6)) != data_sha256(frame)
    assert data_sha256(frame.rename(columns={"plan": "tier"})) != data_sha256(frame)
    assert len(data_sha256(frame)) == 64
