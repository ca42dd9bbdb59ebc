"""``edgefleet register``: bring a fitted scikit-learn model of your own."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgefleet.cli.progress import say, step

REGISTER_EPILOG = """\
examples:
  edgefleet register churn_pipeline.joblib --reference churn.csv --target churn
  edgefleet register model.pkl --reference holdout.parquet --target label --name fraud
  edgefleet register mlruns/0/abc123/artifacts/model --reference ref.csv --target churn \\
      --name churn --version 2.0.0

MODEL is a joblib or pickle file of a fitted scikit-learn estimator or Pipeline, or an
MLflow model folder (the sklearn flavour; its MLmodel file and signature are read, no
MLflow installation or tracking server needed).

WARNING: loading a pickle or joblib file runs code that the file's author chose. Register
only files you made or trust; edgefleet loads the one file you name and nothing else.

The input schema comes from the pipeline (its columns, its ColumnTransformer, its encoders'
categories, the MLflow signature) and is checked against the reference data, which also
gives the reference profile, the metrics and the golden vectors (rows the model has not
been trained on are best). A step edgefleet cannot convert is refused before anything is
written; 'edgefleet formats' lists what is covered.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "register",
        help="register a fitted scikit-learn model you bring (joblib, pickle, MLflow)",
        description="Read a fitted scikit-learn pipeline, derive its schema, check it on "
        "reference data and register it as a new model version, ready to export.",
        epilog=REGISTER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="joblib/pickle file or MLflow model folder")
    parser.add_argument(
        "--reference", type=Path, required=True, help="CSV or Parquet with the features and target"
    )
    parser.add_argument("--target", required=True, help="the target column in --reference")
    parser.add_argument("--name", help="model name in the registry (default: the file's name)")
    parser.add_argument("--version", help="MAJOR.MINOR.PATCH (default: the next minor version)")
    parser.set_defaults(handler=run_register)


def run_register(args: argparse.Namespace) -> int:
    from edgefleet.central.byo.register import register_model

    with step(f"registering {args.model}"):
        result = register_model(
            args.model,
            args.reference,
            args.target,
            home=args.home,
            name=args.name,
            version=args.version,
            progress=lambda message: say(f"  {message}"),
        )
    version, model = result.version, result.model
    say(f"registered {version.label} ({version.family}) from {result.source}")
    schema = model.schema
    if schema.task == "regression":
        outputs = f"a value of {schema.target!r} (regression)"
    elif schema.task == "multiclass":
        outputs = f"{len(schema.classes)} classes {list(schema.classes)}"
    else:
        outputs = f"classes {list(schema.classes)} (positive {schema.classes[1]!r})"
    say(f"  schema: {schema.n_features} features, {outputs}")
    say(
        f"  agrees with your pipeline on {result.agreement.rows:,} rows: max |diff| "
        f"{result.agreement.max_abs_diff:.2g}"
    )
    from edgefleet.central.metrics import DECISION_NOTE, HEADLINE_METRICS

    for key in HEADLINE_METRICS[schema.task]:
        if key in model.metrics:
            say(f"  {key:18} {model.metrics[key]:.4f}")
    if schema.scores_only:
        say(f"  {DECISION_NOTE}")
    print(version.version)
    return 0
