"""``edgefleet train`` and ``edgefleet models``."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgefleet.cli.progress import say, step
from edgefleet.errors import InputError

TRAIN_EPILOG = """\
examples:
  edgefleet train --data churn.csv --target churn --model rf
  edgefleet train --data my.parquet --target Churn --positive-class Yes --model hgb \\
      --param max_iter=300 --param learning_rate=0.05
  edgefleet train --data my.csv --target churned --schema schema.json
  edgefleet train --data churn.csv --target churn --segment senior_citizen --segment region

families: logreg, rf (random forest), gb (gradient boosting), hgb (histogram gradient
boosting), et (extra trees), dt (decision tree). Without --schema the feature schema is
inferred: numeric columns stay numeric, text columns become categorical. --segment marks
a feature whose groups the monitor compares for fairness (categorical, or whole numbers
0..15 with --schema bounds); devices then report per-group histograms.
"""


def _parse_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def register(subparsers: Any) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a model and register it as a new version",
        description="Train a scikit-learn pipeline on a CSV/Parquet table, measure it on a "
        "stratified holdout and register it as a new model version.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--data", type=Path, required=True, help="CSV or Parquet training table")
    train.add_argument("--target", required=True, help="the column to predict (two classes)")
    train.add_argument("--model", default="rf", help="model family (default: rf)")
    train.add_argument(
        "--name",
        help="model name in the registry (default: the data file's name: customers.csv "
        "trains 'customers')",
    )
    train.add_argument("--schema", type=Path, help="feature schema JSON (default: inferred)")
    train.add_argument("--positive-class", help="the class whose probability is the score")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument(
        "--holdout",
        type=float,
        default=0.25,
        help="share of rows held out for metrics and parity (default: 0.25)",
    )
    train.add_argument(
        "--segment",
        action="append",
        default=[],
        metavar="FEATURE",
        help="a segment feature for fairness monitoring, repeatable (at most 4)",
    )
    train.add_argument(
        "--param",
        type=_parse_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="estimator parameter, repeatable",
    )
    train.set_defaults(handler=run_train)

    models = subparsers.add_parser("models", help="list registered model versions")
    models.add_argument("--name", help="only this model")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(handler=run_models)


def name_from_path(path: Path) -> str:
    """A registry name from a data file's name: ``Telco Customers.csv`` -> ``telco-customers``."""
    name = re.sub(r"[^a-z0-9_-]+", "-", Path(path).stem.lower()).strip("-_")
    if not name:
        raise InputError(
            f"cannot name a model after {Path(path).name!r}: give it a name with --name NAME"
        )
    return name


def run_train(args: argparse.Namespace) -> int:
    from edgefleet.central.data.loader import data_sha256, load_training_table, read_table
    from edgefleet.central.registry import Registry
    from edgefleet.central.trainer import train
    from edgefleet.edge.schema import FeatureSchema

    if not 0.05 <= args.holdout <= 0.5:
        raise InputError("--holdout must be between 0.05 and 0.5")
    schema = None
    if args.schema:
        try:
            schema = FeatureSchema.from_dict(json.loads(args.schema.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"cannot read schema {args.schema}: {error}") from None
    with step(f"loading {args.data}"):
        frame = read_table(args.data)
        table = load_training_table(
            frame, args.target, schema=schema, positive_class=args.positive_class
        )
    if args.segment:
        table = replace(table, schema=_with_segments(table, args.segment))
    say(
        f"  {len(table.labels):,} rows, {table.schema.n_features} features, "
        f"{table.labels.mean():.1%} {table.schema.classes[1]!r}"
    )
    with step(f"training {args.model}"):
        model = train(
            table, args.model, seed=args.seed, holdout=args.holdout, params=dict(args.param)
        )
    registry = Registry(args.home)
    name = args.name or name_from_path(args.data)
    version = registry.register(model, name=name, data_sha256=data_sha256(frame))
    how = "" if args.name else " (named after the data file; --name NAME to choose)"
    say(f"registered {version.label} ({version.family}) in {registry.url}{how}")
    for key in ("auroc", "average_precision", "log_loss", "brier", "calibration_error"):
        say(f"  {key:18} {model.metrics[key]:.4f}")
    print(version.version)
    return 0


def run_models(args: argparse.Namespace) -> int:
    from edgefleet.central.registry import Registry

    versions = Registry(args.home).versions(args.name)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": v.name,
                        "version": v.version,
                        "family": v.family,
                        "created": v.created.isoformat(),
                        "metrics": v.metrics,
                        "data_sha256": v.data_sha256,
                        "params": v.params,
                    }
                    for v in versions
                ],
                indent=1,
            )
        )
        return 0
    if not versions:
        say(f"no models registered in {args.home}: train one with 'edgefleet train'")
        return 0
    print(f"{'name':12} {'version':9} {'family':7} {'auroc':>6} {'ap':>6} {'rows':>8}  created")
    for v in versions:
        print(
            f"{v.name:12} {v.version:9} {v.family:7} {_metric(v.metrics, 'auroc')} "
            f"{_metric(v.metrics, 'average_precision')} {v.train_rows:8,}  "
            f"{v.created:%Y-%m-%d %H:%M}{_task_metrics(v.metrics)}"
        )
    return 0


def _metric(metrics: Any, key: str) -> str:
    return f"{metrics[key]:6.3f}" if key in metrics else f"{'-':>6}"


def _task_metrics(metrics: Any) -> str:
    """A multi-class or regression version's holdout metrics (it has no AUROC or AP)."""
    from edgefleet.central.metrics import HEADLINE_METRICS

    for task in ("multiclass", "regression"):
        if HEADLINE_METRICS[task][0] in metrics and "auroc" not in metrics:
            shown = [f"{k} {metrics[k]:.3f}" for k in HEADLINE_METRICS[task] if k in metrics]
            return f"  ({task}: {', '.join(shown)})"
    return ""


def _with_segments(table: Any, names: list[str]) -> Any:
    """The table's schema with ``names`` as segment features. An inferred numeric feature
    has no bounds; one whose values are whole numbers 0..15 (a flag, a small code) gets
    them from the data, since a segment's levels are its whole values."""
    from edgefleet.edge.schema import NumericFeature

    features = []
    for feature in table.schema.features:
        if feature.name in names and isinstance(feature, NumericFeature):
            values = table.features[feature.name].dropna()
            whole = bool(len(values)) and bool((values == values.round()).all())
            if feature.maximum is None and whole and values.min() >= 0 and values.max() < 16:
                feature = replace(feature, minimum=0.0, maximum=float(max(values.max(), 1)))
        features.append(feature)
    return replace(table.schema, features=tuple(features), segments=tuple(names))
