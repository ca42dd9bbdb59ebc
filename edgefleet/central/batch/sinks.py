"""Where a batch run's predictions and rejects go: a Parquet or CSV file (written beside
the destination and renamed into place when the run succeeds, so a failed run leaves the
previous night's file), or the operational database (``central/predictions.py``: upsert
by key, one transaction per chunk)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from edgefleet.central.batch.scoring import FILE_COLUMNS, REJECT_SCHEMA, RESULT_SCHEMA
from edgefleet.central.predictions import Prediction, PredictionStore
from edgefleet.errors import InputError

FILE_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


class Sink(Protocol):
    def write(self, table: pa.Table) -> None: ...

    def close(self) -> None:
        """The run succeeded: make the output visible."""

    def abort(self) -> None:
        """The run failed: leave no partial output."""

    @property
    def description(self) -> str: ...


class FileSink:
    """Rows of ``columns`` to a Parquet or CSV file, by its suffix."""

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        columns: tuple[str, ...] | None = None,
        *,
        keep_empty: bool = True,
    ):
        """``keep_empty=False``: a run that wrote no row leaves no file (and removes the
        previous run's, which would describe another night)."""
        self.path = Path(path)
        self.keep_empty = keep_empty
        kind = FILE_FORMATS.get(self.path.suffix.lower())
        if kind is None:
            raise InputError(f"{self.path}: write predictions to a .parquet or .csv file")
        if self.path.is_dir():
            raise InputError(f"{self.path} is a folder: name a file")
        self.kind = kind
        self.columns = list(columns or schema.names)
        self.schema = pa.schema([schema.field(c) for c in self.columns])
        self.rows = 0
        self._partial = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self._writer: pq.ParquetWriter | pacsv.CSVWriter | None = None

    @property
    def description(self) -> str:
        return str(self.path)

    def _open(self) -> pq.ParquetWriter | pacsv.CSVWriter:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = (
                pq.ParquetWriter(self._partial, self.schema)
                if self.kind == "parquet"
                else pacsv.CSVWriter(self._partial, self.schema)
            )
        return self._writer

    def write(self, table: pa.Table) -> None:
        self._open().write_table(table.select(self.columns))
        self.rows += table.num_rows

    def close(self) -> None:
        if not self.rows and not self.keep_empty:
            self.abort()
            self.path.unlink(missing_ok=True)
            return
        self._open().close()  # an empty run still writes a file with the header
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._partial.unlink(missing_ok=True)


def prediction_file(path: Path) -> FileSink:
    return FileSink(path, RESULT_SCHEMA, FILE_COLUMNS)


def rejects_file(path: Path) -> FileSink:
    return FileSink(path, REJECT_SCHEMA, keep_empty=False)


class DatabaseSink:
    """Upsert by key into the prediction table; each chunk is one transaction."""

    def __init__(self, url: str, table: str):
        self.store = PredictionStore(url, table)
        self.table = table

    @property
    def description(self) -> str:
        return f"table {self.table} of {self.store.display}"

    def write(self, table: pa.Table) -> None:
        self.store.upsert(rows_of(table))

    def close(self) -> None:
        self.store.close()

    def abort(self) -> None:
        self.store.close()


def rows_of(table: pa.Table) -> list[Prediction]:
    columns = table.to_pydict()
    return [
        Prediction(
            key=key,
            model=model,
            version=version,
            label=label,
            score=score,
            probabilities=tuple(probabilities),
            scored_at=scored_at,
        )
        for key, model, version, label, score, probabilities, scored_at in zip(
            *(columns[name] for name in RESULT_SCHEMA.names), strict=True
        )
    ]
