"""``edgefleet alerts``, ``decisions``, ``retrain`` and ``watch``: the monitor's alerts, the
closed loop's decisions, a retrain on demand, and the loop running window after window."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.cli.cmd_broker import add_broker_options, broker_from_args
from edgefleet.cli.cmd_compact import retention_of, retention_options
from edgefleet.cli.lifetime import add_lifetime_option
from edgefleet.cli.progress import say

if TYPE_CHECKING:
    from edgefleet.central.keeper import RetainedKeeper
    from edgefleet.central.monitor.alerts import AlertRules
    from edgefleet.central.monitor.loop import RetrainLoop
    from edgefleet.central.monitor.store import MonitorStore

DATA_HELP = (
    "newest labelled data: a folder of .csv/.parquet files (newest first), one file, or "
    "'package.module:function' returning a pandas DataFrame"
)

LOOP_EPILOG = """\
examples:
  edgefleet retrain --fleet shops --data labelled/
  edgefleet watch --fleet shops --data labelled/ --window 300
  edgefleet watch --fleet shops --data labelled/ --reference-data churn.csv --min-gain 0.005
  edgefleet alerts --fleet shops --open
  edgefleet decisions --fleet shops

Every step is recorded with its numbers: 'edgefleet decisions --fleet NAME'.
A candidate ships only when it beats the running model with confidence (a paired bootstrap
interval on held-out newest rows) or fixes a calibration alert; otherwise the loop opens an
escalation alert ('edgefleet alerts --open') and does not retrain until the data changes.
'watch' also re-signs the fleet's rollout state when less than a third of its --lifetime
is left (devices refuse an expired state), as 'edgefleet rollout refresh' does by hand.
"""


def default_db_url(home: Path) -> str:
    """``sqlite:///HOME/monitor.db``: the monitor database beside the registry."""
    return f"sqlite:///{Path(home) / 'monitor.db'}"


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        help="monitor database: sqlite:///FILE or postgresql://... (default: HOME/monitor.db)",
    )


def _loop_options(parser: argparse.ArgumentParser, identity: str) -> None:
    parser.add_argument("--fleet", required=True, help="fleet name")
    parser.add_argument("--data", required=True, metavar="SOURCE", help=DATA_HELP)
    parser.add_argument(
        "--compare-data",
        metavar="SOURCE",
        help="separate labelled data to compare candidate and running model on "
        "(default: a quarter of the newest rows, held out of training)",
    )
    parser.add_argument(
        "--rules",
        type=Path,
        metavar="FILE",
        help="alert rules (TOML); every key and its default: alerts.example.toml in the "
        "edgefleet.central.monitor package",
    )
    parser.add_argument(
        "--canary", type=int, default=20, metavar="PERCENT", help="canary share (default 20)"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="monitoring window (default 60); a whole number of minutes is checked on "
        "whole minutes, read from rollups alone (the newest partial minute waits for the "
        "next window)",
    )
    parser.add_argument(
        "--canary-windows",
        type=int,
        default=3,
        help="windows to watch a canary before promoting it (default 3)",
    )
    parser.add_argument(
        "--max-canary-windows",
        type=int,
        default=12,
        help="windows after which a canary short of evidence is rolled back (default 12)",
    )
    parser.add_argument(
        "--min-canary-reports",
        type=int,
        default=5,
        help="canary reports needed to promote (default 5)",
    )
    parser.add_argument(
        "--max-rows", type=int, default=50_000, help="newest rows to train on (default 50000)"
    )
    parser.add_argument(
        "--reference-data",
        metavar="SOURCE",
        help="the running model's training data (same forms as --data): lets the candidate "
        "learn from it, or from it and the newest rows with recency weights, whichever "
        "validates best (default: the newest rows alone)",
    )
    parser.add_argument(
        "--metric",
        choices=("auroc", "log_loss"),
        default="auroc",
        help="what 'better' means when candidate and running model are compared (default auroc)",
    )
    parser.add_argument(
        "--min-gain",
        type=float,
        default=0.0,
        help="the candidate ships only if the lower bound of its gain's interval is above "
        "this (default 0: better with confidence); else the loop escalates to a person",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="confidence of the paired bootstrap interval of the gain (default 0.95)",
    )
    parser.add_argument("--formats", help="formats to export (default: all)")
    add_lifetime_option(parser)
    parser.add_argument("--key", type=Path, help="signing key (default: HOME/keys/edgefleet.key)")
    parser.add_argument(
        "--prefix", default="edgefleet", help="first topic level (default: edgefleet)"
    )
    _db_option(parser)
    add_broker_options(parser, identity)


def register(subparsers: Any) -> None:
    alerts = subparsers.add_parser(
        "alerts",
        help="list a fleet's alerts with the numbers that triggered them",
        description="Alerts raised by the monitor's rules (edgefleet watch), newest last, "
        "each with its statistic, threshold, scope and counts.",
    )
    alerts.add_argument("--fleet", required=True, help="fleet name")
    alerts.add_argument("--open", action="store_true", help="only alerts still open")
    alerts.add_argument("--json", action="store_true", help="print JSON")
    _db_option(alerts)
    alerts.set_defaults(handler=run_alerts)

    add_decisions_command(subparsers, "decisions")

    retrain = subparsers.add_parser(
        "retrain",
        help="retrain on the newest labelled data and publish a canary if it is better",
        description="Check the running model, retrain it (same family and parameters) on the "
        "newest labelled data, compare candidate and running model on held-out recent data "
        "(paired bootstrap interval), and when the candidate is better with confidence, "
        "export every format with parity and publish it as a canary ('edgefleet watch' then "
        "promotes or rolls it back on the canary's evidence); when it is not, open an "
        "escalation alert for a person.",
        epilog=LOOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _loop_options(retrain, "publisher")
    retrain.add_argument(
        "--if-alert",
        action="store_true",
        help="retrain only if the last window raises a drift or performance alert",
    )
    retrain.set_defaults(handler=run_retrain)

    watch = subparsers.add_parser(
        "watch",
        help="monitor a fleet and retrain, canary, promote or roll back automatically",
        description="Store the fleet's reports and, every window: evaluate the canary if one "
        "is out (promote or roll back), otherwise measure the stable model at every scope and "
        "raise alerts; on a drift or performance alert, retrain and publish a canary.",
        epilog=LOOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Stores reports (monitor) and publishes canaries (publisher): one identity with both.
    _loop_options(watch, "watch")
    watch.add_argument(
        "--no-ingest",
        action="store_true",
        help="do not subscribe to reports (another 'edgefleet' monitor stores them)",
    )
    watch.add_argument(
        "--client-id",
        help="MQTT client id of the report subscription: given, the session persists and "
        "reports sent while watch is stopped wait for it (default: a fresh session)",
    )
    watch.add_argument(
        "--steps", type=int, help="stop after this many windows (default: until Ctrl-C)"
    )
    watch.add_argument(
        "--keep-seconds",
        type=float,
        default=30.0,
        help="how often to check that the broker still holds the fleet's rollout state and "
        "models, re-publishing what it lost (default: 30; 0 turns it off)",
    )
    watch.add_argument(
        "--compact-every",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="apply the retention (as 'edgefleet reports compact') this often "
        "(default: 3600; 0 turns it off)",
    )
    retention_options(watch)
    watch.set_defaults(handler=run_watch)


def add_decisions_command(subparsers: Any, name: str = "history") -> None:
    """The decisions listing as command ``name`` of ``subparsers``: ``edgefleet decisions``
    here, and ``edgefleet rollout history`` when the rollout group adds it."""
    decisions = subparsers.add_parser(
        name,
        help="list the closed loop's decisions with their evidence",
        description="What the retrain loop decided (check, retrained, accepted or rejected, "
        "canary, promoted or rolled_back), oldest first, with the numbers behind each.",
    )
    decisions.add_argument("--fleet", required=True, help="fleet name")
    decisions.add_argument("--json", action="store_true", help="print JSON")
    decisions.add_argument(
        "--brief", action="store_true", help="one line per decision, without its evidence"
    )
    _db_option(decisions)
    decisions.set_defaults(handler=run_decisions)


def _store(args: argparse.Namespace) -> MonitorStore:
    from edgefleet.central.monitor.store import MonitorStore

    if args.db is None:
        Path(args.home).mkdir(parents=True, exist_ok=True)
    return MonitorStore(args.db or default_db_url(Path(args.home)))


def _rules(args: argparse.Namespace) -> AlertRules:
    from edgefleet.central.monitor.alerts import AlertRules

    return AlertRules.from_toml(args.rules) if args.rules else AlertRules()


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def run_alerts(args: argparse.Namespace) -> int:
    from edgefleet.central.monitor.alerts import describe

    store = _store(args)
    found = store.alerts(args.fleet, open_only=args.open)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": a.id,
                        "created": a.created,
                        "rule": a.rule,
                        "scope": a.scope,
                        "subject": a.subject,
                        "value": a.value,
                        "threshold": a.threshold,
                        "status": a.status,
                        "evidence": dict(a.evidence),
                    }
                    for a in found
                ],
                indent=1,
            )
        )
        return 0
    if not found:
        print(f"no {'open ' if args.open else ''}alerts for fleet {args.fleet}")
        return 0
    for alert in found:
        print(f"#{alert.id} {_when(alert.created)} [{alert.status}] {describe(alert)}")
    return 0


def run_decisions(args: argparse.Namespace) -> int:
    store = _store(args)
    found = store.decisions(args.fleet)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": d.id,
                        "created": d.created,
                        "action": d.action,
                        "model_version": d.model_version,
                        "reason": d.reason,
                        "evidence": dict(d.evidence),
                    }
                    for d in found
                ],
                indent=1,
            )
        )
        return 0
    if not found:
        print(f"no decisions recorded for fleet {args.fleet}")
        return 0
    for decision in found:
        print(
            f"#{decision.id} {_when(decision.created)} {decision.action:13} "
            f"{decision.model_version:9} {decision.reason}"
        )
        if not args.brief:
            text = json.dumps(dict(decision.evidence), indent=1, sort_keys=True)
            print("    " + text.replace("\n", "\n    "))
    return 0


def _loop(args: argparse.Namespace, store: MonitorStore) -> RetrainLoop:
    from edgefleet.central.keys import PRIVATE_NAME, default_key_dir
    from edgefleet.central.monitor.loop import RetrainLoop
    from edgefleet.converters.registry import parse_formats
    from edgefleet.edge.signing import load_private_key

    key = load_private_key(args.key or default_key_dir(Path(args.home)) / PRIVATE_NAME)
    return RetrainLoop(
        args.fleet,
        Path(args.home),
        store,
        broker_from_args(args),
        key,
        args.data,
        canary_percent=args.canary,
        canary_windows=args.canary_windows,
        max_canary_windows=args.max_canary_windows,
        min_canary_reports=args.min_canary_reports,
        window_seconds=args.window,
        rules=_rules(args),
        formats=parse_formats(args.formats),
        max_rows=args.max_rows,
        compare_source=args.compare_data,
        reference_source=args.reference_data,
        metric=args.metric,
        min_gain=args.min_gain,
        confidence=args.confidence,
        prefix=args.prefix,
        progress=lambda m: say(f"  {m}"),
        lifetime=args.lifetime,
        # Windows of whole minutes read rollups alone, whatever the fleet's size.
        whole_minutes=True,
    )


def run_retrain(args: argparse.Namespace) -> int:
    store = _store(args)
    loop = _loop(args, store)
    result = loop.run(force=not args.if_alert)
    print(f"{result.action}: {result.message}")
    return 0


def run_watch(args: argparse.Namespace) -> int:
    store = _store(args)
    loop = _loop(args, store)
    monitor = None
    if not args.no_ingest:
        from edgefleet.central.monitor.ingest import Monitor
        from edgefleet.central.monitor.validation import CachedProfiles, profiles_of_registry

        monitor = Monitor(
            args.fleet,
            broker_from_args(args),
            store,
            # Reports of versions this home never trained, or that do not fit their
            # version's profile, are quarantined, not measured.
            known_version=CachedProfiles(profiles_of_registry(loop.registry.versions)),
            client_id=args.client_id,
            prefix=args.prefix,
        )
        monitor.start()
        say(f"storing the reports of fleet {args.fleet}; a step every {args.window:g} s")
    keeper = _keeper(args, loop)
    try:
        step = 0
        _refresh(args, loop)  # a state that expired while nothing watched, at once
        compacted = time.monotonic()
        while args.steps is None or step < args.steps:
            time.sleep(loop.window_seconds)
            step += 1
            _refresh(args, loop)
            _step(loop)
            if args.compact_every > 0 and time.monotonic() - compacted >= args.compact_every:
                compacted = time.monotonic()
                _compact(args, store)
    finally:
        if monitor is not None:
            monitor.stop()
        if keeper is not None:
            keeper.stop()
    return 0


def _step(loop: RetrainLoop) -> None:
    from edgefleet.errors import EdgefleetError

    try:
        result = loop.step()
    except EdgefleetError as error:
        # A broker or database away for a window is not the end of watching: the next
        # window tries again (the decisions so far are recorded).
        print(f"{_when(time.time())} error: {error}", flush=True)
        return
    print(f"{_when(time.time())} {result.action}: {result.message}", flush=True)


def _compact(args: argparse.Namespace, store: MonitorStore) -> None:
    """Retention, between windows; a failure is said and tried again next time."""
    from edgefleet.central.monitor.retention import compact
    from edgefleet.errors import EdgefleetError

    try:
        done = compact(store, retention_of(args))
    except EdgefleetError as error:
        print(f"{_when(time.time())} error: compacting: {error}", flush=True)
        return
    print(
        f"{_when(time.time())} compacted in {done.seconds:.1f} s: {done.raw_deleted:,} raw "
        f"report(s), {done.minute_deleted + done.hour_deleted:,} rollup row(s) expired",
        flush=True,
    )


def _refresh(args: argparse.Namespace, loop: RetrainLoop) -> None:
    """Re-sign the rollout state when it is due: the keeper only puts back what was
    signed, and devices refuse an expired state (docs/architecture.md §6)."""
    from edgefleet.central.publish import refresh_if_due
    from edgefleet.errors import EdgefleetError

    try:
        state = refresh_if_due(
            args.fleet,
            broker_from_args(args),
            loop.private_key,
            state_file=loop.state_file,
            prefix=args.prefix,
            progress=say,
            lifetime=args.lifetime,
        )
    except EdgefleetError as error:
        print(f"{_when(time.time())} error: refreshing the rollout state: {error}", flush=True)
        return
    if state is not None:
        print(f"{_when(time.time())} refreshed: rollout state {state.sequence}", flush=True)


def _keeper(args: argparse.Namespace, loop: RetrainLoop) -> RetainedKeeper | None:
    from edgefleet.central.keeper import RetainedKeeper
    from edgefleet.central.publish import state_file_for
    from edgefleet.edge.signing import TrustedKey

    if not args.keep_seconds > 0:
        return None
    trusted = [TrustedKey.from_public_key(loop.private_key.public_key())]
    return RetainedKeeper(
        args.fleet,
        broker_from_args(args),
        trusted,
        state_file_for(Path(args.home), args.fleet),
        prefix=args.prefix,
        interval=args.keep_seconds,
        progress=say,
    ).start()
