"""Where the loop's newest labelled data comes from, and a fingerprint that says when it changed.

The data source is one of:

- a folder: the newest ``.csv`` / ``.parquet`` files (by modification time) are read until
  ``max_rows`` rows; of the oldest file read, only its last rows are kept;
- a single ``.csv`` / ``.parquet`` file;
- ``"package.module:function"``: the function is imported and called with no arguments and
  returns a pandas DataFrame (the same columns as the training table, target included);
- a Python callable returning such a DataFrame.

The fingerprint (:func:`fingerprint`) is the SHA-256 of the rows read: the loop does not
retrain again for a drift it already found retraining cannot fix until this changes
(:mod:`edgefleet.central.monitor.escalation`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from edgefleet.central.data.loader import SUFFIXES, data_sha256, read_table
from edgefleet.errors import DataError, InputError

DataSource = str | Path | Callable[[], pd.DataFrame]

_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class LabelledData:
    """The newest labelled rows of a source and where they came from."""

    frame: pd.DataFrame
    source: str
    files: tuple[str, ...] = ()


def read_labelled(source: DataSource, *, max_rows: int = 50_000) -> LabelledData:
    """The newest ``max_rows`` labelled rows of ``source`` (see the module docstring)."""
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise InputError(f"max_rows must be a whole number >= 1, not {max_rows!r}")
    if callable(source):
        name = getattr(source, "__qualname__", repr(source))
        return LabelledData(_newest(_frame_of(source(), name), max_rows), f"callable {name}")
    text = str(source)
    path = Path(source)
    if isinstance(source, str) and not path.exists() and _CALLABLE.fullmatch(source):
        module_name, function_name = source.split(":", 1)
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as error:
            raise InputError(
                f"data source {source}: cannot import {module_name}: {error}"
            ) from None
        for part in function_name.split("."):
            target = getattr(target, part, None)
        if not callable(target):
            raise InputError(f"data source {source}: {function_name} is not a function there")
        return LabelledData(_newest(_frame_of(target(), source), max_rows), source)
    if path.is_file():
        return LabelledData(_newest(read_table(path), max_rows), text, (text,))
    if not path.is_dir():
        raise InputError(
            f"data source {text}: no such folder or file, and not a 'module:function' either"
        )
    files = sorted(
        (
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
        ),
        key=lambda p: (p.stat().st_mtime, p.name),
        reverse=True,
    )
    if not files:
        raise DataError(f"{path}: no .csv or .parquet files to train on")
    frames: list[pd.DataFrame] = []
    rows = 0
    for file in files:
        frames.append(read_table(file))
        rows += len(frames[-1])
        if rows >= max_rows:
            break
    # Oldest first, so that cutting to max_rows drops the oldest rows.
    frame = _newest(pd.concat(frames[::-1], ignore_index=True), max_rows)
    used = tuple(str(f) for f in files[: len(frames)])
    return LabelledData(frame, text, used)


def _newest(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    # Rows are taken to be in time order: the last ones are the newest.
    return frame.tail(rows).reset_index(drop=True)


def _frame_of(value: Any, name: str) -> pd.DataFrame:
    if not isinstance(value, pd.DataFrame):
        raise InputError(f"data source {name} returned {type(value).__name__}, not a DataFrame")
    if value.empty:
        raise DataError(f"data source {name} returned no rows")
    return value.reset_index(drop=True)


def fingerprint(data: LabelledData) -> str:
    """SHA-256 of the rows read (column names and values): equal rows, equal fingerprint."""
    return data_sha256(data.frame)
