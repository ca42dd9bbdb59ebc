"""Batch scoring throughput, rows/s, on generated customers in Parquet, in one run:

  (a) ``edgefleet batch score`` with the ONNX bundle: every core, output to Parquet
  (b) the same bundle on Spark (``score_dataframe``: mapInArrow), output to Parquet
  (c) the seed's pattern: the scikit-learn pipeline in a pandas UDF on Spark (the
      pipeline broadcast, loaded once per batch iterator), output to Parquet
  (d) plain scikit-learn ``predict_proba`` in one process: read the Parquet into pandas,
      encode as training does, predict with the pipeline as trained (its forest has
      n_jobs=2: threads on both cores), write
  (d1) the same with the forest on one thread (information: not a goal's baseline)
  (e) Spark's own cost: (b)'s read, Arrow hand-off of the same columns to the Python
      workers and write, a constant in place of the model (information: a floor)

Every case reads the same Parquet input and writes the same six columns to Parquet (key,
model, version, label, score, scored_at: what a nightly run keeps). (a) is the command in
a subprocess, interpreter start-up, imports and bundle verification included; (d) runs in
this process, its imports not counted, the pipeline's loading counted. The Spark cases run
on one session (``--master``, default local[2]) whose start-up is not counted. The model
is the trainer's default random forest (100 trees, depth 10) on 20,000 rows.

Each case also reports the CPU time of every process involved per row (this one, the
command's, Spark's JVM and Python workers), which other load on a shared machine barely
moves. The two scoring kernels are timed on the same 131,072 rows in CPU seconds of one
thread: onnxruntime's run on the bundle's float32 matrix (what (a) and (b) run per row) and
the pipeline's predict_proba (what (c) and (d) run); their ratio is the most ONNX can gain
per core. The "ceiling" lines bound the goals' ratios on an idle machine: (a) and (b) can
be no faster than the ONNX kernel alone on every core (no reading, encoding or writing),
(d) is no slower than (d1), which runs at one row per its CPU time per row, and (c)'s two
equal partitions run at ``cores`` rows per its CPU time per row; a second (b)/(c) ceiling
adds (e), what Spark itself costs per row, to the kernel.

Goals: (a) >= 5x (d); (b) >= 3x (c). Exit status 1 when one is missed.

    .venv/bin/python -m bench.batch                           # 1M and 10M rows
    .venv/bin/python -m bench.batch --sizes 200000 --cases a,d  # a quick look

Inputs are generated once into --data-dir (1M rows per file, one seed per file) and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import Exported, train_and_export
from edgefleet.central.batch.encoding import encode_batch
from edgefleet.central.batch.scoring import FILE_COLUMNS, RESULT_SCHEMA
from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features
from edgefleet.edge.scorer import Scorer

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
    scored.select(*FILE_COLUMNS).write.mode("overwrite").parquet(str(out / "b"))
    return int(pq.ParquetDataset(str(out / "b")).read(columns=["key"]).num_rows)


def case_e(spark: Any, exported: Exported, data: Path, out: Path) -> int:
    """Spark's own cost, no model: (b)'s read, hand-off of the same columns to Python
    workers through Arrow, output batches of the same schema and write, with a constant
    in place of encoding and scoring. What a Spark case cannot go below on this machine."""
    from edgefleet.central.batch.spark import OUTPUT_ARROW, OUTPUT_SCHEMA

    schema = exported.version.load_card().schema
    frame = spark.read.parquet(str(data)).select(*schema.names, "customer_id")

    def constant(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = batch.num_rows
            yield pa.RecordBatch.from_pydict(
                {
                    "key": batch.column("customer_id").cast(pa.string()),
                    "model": pa.array(["churn"] * rows),
                    "version": pa.array(["1"] * rows),
                    "label": pa.array(["no"] * rows),
                    "score": pa.array(np.zeros(rows)),
                    "probabilities": pa.array([[1.0, 0.0]] * rows, pa.list_(pa.float64())),
                    "scored_at": pa.array([0] * rows, pa.timestamp("us", tz="UTC")),
                    "reason": pa.nulls(rows, pa.string()),
                },
                schema=OUTPUT_ARROW,
            )

    scored = frame.mapInArrow(constant, OUTPUT_SCHEMA)
    scored.select(*FILE_COLUMNS).write.mode("overwrite").parquet(str(out / "e"))
    return int(pq.ParquetDataset(str(out / "e")).read(columns=["key"]).num_rows)


def case_c(spark: Any, exported: Exported, data: Path, out: Path) -> int:
    import joblib
    from pyspark.sql.functions import (  # type: ignore[attr-defined]
        col,
        current_timestamp,
        lit,
        pandas_udf,
        when,
    )

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
    probability = churn_probability(*[col(n) for n in names])
    model, classes = exported.version, [str(c) for c in schema.classes]
    result = frame.select(col("customer_id").alias("key"), probability.alias("score")).select(
        "key",
        lit(model.name).alias("model"),
        lit(model.version).alias("version"),
        when(col("score") > 0.5, classes[1]).otherwise(classes[0]).alias("label"),
        "score",
        current_timestamp().alias("scored_at"),
    )
    result.write.mode("overwrite").parquet(str(out / "c"))
    return int(pq.ParquetDataset(str(out / "c")).read(columns=["key"]).num_rows)


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


def case_d(exported: Exported, data: Path, out: Path, threads: int | None = None) -> int:
    schema = exported.version.load_card().schema
    model = exported.version
    pipeline = exported.version.load_pipeline()
    if threads is not None:
        pipeline.steps[-1][1].set_params(n_jobs=threads)
    frame = pq.read_table(data).to_pandas()
    inputs = encode_features(frame[list(schema.names)], schema)
    probabilities = pipeline.predict_proba(inputs)
    classes = np.array([str(c) for c in schema.classes])
    rows = len(probabilities)
    table = pa.table(
        {
            "key": frame["customer_id"].astype(str),
            "model": [model.name] * rows,
            "version": [model.version] * rows,
            "label": classes[probabilities.argmax(axis=1)],
            "score": probabilities[:, 1],
            "scored_at": pd.Series(pd.Timestamp.now(tz="UTC"), index=frame.index),
        },
        schema=pa.schema([RESULT_SCHEMA.field(c) for c in FILE_COLUMNS]),
    )
    pq.write_table(table, out / "d.parquet")
    return rows


def kernels(exported: Exported, data: Path) -> dict[str, float]:
    """CPU microseconds per row, one thread, of onnxruntime's run and of the pipeline's
    predict_proba on the same rows (medians of three)."""
    first = sorted(data.iterdir())[0]
    table = pq.ParquetFile(first).read_row_group(0)
    scorer = Scorer.from_bundle(exported.result.bundle, exported.public_key, format="onnx")
    matrix = encode_batch(table, scorer.manifest.schema).inputs
    pipeline = exported.version.load_pipeline()
    pipeline.steps[-1][1].set_params(n_jobs=1)
    schema = exported.version.load_card().schema
    frame = encode_features(table.to_pandas()[list(schema.names)], schema)

    def onnx() -> None:
        for start in range(0, len(matrix), 65_536):
            scorer.backend.predict_proba(matrix[start : start + 65_536])

    return {
        "onnx": _cpu_per_row(onnx, len(matrix)),
        "sklearn": _cpu_per_row(lambda: pipeline.predict_proba(frame), len(matrix)),
    }


def _cpu_per_row(function: Callable[[], Any], rows: int) -> float:
    samples = []
    for _ in range(3):
        started = time.thread_time()
        function()
        samples.append((time.thread_time() - started) / rows * 1e6)
    return statistics.median(samples)


@dataclass(frozen=True)
class Rate:
    rows_per_second: float
    cpu_us_per_row: float  # every process's CPU (this one, the command's, Spark's)


def timed(label: str, function: Callable[[], int], rows: int, spark: Any) -> Rate:
    _say(f"  {label} ...")
    cpu = _cpu_seconds(spark)
    started = time.perf_counter()
    done = function()
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds(spark) - cpu
    if done != rows:
        raise SystemExit(f"{label}: {done:,} rows written, expected {rows:,}")
    _say(f"  {label}: {seconds:.1f} s, {rows / seconds:,.0f} rows/s, {cpu:.1f} CPU s")
    return Rate(rows / seconds, cpu / rows * 1e6)


def _cpu_seconds(spark: Any) -> float:
    """CPU seconds used so far by this process, its finished children (the command of
    (a)) and Spark's JVM with its Python workers (their finished children included)."""
    import psutil

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + children.ru_utime + children.ru_stime
    if spark is not None:
        jvm = psutil.Process(spark.sparkContext._gateway.proc.pid)
        for process in (jvm, *jvm.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
    return total


def run_cases(
    cases: set[str], exported: Exported, spark: Any, data: Path, out: Path, rows: int
) -> dict[str, Rate]:
    runs: dict[str, tuple[str, Callable[[], int]]] = {
        "d": ("(d) scikit-learn, one process", lambda: case_d(exported, data, out)),
        "d1": ("(d1) the same, one thread", lambda: case_d(exported, data, out, threads=1)),
        "a": ("(a) batch score, ONNX", lambda: case_a(exported, data, out)),
        "c": ("(c) Spark, sklearn pandas UDF", lambda: case_c(spark, exported, data, out)),
        "b": ("(b) Spark, ONNX mapInArrow", lambda: case_b(spark, exported, data, out)),
        "e": ("(e) Spark, no model", lambda: case_e(spark, exported, data, out)),
    }
    return {
        case: timed(*runs[case], rows, spark)
        for case in ("d", "d1", "a", "b", "c", "e")
        if case in cases
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated row counts")
    parser.add_argument("--cases", default="a,b,c,d,d1,e", help="which of a,b,c,d,d1,e to run")
    parser.add_argument("--master", default="local[2]", help="Spark master for (b) and (c)")
    parser.add_argument("--family", default="rf")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/edgefleet-bench-batch"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = set(args.cases.split(","))

    _say(f"training and exporting {args.family} ...")
    exported = train_and_export(args.family, ("onnx",))
    spark = None
    if cases & {"b", "c", "e"}:
        from edgefleet.central.batch.spark import spark_session

        spark = spark_session(args.master, shuffle_partitions=2, app="edgefleet-bench")
        spark.sparkContext.setLogLevel("ERROR")
        warm_up(spark)
    load = [os.getloadavg()[0]]
    results: dict[int, dict[str, Rate]] = {}
    kernel: dict[str, float] = {}
    for rows in sizes:
        _say(f"{rows:,} rows:")
        data = make_input(args.data_dir, rows)
        out = args.data_dir / f"out-{rows}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        results[rows] = run_cases(cases, exported, spark, data, out, rows)
        shutil.rmtree(out, ignore_errors=True)
        kernel = kernel or kernels(exported, data)
    load.append(os.getloadavg()[0])
    if spark is not None:
        spark.stop()
    print(f"load average (1 min) at the start {load[0]:.1f}, at the end {load[1]:.1f}")
    return report(results, kernel, os.cpu_count() or 1, args.master)


def warm_up(spark: Any) -> None:
    """Start Spark's Python workers (and let the JVM compile its hot paths) before any case:
    session start-up is not counted, and whichever Spark case ran first would pay it."""
    frame = spark.range(0, 100_000, numPartitions=2)
    frame.mapInArrow(lambda batches: batches, frame.schema).count()


LABELS = {
    "a": "(a) edgefleet batch score, ONNX, every core",
    "b": "(b) Spark {master}, ONNX bundle, mapInArrow",
    "c": "(c) Spark {master}, scikit-learn in a pandas UDF",
    "d": "(d) scikit-learn predict_proba, one process",
    "d1": "(d1) the same, the forest on one thread",
    "e": "(e) Spark {master}, no model: Spark's own cost",
}


def report(
    results: dict[int, dict[str, Rate]], kernel: dict[str, float], cores: int, master: str
) -> int:
    sizes = sorted(results)
    print(f"batch scoring, rows/s and CPU us/row of every process involved ({cores} cores)")
    print(f"{'case':52}" + "".join(f"{f'{n:,} rows':>16}{'CPU us/row':>12}" for n in sizes))
    for case, label in LABELS.items():
        if any(case in results[n] for n in sizes):
            cells = "".join(
                f"{results[n][case].rows_per_second:>16,.0f}{results[n][case].cpu_us_per_row:>12.1f}"
                if case in results[n]
                else f"{'-':>16}{'-':>12}"
                for n in sizes
            )
            print(f"{label.format(master=master):52}{cells}")
    print(
        f"kernels, CPU us/row on one thread: onnxruntime {kernel['onnx']:.2f}, scikit-learn "
        f"{kernel['sklearn']:.2f} ({kernel['sklearn'] / kernel['onnx']:.2f}x per core)"
    )
    missed = False
    for name, top, base, goal in (
        ("(a)/(d)", "a", "d", GOAL_LOCAL),
        ("(b)/(c)", "b", "c", GOAL_SPARK),
    ):
        for n in sizes:
            if top in results[n] and base in results[n]:
                ratio = results[n][top].rows_per_second / results[n][base].rows_per_second
                missed |= ratio < goal
                verdict = "met" if ratio >= goal else "MISSED"
                print(f"{name} at {n:,} rows: {ratio:.2f}x (goal >= {goal:g}x: {verdict})")
    for n in sizes:
        _ceilings(results[n], kernel["onnx"], cores, n)
    return 1 if missed else 0


def _ceilings(rates: dict[str, Rate], onnx: float, cores: int, rows: int) -> None:
    """The most the goals' ratios could be on an idle machine, from CPU per row (which load
    barely changes): (a) and (b) can do no better than the ONNX kernel alone on every core.
    (d) is at least as fast as (d1), which on an idle core runs at 1 / its CPU per row;
    (c)'s two equal partitions run at ``cores`` / its CPU per row."""
    if "d1" in rates:
        bound = cores * rates["d1"].cpu_us_per_row / onnx
        why = f"{cores} x (d1)'s CPU per row / kernel"
        print(f"ceiling of (a)/(d) at {rows:,} rows: {bound:.2f}x ({why})")
    if "c" in rates:
        bound = rates["c"].cpu_us_per_row / onnx
        print(f"ceiling of (b)/(c) at {rows:,} rows: {bound:.2f}x ((c)'s CPU per row / kernel)")
    if "c" in rates and "e" in rates:
        floor = rates["e"].cpu_us_per_row + onnx
        bound = rates["c"].cpu_us_per_row / floor
        why = "(c)'s CPU per row / ((e)'s + kernel): Spark's own cost included"
        print(f"ceiling of (b)/(c) at {rows:,} rows: {bound:.2f}x ({why})")


if __name__ == "__main__":
    sys.exit(main())
