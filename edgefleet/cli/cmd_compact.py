"""``edgefleet reports compact``: roll up, fold and expire the monitor database's rows
(retention: raw reports 7 days, minute rollups 30 days, hour rollups a year)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from edgefleet.cli.cmd_monitor import db_option, open_store

COMPACT_EPILOG = """\
What is kept (by the end of the report windows; each is configurable):
  raw reports      7 days   device pages, the device scopes of alerts, the partial
                            minutes at the edges of a window
  minute rollups  30 days   fleet, cohort and group measures at minute resolution
  hour rollups   365 days   the same at hour resolution (drift over "all", the timeline)

Before deleting, reports stored without rollups (by SQL, an older edgefleet, a restored
backup) are rolled up, and the rollup rows several monitors wrote for one bucket are folded
into one. Safe while monitors ingest: every step is a short transaction of its own.
`edgefleet watch --compact-every SECONDS` runs it as it watches.

examples:
  edgefleet reports compact
  edgefleet reports compact --db postgresql://monitor@db/edgefleet --raw-days 3
  edgefleet reports compact --raw-days 14 --minute-days 60 --hour-days 730
"""


def days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of days, not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"a positive number of days, not {text!r}")
    return value


def retention_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--raw-days", type=days, default=7.0, metavar="DAYS", help="keep raw reports (7)"
    )
    parser.add_argument(
        "--minute-days", type=days, default=30.0, metavar="DAYS", help="keep minute rollups (30)"
    )
    parser.add_argument(
        "--hour-days", type=days, default=365.0, metavar="DAYS", help="keep hour rollups (365)"
    )


def add_compact(actions: Any) -> None:
    compact = actions.add_parser(
        "compact",
        help="roll up, fold and delete expired reports and rollups (retention)",
        description="Apply the retention periods to the monitor database.",
        epilog=COMPACT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    retention_options(compact)
    db_option(compact)
    compact.set_defaults(handler=run_compact)


def retention_of(args: argparse.Namespace) -> Any:
    from edgefleet.central.monitor.retention import Retention

    return Retention(args.raw_days, args.minute_days, args.hour_days)


def run_compact(args: argparse.Namespace) -> int:
    from edgefleet.central.monitor.retention import compact

    retention = retention_of(args)
    store = open_store(args)
    try:
        print(
            f"compacting {store.display}: raw reports {args.raw_days:g} days, minute rollups "
            f"{args.minute_days:g} days, hour rollups {args.hour_days:g} days"
        )
        done = compact(store, retention, progress=print)
    finally:
        store.close()
    print(
        f"done in {done.seconds:.1f} s: {done.rolled_up:,} report(s) rolled up, "
        f"{done.folded:,} rollup row(s) folded, {done.raw_deleted:,} raw report(s), "
        f"{done.minute_deleted:,} minute and {done.hour_deleted:,} hour rollup row(s) deleted"
    )
    return 0
