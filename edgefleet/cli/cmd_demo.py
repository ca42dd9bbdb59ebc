"""``edgefleet demo``: the main job end to end on embedded defaults.

Today's story: generate telco-churn data, train, register, export a signed bundle, verify
it as a device would, and score fresh customers (no drift, then a price increase) on the
edge runtime. Each step prints what it did; the summary shows the numbers.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from edgefleet.cli.progress import say, step


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the main job end to end on generated data",
        description="Generate data, train, export a signed bundle, verify it and score on "
        "the edge runtime, in a work folder (default ./demo-run).",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-run"),
        help="folder for data, registry, keys and bundles (replaced each run)",
    )
    demo.add_argument("--rows", type=int, default=20000, help="training rows (default 20000)")
    demo.add_argument("--model", default="rf", help="model family (default rf)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from edgefleet.central.data.generator import generate
    from edgefleet.central.data.loader import data_sha256, load_training_table, write_table
    from edgefleet.central.export import export_bundle
    from edgefleet.central.keys import generate_keys
    from edgefleet.central.registry import Registry
    from edgefleet.central.trainer import train
    from edgefleet.converters.registry import DEFAULT_FORMATS
    from edgefleet.edge.scorer import Scorer
    from edgefleet.edge.signing import load_private_key

    started = time.perf_counter()
    work: Path = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    home = work / "home"
    with step(f"generating {args.rows:,} customers (seed {args.seed})"):
        data = generate(args.rows, seed=args.seed)
        write_table(data.frame, work / "churn.csv")
    say(f"  {work / 'churn.csv'}: churn rate {(data.frame['churn'] == 'Yes').mean():.1%}")
    with step(f"training {args.model}"):
        table = load_training_table(data.frame, "churn", schema=data.schema)
        model = train(table, args.model, seed=args.seed)
        version = Registry(home).register(model, data_sha256=data_sha256(data.frame))
    say(
        f"  registered {version.label}: AUROC {model.metrics['auroc']:.3f}, "
        f"AP {model.metrics['average_precision']:.3f}"
    )
    private, public, key = generate_keys(home / "keys")
    say(f"- signing key {key} created")
    with step(f"exporting {', '.join(DEFAULT_FORMATS)} with parity checks"):
        result = export_bundle(
            version,
            DEFAULT_FORMATS,
            work / "bundle",
            load_private_key(private),
            progress=lambda m: say(f"  {m}"),
        )
    with step("verifying the bundle as a device would (signature, hashes, golden vectors)"):
        scorer = Scorer.from_bundle(result.bundle, public)
    say(
        f"  {scorer.manifest.label} on {scorer.format}: self-test max |diff| "
        f"{scorer.self_test_error:.2g}"
    )
    rows: list[tuple[str, float, float]] = []
    for scenario in ("none", "price_increase"):
        fresh = generate(2000, seed=args.seed + 1, scenario=scenario)
        records: list[dict[str, Any]] = [
            {str(k): (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in fresh.frame.drop(columns=["churn"]).to_dict("records")
        ]
        with step(f"scoring 2,000 new customers on the edge ({scenario})"):
            scores = scorer.positive(records)
        rows.append((scenario, float(scores.mean()), float((fresh.frame["churn"] == "Yes").mean())))
    say("\nsummary")
    say(f"  model          {version.label} ({version.family}), AUROC {model.metrics['auroc']:.3f}")
    for report in result.formats:
        say(f"  {report.format:14} {report.bytes:,} bytes, parity {report.parity.max_abs_diff:.2g}")
    for scenario, mean_score, rate in rows:
        say(f"  {scenario:14} mean predicted churn {mean_score:.1%}, actual {rate:.1%}")
    say(f"  finished in {time.perf_counter() - started:.1f} s; files in {work}")
    return 0
