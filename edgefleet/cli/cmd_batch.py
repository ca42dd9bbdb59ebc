"""``edgefleet batch score``: score a table of customers with a verified bundle into a file
or the operational database, on every core of this machine or on Spark."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgefleet.cli.progress import ProgressBar, say
from edgefleet.errors import InputError

EPILOG = """\
The bundle is verified as a device verifies it (signature by a trusted key, artifact
hashes, golden vectors) before any row is read, by every scoring thread for its own
copy, and with --engine spark again on every executor.

Each prediction carries the key column, the model's name and version, the label, the
score (the positive class's probability) and when it was scored. With --db they are
upserted by key: tonight's run replaces last night's row of every key it scores. A row
that cannot be scored (a missing value, text in a number field, a value out of range, no
key) goes to the rejects file with the reason; one bad row never stops the run. Exit
status: 0 every row scored, 1 some rows rejected, 2 the run failed (nothing written).

examples:
  edgefleet batch score bundle/ --input customers.parquet --key customer_id --out scores.parquet
  edgefleet batch score bundle/ --input exports/ --key customer_id \\
      --db postgresql://crm@db.internal/crm --table churn_scores
  edgefleet batch score bundle/ --input customers.csv --key customer_id \\
      --db sqlite:///crm.db --rejects rejected.csv --workers 4
  edgefleet batch score bundle/ --input customers.parquet --key customer_id \\
      --out scores/ --engine spark --master local[*]

Look one up afterwards (the call centre's view): GET /api/predictions/KEY on
'edgefleet serve --predictions-db URL'.
"""


def register(subparsers: Any) -> None:
    batch = subparsers.add_parser(
        "batch",
        help="score tables of customers into files or an operational database",
        description="Batch scoring: a night's run over every customer.",
    )
    actions = batch.add_subparsers(dest="batch_command", metavar="ACTION", required=True)
    score = actions.add_parser(
        "score",
        help="score a CSV/Parquet file or folder with a bundle",
        description="Verify the bundle, then score every row of the input in chunks on "
        "every core (or on Spark), writing predictions to --out or --db and refused rows "
        "to the rejects file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("bundle", type=Path, help="bundle folder or .tar")
    score.add_argument(
        "--input", type=Path, required=True, help=".csv or .parquet file, or a folder of them"
    )
    target = score.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--out",
        type=Path,
        help="predictions file, .parquet or .csv (with --engine spark: a folder of part files)",
    )
    target.add_argument(
        "--db", help="operational database: sqlite:///FILE or postgresql://USER@HOST/DB"
    )
    score.add_argument(
        "--table", default="predictions", help="table for --db (default: %(default)s)"
    )
    score.add_argument(
        "--key",
        metavar="COLUMN",
        help="the input's key column (a customer id); required with --db. Without it a "
        "file's predictions are keyed by row number",
    )
    score.add_argument(
        "--rejects",
        type=Path,
        help="CSV of refused rows with the reason (default: OUT.rejects.csv beside --out, or "
        "TABLE.rejects.csv here with --db)",
    )
    score.add_argument(
        "--public-key",
        type=Path,
        help="trusted publisher key (default: HOME/keys/edgefleet.pub)",
    )
    score.add_argument("--format", help="runtime format (default: the first available, onnx)")
    score.add_argument(
        "--workers", type=int, default=0, help="scoring threads (default: one per core)"
    )
    score.add_argument(
        "--chunk-rows", type=int, default=65_536, help="rows per chunk (default: %(default)s)"
    )
    score.add_argument(
        "--engine",
        choices=("local", "spark"),
        default="local",
        help="local: threads on this machine (default); spark: Apache Spark, mapInArrow",
    )
    score.add_argument(
        "--master",
        default="local[*]",
        help="Spark master with --engine spark: local[*], local[4], spark://HOST:7077",
    )
    score.set_defaults(handler=run_batch_score)


def _check(args: argparse.Namespace) -> None:
    if args.db and not args.key:
        raise InputError("--db upserts by key: name the key column with --key COLUMN")
    if args.workers < 0:
        raise InputError("--workers must be 0 (one per core) or more")
    if args.chunk_rows < 1:
        raise InputError("--chunk-rows must be at least 1")
    if args.engine == "spark" and not args.key:
        raise InputError("--engine spark keys predictions by a column: add --key COLUMN")
    if args.engine == "local" and args.master != "local[*]":
        raise InputError("--master is for --engine spark")


def _rejects_path(args: argparse.Namespace) -> Path:
    if args.rejects is not None:
        return Path(args.rejects)
    if args.out is not None:
        out = Path(args.out)
        return out.with_name(f"{out.stem}.rejects.csv")
    return Path(f"{args.table}.rejects.csv")


def run_batch_score(args: argparse.Namespace) -> int:
    from edgefleet.cli.cmd_bundle import default_public_key

    _check(args)
    trusted = args.public_key or default_public_key(args.home)
    rejects = _rejects_path(args)
    if args.engine == "spark":
        from edgefleet.central.batch.spark_run import run_spark_batch

        summary = run_spark_batch(args, trusted, rejects)
    else:
        summary = _run_local(args, trusted, rejects)
    rejected = summary.rejected + len(summary.malformed)
    say(
        f"scored {summary.scored:,} rows of {summary.model} {summary.version} into "
        f"{summary.output}; rejected {rejected:,}"
        + (f" (reasons in {rejects})" if rejected else "")
        + f"; {summary.seconds:.1f} s, {summary.rows_per_second:,.0f} rows/s"
    )
    return 1 if rejected else 0


def _run_local(args: argparse.Namespace, trusted: Path, rejects: Path) -> Any:
    from edgefleet.central.batch.local import BatchJob, Progress, score_source
    from edgefleet.central.batch.sinks import DatabaseSink, prediction_file, rejects_file
    from edgefleet.central.batch.sources import open_input

    source = open_input(args.input)
    job = BatchJob(
        bundle=args.bundle,
        trusted_key=trusted,
        key_column=args.key,
        workers=args.workers,
        chunk_rows=args.chunk_rows,
        format=args.format,
    )
    sink = DatabaseSink(args.db, args.table) if args.db else prediction_file(args.out)
    say(
        f"scoring {source.total_rows:,} rows of {len(source.files)} {source.format} file(s) "
        f"on {job.worker_count()} worker(s) into {sink.description}"
    )
    bar = ProgressBar(source.total_rows)

    def progress(state: Progress) -> None:
        bar.update(state.rows, state.seconds)

    summary = score_source(job, source, sink, rejects_file(rejects), progress)
    bar.update(summary.scored + summary.rejected, summary.seconds, final=True)
    return summary
