"""``edgefleet ca init|issue-service|revoke-service`` and ``edgefleet devices
enroll|revoke|list``: the fleet's identities."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgefleet.cli.progress import say

CA_EPILOG = """\
The CA lives in HOME/ca (its key, ca.key, mode 0600, can mint identities: keep it there).

examples:
  edgefleet ca init
  edgefleet ca issue-service --role monitor                   # -> HOME/identities/monitor
  edgefleet ca issue-service --role publisher
  edgefleet ca issue-service --role dashboard
  edgefleet ca issue-service --name watch --role monitor --role publisher
  edgefleet ca issue-service --role monitor --fleet shops --out /etc/edgefleet/monitor
  edgefleet ca revoke-service --name dashboard

The central commands find their identity in HOME/identities: publish and rollout use
'publisher', monitor 'monitor', serve 'dashboard', watch 'watch' (or pass --identity DIR).
"""

DEVICES_EPILOG = """\
examples:
  edgefleet devices enroll --fleet shops --device-id pos-17 --out pos-17/
  scp -r pos-17/ pos-17.local:/etc/edgefleet/identity     # then, on the device:
  edgefleet agent --identity /etc/edgefleet/identity --state-dir /var/lib/edgefleet
  edgefleet devices revoke --fleet shops --device-id pos-17
  edgefleet devices list --fleet shops

Enrolling and revoking rewrite the broker's access list and CRL (HOME/ca) and reload the
broker 'edgefleet broker' runs on --broker-dir (default HOME/broker). Enrolling a device
again issues a new certificate and revokes the old one.
"""


def register(subparsers: Any) -> None:
    _register_ca(subparsers)
    _register_devices(subparsers)


def _register_ca(subparsers: Any) -> None:
    ca = subparsers.add_parser(
        "ca",
        help="the fleet certificate authority and the central services' identities",
        description="Create the fleet CA (ECDSA P-256) and issue certificates to central "
        "services: each role may read and write only its topics (README, 'Identities').",
        epilog=CA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="create the fleet CA in HOME/ca")
    init.set_defaults(handler=run_ca_init)

    service = actions.add_parser(
        "issue-service",
        help="a certificate for the monitor, the publisher or the dashboard",
        epilog=CA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    service.add_argument(
        "--role",
        action="append",
        required=True,
        choices=("monitor", "publisher", "dashboard"),
        help="what the service may do (repeatable: a process with two jobs gets both)",
    )
    service.add_argument("--name", help="the service's name (default: its roles, joined by -)")
    service.add_argument("--fleet", help="limit it to one fleet (default: every fleet)")
    service.add_argument("--out", type=Path, help="folder to write (default: HOME/identities/NAME)")
    _issue_options(service)
    service.set_defaults(handler=run_issue_service)

    revoke = actions.add_parser("revoke-service", help="revoke a service's certificate")
    revoke.add_argument("--name", required=True, help="the service's name")
    _broker_dir_option(revoke)
    revoke.set_defaults(handler=run_revoke_service)


def _register_devices(subparsers: Any) -> None:
    devices = subparsers.add_parser(
        "devices",
        help="enroll, revoke and list the devices of a fleet",
        description="Issue each device its certificate (common name device:FLEET:ID) and an "
        "identity folder with everything it needs; revoke it; list who is enrolled, revoked, "
        "when each was last seen and how many of its reports the monitor refused.",
        epilog=DEVICES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = devices.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    enroll = actions.add_parser(
        "enroll",
        help="issue a device certificate and write its identity folder",
        epilog=DEVICES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enroll.add_argument("--fleet", required=True, help="the device's fleet")
    enroll.add_argument("--device-id", required=True, help="the device's id")
    enroll.add_argument(
        "--out", type=Path, help="folder to write (default: HOME/devices/FLEET/DEVICE_ID)"
    )
    _issue_options(enroll)
    _broker_dir_option(enroll)
    enroll.set_defaults(handler=run_enroll)

    revoke = actions.add_parser("revoke", help="revoke a device: the broker refuses it")
    revoke.add_argument("--fleet", required=True)
    revoke.add_argument("--device-id", required=True)
    _broker_dir_option(revoke)
    revoke.set_defaults(handler=run_revoke)

    listing = actions.add_parser(
        "list",
        help="enrolled and revoked devices, when last seen, reports refused",
        description="Last seen is when the monitor stored the device's latest report (the "
        "monitor database, --db); refused counts the reports the monitor quarantined that "
        "came on the device's report topic.",
    )
    listing.add_argument("--fleet", help="only this fleet")
    listing.add_argument(
        "--db", metavar="URL", help="monitor database (default: HOME/monitor.db if it exists)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=run_list)


def _issue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        default="mqtts://127.0.0.1:8883",
        metavar="URL",
        help="the broker URL written into the folder (default: mqtts://127.0.0.1:8883)",
    )
    parser.add_argument(
        "--signing-key",
        type=Path,
        help="the publisher's public key to include (default: HOME/keys/edgefleet.pub)",
    )
    parser.add_argument(
        "--prefix", default="edgefleet", help="first topic level (default: edgefleet)"
    )


def _broker_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker-dir",
        type=Path,
        help="data folder of the running 'edgefleet broker' to reload (default: HOME/broker)",
    )


def reload_broker(args: argparse.Namespace) -> None:
    """SIGHUP the broker running on ``--broker-dir`` (default HOME/broker), saying so."""
    from edgefleet.central.broker import reload_running

    folder = args.broker_dir or Path(args.home) / "broker"
    if reload_running(folder):
        say(f"reloaded the broker running on {folder}: the change applies now")
    else:
        say(
            f"no broker running on {folder}: the change applies when the broker starts (or "
            "send SIGHUP to a broker that reads HOME/ca/acl and crl.pem)"
        )


def run_ca_init(args: argparse.Namespace) -> int:
    from edgefleet.central.identity.authority import init_ca

    ca = init_ca(Path(args.home))
    say(f"fleet CA created: {ca.cert_path} (key {ca.folder / 'ca.key'}, mode 0600)")
    say("next: edgefleet ca issue-service --role publisher; edgefleet devices enroll ...")
    return 0


def run_issue_service(args: argparse.Namespace) -> int:
    from edgefleet.central.identity.authority import issue_service

    name = args.name or "-".join(dict.fromkeys(args.role))
    folder = issue_service(
        Path(args.home),
        name,
        args.role,
        args.out,
        fleet=args.fleet,
        broker_url=args.broker,
        signing_key=args.signing_key,
        prefix=args.prefix,
    )
    say(f"service:{name} ({', '.join(args.role)}) written to {folder}")
    return 0


def run_enroll(args: argparse.Namespace) -> int:
    from edgefleet.central.identity.authority import enroll_device

    folder = enroll_device(
        Path(args.home),
        args.fleet,
        args.device_id,
        args.out,
        broker_url=args.broker,
        signing_key=args.signing_key,
        prefix=args.prefix,
    )
    say(f"device:{args.fleet}:{args.device_id} enrolled; identity folder {folder}")
    say(f"  on the device: edgefleet agent --identity {folder} --state-dir STATE_DIR")
    reload_broker(args)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from edgefleet.central.identity.authority import revoke
    from edgefleet.edge.identity import device_common_name

    common_name = device_common_name(args.fleet, args.device_id)
    serials = revoke(Path(args.home), common_name)
    say(f"{common_name} revoked ({len(serials)} certificate(s)); the CRL and access list rewritten")
    reload_broker(args)
    return 0


def run_revoke_service(args: argparse.Namespace) -> int:
    from edgefleet.central.identity.authority import revoke
    from edgefleet.edge.identity import service_common_name

    serials = revoke(Path(args.home), service_common_name(args.name))
    say(f"service:{args.name} revoked ({len(serials)} certificate(s))")
    reload_broker(args)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from edgefleet.central.identity.inventory import device_rows

    rows = device_rows(Path(args.home), args.fleet, args.db)
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=1))
        return 0
    if not rows:
        print("no devices enrolled" + (f" in fleet {args.fleet}" if args.fleet else ""))
        return 0
    print(f"{'FLEET':16} {'DEVICE':20} {'STATE':8} {'ENROLLED':17} {'LAST SEEN':17} REFUSED")
    for row in rows:
        print(
            f"{row.fleet:16} {row.device_id:20} {row.state:8} {_when(row.enrolled):17} "
            f"{_when(row.last_seen):17} {row.refused}"
        )
    return 0


def _when(value: float | None) -> str:
    from datetime import UTC, datetime

    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M")
