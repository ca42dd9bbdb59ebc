"""``edgefleet monitor``: store a fleet's reports, each checked against its model version
(``edgefleet reports`` lists what it refused)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from edgefleet.cli.cmd_broker import add_broker_options, broker_from_args
from edgefleet.cli.progress import say

if TYPE_CHECKING:
    from edgefleet.central.monitor.store import KnownVersion

MONITOR_EPILOG = """\
Several monitors of one --group split a fleet between them (an MQTT 5 shared
subscription); give each its own --client-id, the same across restarts: the broker keeps
the reports that arrive while a monitor is away for its return. They may share --db.

examples:
  edgefleet monitor --fleet shops
  edgefleet monitor --fleet shops --db postgresql://monitor@db.example/edgefleet \\
      --client-id monitor-a
  edgefleet reports quarantine --fleet shops
"""


def db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        help="sqlite:///FILE or postgresql://user@host/db (default: sqlite file HOME/monitor.db)",
    )


def register(subparsers: Any) -> None:
    monitor = subparsers.add_parser(
        "monitor",
        help="store a fleet's reports (each once), quarantining malformed ones",
        description="Subscribe to the fleet's device reports and store each one exactly once "
        "by (device, sequence). A report that is malformed, oversize, sent on another "
        "device's topic, of a model version the registry does not know, or that does not "
        "fit its version (features, bins, counts, window) is kept in the quarantine table "
        "with the reason, counted against its device and not acknowledged, and ingestion "
        "goes on. Runs until Ctrl-C.",
        epilog=MONITOR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    monitor.add_argument("--fleet", required=True, help="fleet name (a topic level)")
    monitor.add_argument(
        "--prefix", default="edgefleet", help="first topic level (default: edgefleet)"
    )
    db_option(monitor)
    monitor.add_argument(
        "--group",
        help="shared subscription group: monitors of one group split the fleet (default: "
        "a name derived from the monitor identity's key, so that only its processes can "
        "join; edgefleet-monitor on an --insecure-dev broker)",
    )
    monitor.add_argument(
        "--client-id",
        help="MQTT client id, stable across restarts (default: edgefleet-monitor-FLEET-HOST)",
    )
    monitor.add_argument(
        "--batch", type=int, default=500, help="reports per transaction (default: 500)"
    )
    monitor.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that validate reports while this one stores them (default: 1 on a "
        "machine of 2 or more cores, else 0: validate here)",
    )
    monitor.add_argument(
        "--every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between progress lines (default: 5)",
    )
    monitor.add_argument(
        "--leave",
        action="store_true",
        help="on exit, unsubscribe so the broker stops keeping a share of the fleet for "
        "this monitor (for a monitor retired for good)",
    )
    # What rollups cost, measured by bench.ingest --compare-rollups; never for a fleet
    # (its reports would be merged raw, at a cost growing with every report).
    monitor.add_argument("--no-rollups", action="store_true", help=argparse.SUPPRESS)
    add_broker_options(monitor, "monitor")
    monitor.set_defaults(handler=run_monitor)


def default_db(home: Path) -> str:
    return f"sqlite:///{Path(home) / 'monitor.db'}"


def open_store(args: argparse.Namespace, *, rollups: bool = True) -> Any:
    from edgefleet.central.monitor.store import MonitorStore

    if args.db is None:
        Path(args.home).mkdir(parents=True, exist_ok=True)
    return MonitorStore(args.db or default_db(args.home), rollups=rollups)


def default_workers() -> int:
    """One validating process when there is a core for it: decoding a report costs about
    as much as receiving and storing it, and Python runs one thread at a time."""
    return 1 if (os.cpu_count() or 1) >= 2 else 0


def registry_versions(home: Path) -> KnownVersion | None:
    """A ``known_version`` lookup over the registry in ``home``: the profile of each
    version (its features and bins, from its manifest), against which every report is
    checked; reloaded when it is asked about a version it has not seen (at most every 10 s),
    so newly trained versions are learnt. None when there is no registry there."""
    if not (Path(home) / "registry.db").exists():
        return None
    from edgefleet.central.monitor.validation import CachedProfiles, profiles_of_registry
    from edgefleet.central.registry import Registry

    return CachedProfiles(profiles_of_registry(Registry(Path(home)).versions))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_monitor(args: argparse.Namespace) -> int:
    from edgefleet.central.monitor.ingest import Monitor

    if args.every <= 0:
        from edgefleet.errors import InputError

        raise InputError(f"--every must be a positive number of seconds, not {args.every}")
    store = open_store(args, rollups=not args.no_rollups)
    known = registry_versions(args.home)
    if known is None:
        say(
            f"no registry in {args.home}: accepting every model version "
            "(pass --home with the registry to check reports against their version)"
        )
    else:
        say(f"reports checked against their model version in the registry in {args.home}")
    client_id = args.client_id or f"edgefleet-monitor-{args.fleet}-{socket.gethostname()}"
    monitor = Monitor(
        args.fleet,
        broker_from_args(args),
        store,
        group=args.group,
        batch=args.batch,
        known_version=known,
        client_id=client_id,
        prefix=args.prefix,
        workers=default_workers() if args.workers is None else args.workers,
    )
    stop = threading.Event()
    # `kill` (SIGTERM) stops as cleanly as Ctrl-C: everything received is stored first.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        monitor.start()
        say(f"monitor {client_id} storing {monitor.filter} into {store.display}; Ctrl-C stops it")
        started = time.monotonic()
        while not stop.wait(args.every):
            say(f"[{time.monotonic() - started:7.0f} s] {monitor.stats.line()}")
    except KeyboardInterrupt:
        say("stopping: storing what has arrived")
    finally:
        stats = monitor.stop(leave=args.leave)
        signal.signal(signal.SIGTERM, previous)
        store.close()
    say(f"stopped. {stats.line()}")
    return 0
