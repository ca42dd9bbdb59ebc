"""Batch scoring throughput, rows/s, on generated customers in Parquet, in one run:

  (a) ``edgefleet batch score`` with the ONNX bundle: every core, output to Parquet
  (b) the same bundle on Spark (``score_dataframe``: mapInPandas, Arrow), output to Parquet
  (c) the seed's pattern: the scikit-learn pipeline in a pandas UDF on Spark (the
      pipeline broadcast, loaded once per batch iterator), output to Parquet
  (d) plain scikit-learn ``predict_proba`` in one process: read, encode, predict, write

Every case reads the same Parquet input and writes its predictions. (a) is the command in
a subprocess, start-up, bundle verification and worker processes included; the Spark cases
run on one session (``--master``, default local[2]) whose start-up is not counted. The model is
the trainer's default random forest (100 trees, depth 10) on 20,000 rows.

Goals: (a) >= 5x (d); (b) >= 3x (c). Exit status 1 when one is missed.

    .venv/bin/python -m bench.batch                           # 1M and 10M rows
    .venv/bin/python -m bench.batch --sizes 200000 --cases a,d  # a quick look

Inputs are generated once into --data-dir (1M rows per file, one seed per file) and reused.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import Exported, train_and_export
from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features
from edgefleet.edge.schema import FeatureSchema

FILE_ROWS = 1_000_000
GOAL_LOCAL = 5.0  # (a) / (d)
GOAL_SPARK = 3.0  # (b) / (c)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_input(folder: Path, rows: int) -> Path:
    """``rows`` generated customers as Parquet files of at most 1M rows (cached)."""
    target = folder / f"customers-{rows}"
    if (
        target.is_dir()
        and sum(pq.ParquetFile(p).metadata.num_rows for p in target.iterdir()) == rows
    ):
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for part, start in enumerate(range(0, rows, FILE_ROWS)):
        count = min(FILE_ROWS, rows - start)
        _say(f"  generating rows {start:,}..{start + count:,}")
        frame = generate(count, seed=1000 + part).frame.drop(columns=["churn"])
        frame.insert(0, "customer_id", [f"C{start + i:09d}" for i in range(count)])
        frame.to_parquet(target / f"part-{part:03d}.parquet", row_group_size=131_072)
    return target


def case_a(exported: Exported, data: Path, out: Path) -> int:
    """The command itself, as a user runs it (its worker processes import only what the
    command needs, not this benchmark's scikit-learn and Spark)."""
    command = [
        sys.executable, "-m", "edgefleet.cli.main", "batch", "score",
        str(exported.result.bundle), "--public-key", str(exported.public_key),
        "--input", str(data), "--key", "customer_id", "--out", str(out / "a.parquet"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"(a) failed: {result.stderr[-2000:]}")
    return int(pq.ParquetFile(out / "a.parquet").metadata.num_rows)


def case_b(spark: Any, exported: Exported, data: Path, out: Path) -> int:
    from edgefleet.central.batch.spark import score_dataframe

    scored = score_dataframe(
        spark.read.parquet(str(data)),
        exported.result.bundle,
        exported.public_key,
        key_column="customer_id",
    )
    scored.select("key", "label", "score").write.mode("overwrite").parquet(str(out / "b"))
    return int(pq.ParquetDataset(str(out / "b")).read(columns=["key"]).num_rows)


def case_c(spark: Any, exported: Exported, data: Path, out: Path) -> int:
    import joblib
    from pyspark.sql.functions import col, pandas_udf  # type: ignore[attr-defined]

    schema = exported.version.load_card().schema
    pipeline_bytes = _pipeline_bytes(exported, joblib)
    shared = spark.sparkContext.broadcast(pipeline_bytes)
    names = list(schema.names)

    @pandas_udf("double")  # type: ignore[untyped-decorator]
    def churn_probability(batches: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.Series]:
        import io

        pipeline = joblib.load(io.BytesIO(shared.value))  # once per batch iterator
        for columns in batches:
            frame = pd.DataFrame(dict(zip(names, columns, strict=True)))
            inputs = encode_features(frame, schema)
            yield pd.Series(pipeline.predict_proba(inputs)[:, 1])

    frame = spark.read.parquet(str(data))
    result = frame.select(
        col("customer_id"), churn_probability(*[col(n) for n in names]).alias("score")
    )
    result.write.mode("overwrite").parquet(str(out / "c"))
    return int(pq.ParquetDataset(str(out / "c")).read(columns=["customer_id"]).num_rows)


def _pipeline_bytes(exported: Exported, joblib: Any) -> bytes:
    """The pipeline for the UDF, its estimator on one thread: each Spark task has one core,
    and nested threads on busy cores only slow (c) down."""
    import io

    pipeline = exported.version.load_pipeline()
    if hasattr(pipeline.steps[-1][1], "n_jobs"):
        pipeline.steps[-1][1].set_params(n_jobs=1)
    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer)
    return buffer.getvalue()


def case_d(exported: Exported, data: Path, out: Path) -> int:
    schema: FeatureSchema = exported.version.load_card().schema
    pipeline = exported.version.load_pipeline()
    frame = pq.read_table(data).to_pandas()
    inputs = encode_features(frame[list(schema.names)], schema)
    scores = pipeline.predict_proba(inputs)[:, 1]
    table = pa.table({"key": frame["customer_id"].astype(str), "score": scores})
    pq.write_table(table, out / "d.parquet")
    return len(scores)


def timed(label: str, function: Callable[[], int], rows: int) -> float:
    _say(f"  {label} ...")
    started = time.perf_counter()
    done = function()
    seconds = time.perf_counter() - started
    if done != rows:
        raise SystemExit(f"{label}: {done:,} rows written, expected {rows:,}")
    _say(f"  {label}: {seconds:.1f} s, {rows / seconds:,.0f} rows/s")
    return rows / seconds


def run_cases(
    cases: set[str], exported: Exported, spark: Any, data: Path, out: Path, rows: int
) -> dict[str, float]:
    runs: dict[str, tuple[str, Callable[[], int]]] = {
        "d": ("(d) scikit-learn, one process", lambda: case_d(exported, data, out)),
        "a": ("(a) batch score, ONNX", lambda: case_a(exported, data, out)),
        "c": ("(c) Spark, sklearn pandas UDF", lambda: case_c(spark, exported, data, out)),
        "b": ("(b) Spark, ONNX mapInPandas", lambda: case_b(spark, exported, data, out)),
    }
    return {case: timed(*runs[case], rows) for case in "dabc" if case in cases}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated row counts")
    parser.add_argument("--cases", default="a,b,c,d", help="which of a,b,c,d to run")
    parser.add_argument("--master", default="local[2]", help="Spark master for (b) and (c)")
    parser.add_argument("--family", default="rf")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/edgefleet-bench-batch"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = set(args.cases.split(","))

    _say(f"training and exporting {args.family} ...")
    exported = train_and_export(args.family, ("onnx",))
    spark = None
    if cases & {"b", "c"}:
        from edgefleet.central.batch.spark import spark_session

        spark = spark_session(args.master, shuffle_partitions=2, app="edgefleet-bench")
        spark.sparkContext.setLogLevel("ERROR")
    results: dict[int, dict[str, float]] = {}
    for rows in sizes:
        _say(f"{rows:,} rows:")
        data = make_input(args.data_dir, rows)
        out = args.data_dir / f"out-{rows}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        rates = run_cases(cases, exported, spark, data, out, rows)
        results[rows] = rates
        shutil.rmtree(out, ignore_errors=True)
    if spark is not None:
        spark.stop()
    return report(results, os.cpu_count() or 1, args.master)


def report(results: dict[int, dict[str, float]], cores: int, master: str) -> int:
    labels = {
        "a": "(a) edgefleet batch score, ONNX, every core",
        "b": f"(b) Spark {master}, ONNX bundle, mapInPandas",
        "c": f"(c) Spark {master}, scikit-learn in a pandas UDF",
        "d": "(d) scikit-learn predict_proba, one process",
    }
    sizes = sorted(results)
    print(f"batch scoring, rows/s ({cores} cores)")
    print(f"{'case':52}" + "".join(f"{f'{n:,} rows':>16}" for n in sizes))
    for case in "abcd":
        if any(case in results[n] for n in sizes):
            cells = "".join(
                f"{results[n][case]:>16,.0f}" if case in results[n] else f"{'-':>16}" for n in sizes
            )
            print(f"{labels[case]:52}{cells}")
    missed = False
    for name, top, base, goal in (
        ("(a)/(d)", "a", "d", GOAL_LOCAL),
        ("(b)/(c)", "b", "c", GOAL_SPARK),
    ):
        for n in sizes:
            if top in results[n] and base in results[n]:
                ratio = results[n][top] / results[n][base]
                verdict = "met" if ratio >= goal else "MISSED"
                missed |= ratio < goal
                print(f"{name} at {n:,} rows: {ratio:.2f}x (goal >= {goal:g}x: {verdict})")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
