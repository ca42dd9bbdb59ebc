"""Per task (binary, multi-class, regression: ``bench/formats_tasks.py``) the max parity
error and latency of each format against scikit-learn; then per format and model family:
artifact size, conversion time, and single-row / 1,000-row
latency in the format's runtime, with ratios to onnxruntime measured in the same run.

Runtimes: onnx in onnxruntime, tflite in LiteRT (both the edge backends devices use);
coreml in edgefleet's evaluator of the CoreML spec (CoreML itself runs only on Apple
systems, so its latency here says nothing about a phone and is printed for completeness);
web is the ONNX graph that onnxruntime-web runs in the browser (its browser latency is
measured by tests/web in Chromium, not here).

    .venv/bin/python -m bench.formats [--families rf,hgb] [--formats onnx,tflite,coreml]
    .venv/bin/python -m bench.formats --tasks-only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import median_seconds
from edgefleet.central.data.generator import generate
from edgefleet.central.data.loader import encode_features, load_training_table
from edgefleet.central.pipeline import FAMILIES
from edgefleet.central.trainer import train
from edgefleet.converters.parity import measure_parity
from edgefleet.converters.registry import EXPORT_FORMATS, ExportFormat
from edgefleet.converters.source import ConversionSource
from edgefleet.edge.backends.base import Backend

FloatArray = npt.NDArray[np.float32]


def runtime_for(fmt: str, artifact: bytes, path_dir: str) -> Backend | None:
    """The edge backend that runs ``fmt``, or None where only the converter's evaluator can."""
    if fmt in ("onnx", "web"):
        from edgefleet.edge.backends.onnx import OnnxBackend

        return OnnxBackend(artifact)
    if fmt == "tflite":
        from edgefleet.edge.backends.tflite import load

        path = Path(path_dir) / "model.tflite"
        path.write_bytes(artifact)
        return load(path)
    return None


def callers(
    spec: ExportFormat, artifact: bytes, backend: Backend | None, one: FloatArray, batch: FloatArray
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    if backend is None:
        return (lambda: spec.predict(artifact, one)), (lambda: spec.predict(artifact, batch))
    return (lambda: backend.predict_proba(one)), (lambda: backend.predict_proba(batch))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--formats", default="onnx,tflite,coreml,web")
    parser.add_argument("--rows", type=int, default=20000, help="training rows")
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--tasks-only", action="store_true", help="only the per-task table")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    from bench.formats_tasks import run as run_tasks

    run_tasks(formats, args.repeat)
    if args.tasks_only:
        return 0
    print()
    scratch = tempfile.mkdtemp(prefix="edgefleet-bench-formats-")
    data = generate(args.rows, seed=0)
    table = load_training_table(data.frame, "churn", schema=data.schema)
    fresh = load_training_table(generate(1000, seed=1).frame, "churn", schema=data.schema)
    batch = encode_features(fresh.features, data.schema)
    one = batch[:1]
    print(
        f"{'family':7} {'format':7} {'bytes':>11} {'convert s':>9} {'parity':>8} "
        f"{'1 row us':>10} {'ratio':>6} {'1000 rows us':>13} {'ratio':>6}"
    )
    for family in args.families.split(","):
        print(f"training {family} ...", file=sys.stderr)
        model = train(table, family, seed=0)
        source = ConversionSource(model.pipeline, model.schema, family, batch[:16])
        expected = model.pipeline.predict_proba(batch)
        baseline: dict[str, float] = {}
        for fmt in ["onnx", *[f for f in formats if f != "onnx"]]:
            spec = EXPORT_FORMATS[fmt]
            started = time.perf_counter()
            artifact = spec.convert(source)
            seconds = time.perf_counter() - started
            parity = measure_parity(fmt, spec.predict(artifact, batch), expected).max_abs_diff
            backend = runtime_for(fmt, artifact, scratch)
            run_one, run_many = callers(spec, artifact, backend, one, batch)
            single = median_seconds(run_one, repeat=args.repeat, warmup=5)
            many = median_seconds(run_many, repeat=max(10, args.repeat // 10), warmup=2)
            if fmt == "onnx":
                baseline = {"one": single, "many": many}
            print(
                f"{family:7} {fmt:7} {len(artifact):11,} {seconds:9.2f} {parity:8.1e} "
                f"{single * 1e6:10.1f} {single / baseline['one']:5.1f}x "
                f"{many * 1e6:13.1f} {many / baseline['many']:5.1f}x",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
