"""Reading users' tables into what training needs: features in schema order and 0/1 labels.

Everything a user can get wrong in a data file ends in a :class:`~edgefleet.errors.DataError`
that names the file, the column and, where it helps, the row and the value, and says what to
do. Row numbers in messages count data rows from 1 (the header is not a row), so in a CSV
file row ``r`` is on line ``r + 1``.

Schema inference (when no schema is given), column by column, target excluded:

- a numeric column (any integer or float dtype, including 0/1 columns) becomes a
  :class:`NumericFeature` **without bounds** (``minimum = maximum = None``): the data show
  what was observed, not what is physically allowed, so declare bounds in a schema file if
  scoring should refuse implausible values;
- a text column whose only non-numbers are blank strings (the IBM Telco ``TotalCharges``
  column, blank for new customers) becomes numeric, the blanks missing;
- text, boolean and categorical columns become a :class:`CategoricalFeature` whose
  vocabulary is the sorted observed values;
- ``allow_missing`` is set when the column has missing values.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api import types as ptypes

from edgefleet.edge.schema import (
    UNKNOWN_CODE,
    CategoricalFeature,
    Feature,
    FeatureSchema,
    NumericFeature,
)
from edgefleet.errors import DataError

TableFormat = Literal["csv", "parquet"]
SUFFIXES: dict[str, TableFormat] = {".csv": "csv", ".parquet": "parquet"}

MIN_ROWS = 50
MIN_MINORITY = 10
# Recognised as the positive class when the caller does not name one, in this order.
POSITIVE_NAMES = ("Yes", "1", "True", "true", "yes")


@dataclass(frozen=True)
class TrainingTable:
    """Features in schema order (numeric float64 with NaN; categorical ``str`` or ``None``),
    labels and the schema. Labels: for a binary schema int8 0/1 with 1 for
    ``schema.classes[1]``; multi-class, the index of each row's class in ``schema.classes``
    (int16); regression, the target values (float64)."""

    features: pd.DataFrame
    labels: npt.NDArray[Any]
    schema: FeatureSchema

    @property
    def n_rows(self) -> int:
        return len(self.labels)


# ---------------------------------------------------------------------------- files


def table_format(path: str | Path) -> TableFormat:
    """The format a path's suffix names; :class:`DataError` for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(SUFFIXES)}"
        )
    return SUFFIXES[suffix]


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a .csv or .parquet table, refusing files without rows or with a bad header."""
    path = Path(path)
    kind = table_format(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; it needs a header line and data rows")
    frame = _read_csv(path) if kind == "csv" else _read_parquet(path)
    _check_column_names(frame.columns, str(path))
    if len(frame) == 0:
        raise DataError(f"{path}: the table has columns but no rows")
    return frame


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` as .csv or .parquet (by suffix), creating parent folders."""
    path = Path(path)
    kind = table_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
    except (OSError, ValueError, TypeError) as error:
        raise DataError(f"{path}: cannot write the table: {error}") from error


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file has no header line and no data") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: not a readable CSV file: {error}") from None
    _check_csv_header([str(v) for v in header.iloc[0]], path)
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file: {error}") from None


def _check_csv_header(names: Sequence[str], path: Path) -> None:
    numbers = [name for name in names if _is_number(name)]
    if numbers:
        raise DataError(
            f"{path}: the first line looks like data, not a header (it holds the number "
            f"{numbers[0]!r}); add a header line with the column names"
        )
    # pandas renames a repeated name to "name.1", which would hide the clash.
    _check_duplicates(names, str(path))


def _check_column_names(columns: pd.Index[Any], source: str) -> None:
    for name in columns:
        if not isinstance(name, str):
            raise DataError(
                f"{source}: column names must be text, found {name!r}; "
                "does the table lack a header?"
            )
        if not name.strip():
            raise DataError(f"{source}: a column has an empty name; name or drop it")
    _check_duplicates([str(name) for name in columns], source)


def _check_duplicates(names: Sequence[str], source: str) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(
            f"{source}: duplicate column names: {', '.join(map(repr, repeated))}; "
            "give every column its own name"
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------- training table


def load_training_table(
    path_or_frame: str | Path | pd.DataFrame,
    target: str,
    schema: FeatureSchema | None = None,
    positive_class: str | None = None,
) -> TrainingTable:
    """Load a table for training: check it, infer or apply ``schema``, encode the target.

    With a ``schema`` the features are exactly its features (other columns are ignored) and
    values must fit it: numbers in numeric columns, no missing values where not allowed,
    values inside the bounds unless the feature's ``out_of_range`` policy is "clip" (then
    clipped, as scoring would) or "accept".
    """
    frame, source = _as_frame(path_or_frame)
    if schema is not None and schema.target != target:
        raise DataError(
            f"the schema's target is {schema.target!r} but the target asked for is {target!r}"
        )
    if schema is not None and schema.task != "binary":
        labels = task_labels(frame, schema, source)
        return TrainingTable(_features(frame, schema, source), labels, schema)
    raw_target = _target_column(frame, target, source)
    classes = _classes(raw_target, target, source, schema, positive_class)
    labels = np.asarray(raw_target == classes[1], dtype=np.int8)
    _check_size(labels, classes, source)
    if schema is None:
        schema = infer_schema(frame.drop(columns=[target]), target, classes, source=source)
    features = _features(frame, schema, source)
    return TrainingTable(features=features, labels=labels, schema=schema)


def _as_frame(path_or_frame: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if isinstance(path_or_frame, pd.DataFrame):
        frame = path_or_frame.reset_index(drop=True)
        _check_column_names(frame.columns, "the table")
        if len(frame) == 0:
            raise DataError("the table has no rows")
        return frame, "the table"
    return read_table(path_or_frame), str(path_or_frame)


def _target_column(frame: pd.DataFrame, target: str, source: str) -> pd.Series[Any]:
    if target not in frame.columns:
        raise DataError(
            f"{source}: no target column {target!r}; the columns are "
            f"{', '.join(map(str, frame.columns))} (if these look like data values, "
            "the file lacks a header line)"
        )
    column = frame[target]
    missing = column.isna().to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0]) + 1
        raise DataError(
            f"{source}: the target {target!r} is missing in {int(missing.sum())} of "
            f"{len(column)} rows (first at row {first}); fill in or drop those rows"
        )
    return _as_text(column)


def task_labels(frame: pd.DataFrame, schema: FeatureSchema, source: str) -> npt.NDArray[Any]:
    """The labels of a multi-class or regression schema (see :class:`TrainingTable`)."""
    target = schema.target
    if schema.task == "regression":
        _target_column(frame, target, source)  # present, none missing
        values = pd.to_numeric(frame[target], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}: the target {target!r} of a regression model must hold finite "
                f"numbers; row {first + 1} holds {frame[target].iloc[first]!r}"
            )
        labels = values
    else:
        text = _target_column(frame, target, source)
        index = {name: i for i, name in enumerate(schema.classes)}
        unknown = sorted(set(text.unique().tolist()) - set(index))
        if unknown:
            shown = ", ".join(map(repr, unknown[:10]))
            raise DataError(
                f"{source}: the target {target!r} holds {shown}, which the model's classes "
                f"({', '.join(map(repr, schema.classes))}) do not include"
            )
        labels = text.map(index).to_numpy(np.int16)
    if len(labels) < MIN_ROWS:
        raise DataError(f"{source}: only {len(labels)} rows; at least {MIN_ROWS} are needed")
    return labels


def _classes(
    labels: pd.Series[Any],
    target: str,
    source: str,
    schema: FeatureSchema | None,
    positive_class: str | None,
) -> tuple[str, str]:
    """The (negative, positive) classes; ``classes[1]`` is what labels encode as 1."""
    observed = sorted(labels.unique().tolist())
    if len(observed) < 2:
        raise DataError(
            f"{source}: the target {target!r} has only one class ({observed[0]!r}); "
            "training needs examples of both outcomes"
        )
    if len(observed) > 2:
        shown = ", ".join(map(repr, observed[:10])) + (", ..." if len(observed) > 10 else "")
        raise DataError(
            f"{source}: the target {target!r} has {len(observed)} values ({shown}); "
            "edgefleet train fits binary classifiers: map the target to two classes, or fit "
            "a multi-class classifier or a regressor with scikit-learn and bring it: "
            f"edgefleet register MODEL.joblib --reference DATA --target {target}"
        )
    if schema is not None:
        return _schema_classes(observed, schema, target, source, positive_class)
    positive = _positive(observed, target, positive_class)
    negative = observed[0] if observed[1] == positive else observed[1]
    return negative, positive


def _schema_classes(
    observed: list[str],
    schema: FeatureSchema,
    target: str,
    source: str,
    positive_class: str | None,
) -> tuple[str, str]:
    if set(observed) != set(schema.classes):
        raise DataError(
            f"{source}: the target {target!r} holds {observed[0]!r} and {observed[1]!r}, "
            f"but the schema's classes are {schema.classes[0]!r} and {schema.classes[1]!r}"
        )
    if positive_class is not None and positive_class != schema.classes[1]:
        raise DataError(
            f"positive class {positive_class!r} contradicts the schema, whose positive "
            f"class is {schema.classes[1]!r}"
        )
    return schema.classes[0], schema.classes[1]


def _positive(observed: list[str], target: str, positive_class: str | None) -> str:
    if positive_class is not None:
        if positive_class not in observed:
            raise DataError(
                f"positive class {positive_class!r} is not a value of the target {target!r}; "
                f"it holds {observed[0]!r} and {observed[1]!r}"
            )
        return positive_class
    for name in POSITIVE_NAMES:
        if name in observed:
            return name
    return observed[1]


def _check_size(labels: npt.NDArray[np.int8], classes: tuple[str, str], source: str) -> None:
    if len(labels) < MIN_ROWS:
        raise DataError(
            f"{source}: only {len(labels)} rows; training needs at least {MIN_ROWS} "
            "(and a holdout to measure the model)"
        )
    positives = int(labels.sum())
    counts = {classes[0]: len(labels) - positives, classes[1]: positives}
    rarest = min(counts, key=lambda name: counts[name])
    if counts[rarest] < MIN_MINORITY:
        raise DataError(
            f"{source}: only {counts[rarest]} rows of class {rarest!r} (of {len(labels)}); "
            f"training needs at least {MIN_MINORITY} of each class"
        )


# ----------------------------------------------------------------- schema inference


def infer_schema(
    features: pd.DataFrame,
    target: str,
    classes: tuple[str, str],
    *,
    source: str = "the table",
) -> FeatureSchema:
    """A schema for every column of ``features`` (see the module docstring for the rules)."""
    inferred = tuple(_infer_feature(str(name), features[name], source) for name in features)
    if not inferred:
        raise DataError(f"{source}: the table has no feature columns besides the target")
    return FeatureSchema(features=inferred, target=target, classes=classes)


def _infer_feature(name: str, column: pd.Series[Any], source: str) -> Feature:
    if name.startswith("Unnamed: "):
        raise DataError(
            f"{source}: a column has no name in the header ({name!r}); name it, or drop it "
            "if it is a row index written by to_csv"
        )
    if name != name.strip():
        raise DataError(f"{source}: column name {name!r} has leading or trailing spaces")
    _check_not_empty(name, column, source)
    allow_missing = bool(column.isna().any())
    if ptypes.is_bool_dtype(column.dtype) or isinstance(column.dtype, pd.CategoricalDtype):
        return _categorical(name, column, allow_missing)
    if ptypes.is_numeric_dtype(column.dtype):
        if ptypes.is_complex_dtype(column.dtype):
            raise DataError(f"{source}: column {name!r} holds complex numbers; drop it")
        return NumericFeature(name, allow_missing=allow_missing)
    if ptypes.is_object_dtype(column.dtype) or ptypes.is_string_dtype(column.dtype):
        blanks = _blank_strings(column)
        if blanks.any() and _numbers_or_missing(column.mask(blanks)):
            return NumericFeature(name, allow_missing=True)
        return _categorical(name, column, allow_missing)
    raise DataError(
        f"{source}: column {name!r} has type {column.dtype}, which is neither numbers nor "
        "text; convert it (e.g. a date to a number of days) or drop it"
    )


def _categorical(name: str, column: pd.Series[Any], allow_missing: bool) -> CategoricalFeature:
    values = _as_text(column).dropna().unique().tolist()
    return CategoricalFeature(name, tuple(sorted(values)), allow_missing=allow_missing)


def _check_not_empty(name: str, column: pd.Series[Any], source: str) -> None:
    if column.isna().all():
        raise DataError(
            f"{source}: column {name!r} has no values (all {len(column)} rows are missing); "
            "fill it or drop it"
        )


def _blank_strings(column: pd.Series[Any]) -> npt.NDArray[np.bool_]:
    return np.array([isinstance(v, str) and not v.strip() for v in column], dtype=bool)


def _numbers_or_missing(column: pd.Series[Any]) -> bool:
    converted = pd.to_numeric(column, errors="coerce")
    return bool((converted.notna() | column.isna()).all())


# ---------------------------------------------------------------- feature columns


def _features(frame: pd.DataFrame, schema: FeatureSchema, source: str) -> pd.DataFrame:
    absent = [name for name in schema.names if name not in frame.columns]
    if absent:
        raise DataError(
            f"{source}: the schema's feature(s) {', '.join(map(repr, absent))} are not in the "
            f"table; its columns are {', '.join(map(str, frame.columns))}"
        )
    columns: dict[str, pd.Series[Any]] = {}
    for feature in schema.features:
        column = frame[feature.name]
        _check_not_empty(feature.name, column, source)
        if isinstance(feature, NumericFeature):
            columns[feature.name] = _numeric_column(feature, column, source)
        else:
            columns[feature.name] = _categorical_column(feature, column, source)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(frame)))


def _numeric_column(feature: NumericFeature, column: pd.Series[Any], source: str) -> pd.Series[Any]:
    values = _to_float(feature.name, column, source)
    missing = np.isnan(values)
    if missing.any() and not feature.allow_missing:
        _raise_missing(feature.name, missing, source)
    infinite = np.isinf(values)
    if infinite.any():
        _raise_at(feature.name, infinite, column, source, "is not a finite number")
    values = _apply_bounds(feature, values, column, source)
    return pd.Series(values, dtype=np.float64)


def _to_float(name: str, column: pd.Series[Any], source: str) -> npt.NDArray[np.float64]:
    if ptypes.is_bool_dtype(column.dtype):
        return np.asarray(column.astype(np.float64), dtype=np.float64)
    if ptypes.is_numeric_dtype(column.dtype):
        return np.asarray(column.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    # Blank strings are how spreadsheets and the Telco table write "no value".
    cleaned = column.mask(_blank_strings(column))
    converted = pd.to_numeric(cleaned, errors="coerce")
    bad = (converted.isna() & cleaned.notna()).to_numpy()
    if bad.any():
        _raise_at(name, bad, column, source, "is text in a numeric column")
    return np.asarray(converted.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)


def _apply_bounds(
    feature: NumericFeature,
    values: npt.NDArray[np.float64],
    column: pd.Series[Any],
    source: str,
) -> npt.NDArray[np.float64]:
    if feature.out_of_range == "accept":
        return values
    if feature.out_of_range == "clip":
        # Training on clipped values matches what scoring does with the same records.
        return np.clip(values, feature.minimum, feature.maximum)
    outside = np.zeros(len(values), dtype=bool)
    if feature.minimum is not None:
        outside |= values < feature.minimum
    if feature.maximum is not None:
        outside |= values > feature.maximum
    if outside.any():
        allowed = f"[{_bound(feature.minimum)}, {_bound(feature.maximum)}]"
        _raise_at(feature.name, outside, column, source, f"is outside the allowed range {allowed}")
    return values


def _bound(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _categorical_column(
    feature: CategoricalFeature, column: pd.Series[Any], source: str
) -> pd.Series[Any]:
    text = _as_text(column)
    missing = text.isna().to_numpy()
    if missing.any() and not feature.allow_missing:
        _raise_missing(feature.name, missing, source)
    return text


def _raise_missing(name: str, where: npt.NDArray[np.bool_], source: str) -> None:
    rows = np.flatnonzero(where)
    raise DataError(
        f"{source}: column {name!r} has {len(rows)} missing value(s) (first at row "
        f"{int(rows[0]) + 1}), which the schema forbids; fill them, drop those rows, or set "
        "allow_missing in the schema"
    )


def _raise_at(
    name: str, where: npt.NDArray[np.bool_], column: pd.Series[Any], source: str, problem: str
) -> None:
    rows = np.flatnonzero(where)
    first = int(rows[0])
    more = f" ({len(rows) - 1} more rows like it)" if len(rows) > 1 else ""
    raise DataError(
        f"{source}: column {name!r}, row {first + 1}: the value {column.iloc[first]!r} "
        f"{problem}{more}; fix the data or the schema"
    )


def _as_text(column: pd.Series[Any]) -> pd.Series[Any]:
    """Values as Python ``str`` (``None`` where missing), with whole floats written as
    integers: a CSV reader turns a 0/1 code column with a blank into 0.0/1.0."""
    if ptypes.infer_dtype(column, skipna=True) == "string":
        # Already text: only the missing markers need to become None (vectorised).
        text = column.astype(object)
        return text.where(text.notna(), None)
    return pd.Series([_text(v) for v in column], dtype=object, index=column.index)


def _text(value: Any) -> str | None:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    if isinstance(value, bool | np.bool_):
        return "True" if value else "False"
    return str(value)


# --------------------------------------------------------------------- encoding


def encode_features(features: pd.DataFrame, schema: FeatureSchema) -> npt.NDArray[np.float32]:
    """The model input ``[N, F]`` (docs/architecture.md §2): numeric values as float32 with NaN
    for missing; a categorical value as the float index in its vocabulary, with
    :data:`UNKNOWN_CODE` for a missing value or one outside the vocabulary (a value matches
    only a vocabulary entry equal to it, as :meth:`CategoricalFeature.code` does)."""
    absent = [name for name in schema.names if name not in features.columns]
    if absent:
        raise DataError(f"cannot encode: feature column(s) {', '.join(map(repr, absent))} absent")
    out = np.empty((len(features), schema.n_features), dtype=np.float32)
    for i, feature in enumerate(schema.features):
        column = features[feature.name]
        if isinstance(feature, NumericFeature):
            out[:, i] = _to_float(feature.name, column, "cannot encode")
        else:
            out[:, i] = _codes(feature, column)
    return out


def _codes(feature: CategoricalFeature, column: pd.Series[Any]) -> npt.NDArray[np.float64]:
    lookup = {value: float(code) for code, value in enumerate(feature.vocabulary)}
    # An object Series maps through a hash table; missing and unseen values come back NaN.
    mapped = column.astype(object).map(lookup)
    # A copy: with copy-on-write, to_numpy may return a read-only view.
    codes = np.array(mapped.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    codes[np.isnan(codes)] = UNKNOWN_CODE
    return codes


# ------------------------------------------------------------------------- hashing


def data_sha256(frame: pd.DataFrame) -> str:
    """A sha256 of the table's content: column names and values in order.

    Independent of the file format and of dtype details a CSV round trip changes: numbers
    are hashed as float64 (so 1 and 1.0 agree), every missing value alike (NaN, None, NA),
    text and booleans by their string form.
    """
    digest = hashlib.sha256(b"edgefleet-table-v1\n")
    digest.update(json.dumps([str(c) for c in frame.columns]).encode())
    digest.update(f"\n{len(frame)}\n".encode())
    for name in frame.columns:
        digest.update(_column_bytes(frame[name]))
    return digest.hexdigest()


def _column_bytes(column: pd.Series[Any]) -> bytes:
    if ptypes.is_numeric_dtype(column.dtype) and not ptypes.is_bool_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        # One bit pattern for every NaN and for -0.0 vs 0.0, so equal tables hash alike.
        values = np.where(np.isnan(values), np.nan, values + 0.0)
        return b"n" + values.astype("<f8").tobytes()
    text = [_text(v) for v in column]
    return b"t" + json.dumps(text, ensure_ascii=False).encode()
