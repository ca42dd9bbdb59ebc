"""The input of a batch run: a CSV or Parquet file, or a folder of them, read in chunks of
Arrow record batches with the row number of each chunk's first row.

CSV columns the model reads are read as text and parsed by the encoder, so one bad value
refuses its row, not the file; a line with the wrong number of fields is skipped and
reported (``malformed``) rather than stopping the run.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from edgefleet.errors import DataError, InputError

InputFormat = Literal["csv", "parquet"]
SUFFIXES: dict[str, InputFormat] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
DEFAULT_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class Chunk:
    batch: pa.RecordBatch
    offset: int  # row number of the chunk's first row in the whole input


@dataclass
class InputSource:
    """Files of one format, read in order; ``total_rows`` is exact for Parquet and counted
    from line ends for CSV (for the progress bar's ETA)."""

    files: list[Path]
    format: InputFormat
    columns: list[str]
    total_rows: int
    malformed: list[str] = field(default_factory=list)

    def chunks(
        self,
        wanted: list[str],
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        categorical: list[str] | None = None,
    ) -> Iterator[Chunk]:
        """Record batches of the ``wanted`` columns; ``categorical`` ones may come
        dictionary-encoded."""
        offset = 0
        for path in self.files:
            batches = (
                _parquet_batches(path, wanted, chunk_rows, categorical or [])
                if self.format == "parquet"
                else self._csv_batches(path, wanted, chunk_rows)
            )
            for batch in batches:
                if batch.num_rows:
                    yield Chunk(batch, offset)
                    offset += batch.num_rows

    def _csv_batches(
        self, path: Path, wanted: list[str], chunk_rows: int
    ) -> Iterator[pa.RecordBatch]:
        def skip(row: pacsv.InvalidRow) -> str:
            where = f"line {row.number}" if row.number is not None else "a line"
            self.malformed.append(
                f"{path.name}: {where} has {row.actual_columns} fields, the header "
                f"{row.expected_columns}: {row.text[:80]!r}"
            )
            return "skip"

        present = [c for c in wanted if c in _csv_header(path)]
        try:
            reader = pacsv.open_csv(
                path,
                # One thread: line numbers of malformed lines are known only then (the
                # scoring, not the parsing, is what the workers share).
                read_options=pacsv.ReadOptions(
                    block_size=max(1 << 20, chunk_rows * 200), use_threads=False
                ),
                parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in present},
                    include_columns=present,
                    strings_can_be_null=True,
                    null_values=[""],
                ),
            )
            yield from reader
        except (pa.ArrowInvalid, OSError) as error:
            raise DataError(f"cannot read {path}: {error}") from None


def _parquet_batches(
    path: Path, wanted: list[str], chunk_rows: int, categorical: list[str]
) -> Iterator[pa.RecordBatch]:
    try:
        # Categoricals as dictionaries: decoded and looked up once per distinct value, ten
        # times faster than a string per row.
        parquet = pq.ParquetFile(path, read_dictionary=categorical)
        present = [c for c in wanted if c in parquet.schema_arrow.names]
        yield from parquet.iter_batches(batch_size=chunk_rows, columns=present)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"cannot read {path}: {error}") from None


def open_input(path: Path) -> InputSource:
    """The files at ``path`` (a file, or a folder of files of one format) and their columns;
    :class:`InputError` says what is wrong."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"{path} holds no .csv or .parquet file")
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"{path} does not exist")
    formats = {SUFFIXES.get(p.suffix.lower()) for p in files}
    if None in formats:
        raise InputError(f"{files[0]}: use a .csv or .parquet file")
    if len(formats) > 1:
        raise InputError(f"{path} mixes CSV and Parquet files: score one format per run")
    fmt: InputFormat = "parquet" if "parquet" in formats else "csv"
    columns, total = _describe(files, fmt)
    return InputSource(files, fmt, columns, total)


def _describe(files: list[Path], fmt: InputFormat) -> tuple[list[str], int]:
    """The columns every file has, and the row count."""
    common: list[str] | None = None
    total = 0
    for path in files:
        if fmt == "parquet":
            try:
                metadata = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as error:
                raise DataError(f"{path} is not a readable Parquet file: {error}") from None
            names = list(metadata.schema_arrow.names)
            total += metadata.metadata.num_rows
        else:
            names = _csv_header(path)
            total += max(0, _count_lines(path) - 1)
        common = names if common is None else [c for c in common if c in names]
    return common or [], total


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if not header:
        raise DataError(f"{path} is empty: a CSV input needs a header row")
    return list(header)


def _count_lines(path: Path) -> int:
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")
