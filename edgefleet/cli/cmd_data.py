"""``edgefleet data``: generate synthetic telco-churn tables and list the drift scenarios.

pandas and numpy are imported inside the handlers: registering these commands must work on
a device that has only the edge extras installed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgefleet.cli.progress import say

GENERATE_EPILOG = """\
examples:
  edgefleet data generate --rows 20000 --out churn.csv
  edgefleet data generate --rows 5000 --seed 7 --scenario price_increase --out drifted.parquet
  edgefleet data generate --scenario network_outage --drift-strength 0.5 --out outage.csv

The same --rows, --seed, --scenario and --drift-strength always give the same table.
Run 'edgefleet data scenarios' for the scenario names.
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    data = subparsers.add_parser(
        "data",
        help="generate synthetic telco-churn data and list drift scenarios",
        description="Synthetic telco-churn data, with scenarios that drift it in known ways.",
    )
    data.set_defaults(handler=lambda args: _print_help(data))
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    _register_generate(commands)
    scenarios = commands.add_parser(
        "scenarios",
        help="list the drift scenarios of 'data generate'",
        description="List the drift scenarios that 'edgefleet data generate' can apply.",
    )
    scenarios.set_defaults(handler=run_scenarios)


def _register_generate(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "generate",
        help="write a synthetic telco-churn table (.csv or .parquet)",
        description="Write a synthetic telco-churn table: 17 features and the target 'churn'.",
        epilog=GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=20000, help="number of rows (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--scenario",
        default="none",
        metavar="NAME",
        help="drift scenario (default none; see 'edgefleet data scenarios')",
    )
    parser.add_argument(
        "--drift-strength",
        type=float,
        default=1.0,
        metavar="X",
        help="scale of the scenario's change: 0 = no drift, 1 = as documented (default 1.0)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="output file, .csv or .parquet"
    )
    parser.set_defaults(handler=run_generate)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_generate(args: argparse.Namespace) -> int:
    from edgefleet.central.data.generator import generate
    from edgefleet.central.data.loader import table_format, write_table

    # Refuse a bad suffix before spending time on generation.
    table_format(args.out)
    data = generate(
        args.rows, seed=args.seed, scenario=args.scenario, drift_strength=args.drift_strength
    )
    write_table(data.frame, args.out)
    say(
        f"wrote {len(data.frame):,} rows x {data.schema.n_features} features "
        f"(+ target {data.schema.target!r}) to {args.out}"
    )
    drift = "" if args.scenario == "none" else f" at drift strength {args.drift_strength:g}"
    rate = f"{100 * data.churn_rate:.1f} %"
    say(f"churn rate {rate}; scenario {args.scenario}{drift}, seed {args.seed}")
    return 0


def run_scenarios(args: argparse.Namespace) -> int:
    from edgefleet.central.data.generator import SCENARIOS

    width = max(len(name) for name in SCENARIOS)
    for name, description in SCENARIOS.items():
        print(f"{name:<{width}}  {description}")
    return 0
