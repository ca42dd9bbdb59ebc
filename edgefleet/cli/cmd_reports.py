"""``edgefleet reports quarantine`` (what the monitor refused, and from which device) and
``edgefleet reports delete`` (remove a compromised device's reports);
``edgefleet quarantine`` is the older name of the first."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edgefleet.cli.cmd_compact import add_compact
from edgefleet.cli.cmd_monitor import db_option, open_store
from edgefleet.errors import InputError

REPORTS_EPILOG = """\
examples:
  edgefleet reports quarantine --fleet shops
  edgefleet reports quarantine --fleet shops --device pos-0042 --limit 5
  edgefleet reports delete --fleet shops --device pos-0042
  edgefleet reports delete --fleet shops --device pos-0042 \\
      --since 2025-06-01T00:00:00Z --until 2025-06-02T00:00:00Z --yes
  edgefleet reports compact --raw-days 7 --minute-days 30 --hour-days 365
"""

QUARANTINE_EPILOG = """\
Each refused report is counted against the device its topic names (the claimed sender:
anyone able to publish there could have sent it). The counts are exact since the monitor
started keeping them; the messages themselves are the newest 100,000.

examples:
  edgefleet reports quarantine --fleet shops
  edgefleet reports quarantine --fleet shops --device pos-0042
"""

DELETE_EPILOG = """\
For a device that was compromised or sent nonsense: its reports go, with everything
derived from them (the rollups of their buckets are summed again without them, its totals
drop them), in one transaction; reports past the raw retention live on only inside
rollups, which no longer say which device sent what. Without --since/--until its last
status row goes too. Its quarantined messages and refusal count stay (the evidence), and so
do alerts and decisions already recorded. Times select reports by the end of their window
(since <= end < until), as ISO 8601 (2025-06-01T12:00:00Z; no zone means UTC) or epoch
seconds. Asks before deleting unless --yes. Revoke the device's broker credentials too,
or it reports again.

examples:
  edgefleet reports delete --fleet shops --device pos-0042
  edgefleet reports delete --fleet shops --device pos-0042 --since 1749000000 --yes
"""


def register(subparsers: Any) -> None:
    reports = subparsers.add_parser(
        "reports",
        help="inspect refused reports, delete a device's reports, apply retention",
        description="The monitor database's reports: what was refused (quarantine), "
        "removing a device's reports (delete), and retention (compact).",
        epilog=REPORTS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = reports.add_subparsers(dest="reports_command", metavar="ACTION", required=True)
    _add_quarantine(actions.add_parser, "quarantine")
    delete = actions.add_parser(
        "delete",
        help="delete one device's reports (a compromised device), after confirmation",
        description="Delete one device's stored reports, within optional time bounds.",
        epilog=DELETE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    delete.add_argument("--fleet", required=True, help="the device's fleet")
    delete.add_argument("--device", required=True, help="the device id")
    delete.add_argument("--since", type=parse_time, metavar="TIME", help="from this time on")
    delete.add_argument("--until", type=parse_time, metavar="TIME", help="before this time")
    delete.add_argument("--yes", action="store_true", help="delete without asking")
    db_option(delete)
    delete.set_defaults(handler=run_delete)
    add_compact(actions)
    # The older name, kept for scripts that use it.
    _add_quarantine(subparsers.add_parser, "quarantine")


def _add_quarantine(add_parser: Callable[..., argparse.ArgumentParser], name: str) -> None:
    listing = add_parser(
        name,
        help="list the reports the monitor refused, with the reason and the device",
        description="Refused reports per device (ever), then the newest quarantined "
        "messages: when, the topic, the reason, the size and the start of the payload "
        "(escaped).",
        epilog=QUARANTINE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--fleet", help="only this fleet (default: every fleet)")
    listing.add_argument("--device", help="only reports on this device's topic")
    db_option(listing)
    listing.add_argument(
        "--limit", type=_limit, default=20, help="how many messages to show (default: 20)"
    )
    listing.set_defaults(handler=run_quarantine)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit takes a whole number, not {text!r}") from None
    if not 0 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"--limit must be 0 to 100,000, not {value}")
    return value


def parse_time(text: str) -> float:
    """Epoch seconds (``1749000000``, ``1749000000.5``) or ISO 8601
    (``2025-06-01``, ``2025-06-01T12:00:00Z``, ``...+02:00``; no zone means UTC)."""
    try:
        value = float(text)
    except ValueError:
        value = _iso_time(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time after 1970")
    return value


def _iso_time(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give ISO 8601 (2025-06-01T12:00:00Z) or epoch seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def run_quarantine(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        counts = [
            c
            for c in store.refusal_counts(args.fleet)
            if args.device is None or c.device_id == args.device
        ]
        rows = store.quarantined(args.fleet, limit=args.limit, device_id=args.device)
        total = store.quarantine_count(args.fleet, device_id=args.device)
    finally:
        store.close()
    where = f"fleet {args.fleet}" if args.fleet else "all fleets"
    if args.device:
        where += f", device {args.device}"
    if not counts and not rows:
        print(f"no refused reports ({where})")
        return 0
    print(f"refused reports per device ({where}), ever:")
    for count in counts:
        device = count.device_id or "(no valid device in the topic)"
        print(f"  {count.refused:>9,}  {count.fleet}/{device}  last {_when(count.last_refused)}")
    print(f"{total} quarantined report(s) kept ({where}); the newest {len(rows)}:")
    for row in rows:
        size = f"{row.payload_bytes:,} bytes, sha256 {row.payload_sha256[:12]}"
        print(f"- {_when(row.received)}  {row.topic}  ({size})")
        print(f"    device:  {row.device_id or '-'}")
        print(f"    reason:  {row.reason}")
        print(f"    payload: {row.excerpt[:120]}{'...' if len(row.excerpt) > 120 else ''}")
    return 0


def _bounds(since: float | None, until: float | None) -> str:
    if since is None and until is None:
        return "all its reports"
    parts = [f"from {_when(since)} UTC" if since is not None else ""]
    parts.append(f"before {_when(until)} UTC" if until is not None else "")
    return "its reports with a window ending " + " ".join(p for p in parts if p)


def run_delete(args: argparse.Namespace) -> int:
    from edgefleet.central.monitor.purge import count_device_records, delete_device_records
    from edgefleet.edge.topics import check_identifier

    check_identifier(args.fleet, "--fleet")
    check_identifier(args.device, "--device")
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise InputError("--since must be before --until")
    store = open_store(args)
    try:
        found = count_device_records(
            store, args.fleet, args.device, since=args.since, until=args.until
        )
        what = f"device {args.device} of fleet {args.fleet}: {_bounds(args.since, args.until)}"
        if found.total == 0:
            print(f"nothing to delete ({what}: no rows)")
            return 0
        status = " and its status row" if found.statuses else ""
        print(f"{what}: {found.reports:,} report(s){status} in {store.display}")
        if not args.yes and not _confirm(f"delete {found.total:,} row(s)? [y/N] "):
            print("nothing deleted")
            return 1
        deleted = delete_device_records(
            store, args.fleet, args.device, since=args.since, until=args.until
        )
    finally:
        store.close()
    status = " and its status row" if deleted.statuses else ""
    print(f"deleted {deleted.reports:,} report(s){status} of device {args.device}")
    return 0


def _confirm(question: str) -> bool:
    """Only "y" or "yes" confirms; no input at all (a script without --yes) does not."""
    print(question, end="", flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")
