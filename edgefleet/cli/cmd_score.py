"""``edgefleet score``: score a JSONL or CSV file with a verified bundle, streaming one
JSON line per record to stdout. Runs with the edge extras only (no pandas)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edgefleet.cli.progress import say
from edgefleet.edge.agent.answers import Prediction, answers
from edgefleet.errors import InputError, RecordError

EPILOG = """\
output: one JSON object per input record, in input order:
  {"row": 0, "probability": 0.731, "label": "Yes"}
  {"row": 1, "error": "field 'tenure_months': expected a number, got text 'ten'"}
a multi-class model gives the label and every class's probability, a regressor the value:
  {"row": 0, "probabilities": {"setosa": 0.02, "versicolor": 0.9, "virginica": 0.08},
   "label": "versicolor"}
  {"row": 0, "value": 183.2}
a decision-function model (LinearSVC, hinge-loss SGDClassifier) says "score" / "scores":
its values rank and pick the class but are not probabilities.

examples:
  edgefleet score bundle/ --input customers.jsonl --key edgefleet.pub
  edgefleet score bundle/ --input customers.csv --format tflite > scores.jsonl
"""


def register(subparsers: Any) -> None:
    score = subparsers.add_parser(
        "score",
        help="score a JSONL or CSV file locally with a bundle",
        description="Verify the bundle, self-test it on its golden vectors, then score each "
        "record of the input and stream the results as JSON lines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("bundle", type=Path, help="bundle folder or .tar")
    score.add_argument(
        "--input",
        type=Path,
        required=True,
        help=".jsonl (one JSON object per line) or .csv with a header; - for JSONL on stdin",
    )
    score.add_argument(
        "--key", type=Path, help="trusted public key (default: HOME/keys/edgefleet.pub)"
    )
    score.add_argument("--format", help="runtime format to use (default: the first available)")
    score.add_argument("--batch-size", type=int, default=1024, help="records per model call")
    score.add_argument(
        "--on-error",
        choices=("report", "stop"),
        default="report",
        help="a bad record: write an error line and go on (exit 1 at the end), "
        "or stop at once (default: report)",
    )
    score.set_defaults(handler=run_score)


def _fields(prediction: Prediction) -> dict[str, Any]:
    """A prediction's task fields, probabilities to 7 decimals."""
    fields = prediction.to_dict()
    del fields["id"], fields["model_version"]
    for single in ("probability", "score"):
        if single in fields:
            fields[single] = round(fields[single], 7)
    for several in ("probabilities", "scores"):
        if several in fields:
            fields[several] = {k: round(p, 7) for k, p in fields[several].items()}
    return fields


def _csv_records(handle: TextIO, numeric: set[str]) -> Iterator[dict[str, Any]]:
    reader = csv.DictReader(handle)
    if reader.fieldnames is None:
        raise InputError("the CSV input is empty: it needs a header row")
    for _line, row in enumerate(reader, start=2):
        record: dict[str, Any] = {}
        for name, text in row.items():
            text = (text or "").strip()
            if name in numeric:
                if text == "":
                    record[name] = None
                else:
                    try:
                        record[name] = float(text)
                    except ValueError:
                        record[name] = text  # the encoder names it as text in a number field
            else:
                record[name] = text or None
        yield record


def _jsonl_records(handle: TextIO) -> Iterator[dict[str, Any] | RecordError]:
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            yield RecordError(f"line {line_number} is not JSON: {error.msg}")
            continue
        yield (
            value
            if isinstance(value, dict)
            else RecordError(f"line {line_number} is not a JSON object")
        )


def run_score(args: argparse.Namespace) -> int:
    from edgefleet.cli.cmd_bundle import default_public_key
    from edgefleet.edge.scorer import Scorer

    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    scorer = Scorer.from_bundle(
        args.bundle, args.key or default_public_key(args.home), format=args.format
    )
    say(f"scoring with {scorer.manifest.label} ({scorer.format}, self-test passed)")
    schema = scorer.manifest.schema
    numeric = {f.name for f in schema.features if f.kind == "numeric"}
    if str(args.input) == "-":
        handle: TextIO = sys.stdin
    else:
        try:
            handle = args.input.open(newline="", encoding="utf-8")
        except OSError as error:
            raise InputError(f"cannot read {args.input}: {error.strerror}") from None
    suffix = args.input.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json", ".ndjson", "") and str(args.input) != "-":
        raise InputError(f"{args.input}: use a .jsonl or .csv file")
    records: Iterator[Any] = (
        _csv_records(handle, numeric) if suffix == ".csv" else _jsonl_records(handle)
    )
    width = scorer.manifest.schema.n_features
    scored = failed = 0
    row = 0
    out = sys.stdout
    with handle:
        while batch := list(islice(records, args.batch_size)):
            encoded: list[list[float]] = []
            lines: list[dict[str, Any]] = []
            for item in batch:
                entry: dict[str, Any] = {"row": row}
                try:
                    if isinstance(item, RecordError):
                        raise item
                    encoded.append(scorer.encoder.encode_row(item, row))
                except RecordError as error:
                    if args.on_error == "stop":
                        raise
                    entry["error"] = str(error)
                    failed += 1
                lines.append(entry)
                row += 1
            outputs = (
                scorer.score(np.array(encoded, dtype=np.float32).reshape(-1, width))
                if encoded
                else np.empty((0, schema.n_outputs), dtype=np.float32)
            )
            results = iter(answers(schema, scorer.version, outputs, [""] * len(outputs)))
            for entry in lines:
                if "error" not in entry:
                    entry.update(_fields(next(results)))
                    scored += 1
                out.write(json.dumps(entry) + "\n")
            out.flush()
    say(f"scored {scored:,} records, {failed:,} refused")
    return 1 if failed else 0
