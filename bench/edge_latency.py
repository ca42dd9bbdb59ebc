"""Edge scoring latency: the Scorer against a raw onnxruntime session and scikit-learn.

Measured in one run on the same model (random forest, 100 trees, depth 10, trained on
20,000 generated rows), so that the ratios hold even on a noisy machine. The raw session
uses the Scorer's session options (one thread), so the ratio is the Scorer's own overhead:
encoding and validating records, and the call itself.

Targets: one dict record <= 2x the raw session; a batch of 1,000 (encoded array) <= 1.2x;
sketching a scored batch of 1,000 for the monitor's report (``SketchBuilder.add``: every
feature's histogram, the scores, the latency) <= 0.5x scoring it with the Scorer, so that
monitoring costs a device less than the model does. Exit status 1 when a target is missed.

    .venv/bin/python -m bench.edge_latency [--family rf] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.common import median_seconds, train_and_export
from edgefleet.central.data.generator import generate
from edgefleet.edge.backends.onnx import session_options
from edgefleet.edge.scorer import Scorer
from edgefleet.edge.sketch_builder import SketchBuilder

TARGET_ONE = 2.0
TARGET_BATCH = 1.2
TARGET_SKETCH = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="rf")
    parser.add_argument("--repeat", type=int, default=2000, help="timed calls per single-row case")
    args = parser.parse_args()

    print(f"training and exporting {args.family} ...", file=sys.stderr)
    exported = train_and_export(args.family, ("onnx",))
    pipeline = exported.version.load_pipeline()
    scorer = Scorer.from_bundle(exported.result.bundle, exported.public_key, format="onnx")
    session = ort.InferenceSession(
        str(exported.result.bundle / "model.onnx"),
        sess_options=session_options(1),
        providers=["CPUExecutionProvider"],
    )

    fresh = generate(1000, seed=99).frame.drop(columns=["churn"])
    records: list[dict[str, Any]] = [
        {str(k): (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in fresh.to_dict("records")
    ]
    batch = scorer.encode(records)
    one_record, one_row = records[0], batch[:1]
    assert np.allclose(
        scorer.score(one_record), session.run(["probabilities"], {"input": one_row})[0]
    )

    repeat_batch = max(20, args.repeat // 20)
    builder = SketchBuilder.from_manifest(scorer.manifest)
    batch_scores = scorer.score(batch)[:, 1]
    timings = {
        ("1 row", "raw onnxruntime"): median_seconds(
            lambda: session.run(["probabilities"], {"input": one_row}), repeat=args.repeat
        ),
        ("1 row", "Scorer, dict"): median_seconds(
            lambda: scorer.score(one_record), repeat=args.repeat
        ),
        ("1 row", "Scorer, array"): median_seconds(
            lambda: scorer.score(one_row), repeat=args.repeat
        ),
        ("1 row", "scikit-learn"): median_seconds(
            lambda: pipeline.predict_proba(one_row), repeat=max(50, args.repeat // 20)
        ),
        ("1000 rows", "raw onnxruntime"): median_seconds(
            lambda: session.run(["probabilities"], {"input": batch}), repeat=repeat_batch
        ),
        ("1000 rows", "Scorer, array"): median_seconds(
            lambda: scorer.score(batch), repeat=repeat_batch
        ),
        ("1000 rows", "Scorer, dicts"): median_seconds(
            lambda: scorer.score(records), repeat=repeat_batch
        ),
        ("1000 rows", "sketch the batch"): median_seconds(
            lambda: builder.add(batch, batch_scores, 0.001), repeat=repeat_batch
        ),
        ("1000 rows", "scikit-learn"): median_seconds(
            lambda: pipeline.predict_proba(batch), repeat=max(10, repeat_batch // 4)
        ),
    }
    print(f"\nedge scoring latency, {args.family}, onnxruntime {ort.__version__}, medians")
    print(f"{'case':10} {'path':17} {'median':>12} {'vs raw onnxruntime':>20}")
    for (case, path), seconds in timings.items():
        ratio = seconds / timings[(case, "raw onnxruntime")]
        print(f"{case:10} {path:17} {seconds * 1e6:10.1f} us {ratio:19.2f}x")
    one = timings[("1 row", "Scorer, dict")] / timings[("1 row", "raw onnxruntime")]
    many = timings[("1000 rows", "Scorer, array")] / timings[("1000 rows", "raw onnxruntime")]
    sketched = timings[("1000 rows", "sketch the batch")]
    sketch = sketched / timings[("1000 rows", "Scorer, array")]
    per_feature = sketched / scorer.manifest.schema.n_features
    checks = [
        (
            f"one dict record: Scorer / raw = {one:.2f}x (target <= {TARGET_ONE}x)",
            one <= TARGET_ONE,
        ),
        (
            f"batch of 1,000: Scorer / raw = {many:.2f}x (target <= {TARGET_BATCH}x)",
            many <= TARGET_BATCH,
        ),
        (
            f"sketching a batch of 1,000 / scoring it = {sketch:.2f}x (target <= "
            f"{TARGET_SKETCH}x; {per_feature * 1e6:.0f} us per feature)",
            sketch <= TARGET_SKETCH,
        ),
    ]
    print()
    for text, ok in checks:
        print(("PASS " if ok else "FAIL ") + text)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
