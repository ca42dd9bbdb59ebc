"""``edgefleet agent``: run one device's agent until interrupted."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from edgefleet.cli.cmd_broker import add_broker_options, broker_from_args, identity_from_args
from edgefleet.cli.progress import say

EPILOG = """\
examples:
  edgefleet devices enroll --fleet shops --device-id pos-17 --out pos-17/   # central side
  edgefleet agent --identity pos-17/ --state-dir /var/lib/edgefleet --http-port 8765

  edgefleet agent --fleet shops --device-id pos-17 --state-dir state/ \\
      --trust-key edgefleet.pub --broker mqtt://127.0.0.1:1883      # an --insecure-dev broker

The identity folder brings the fleet, the device id, the CA, the device's certificate and
key, the publisher's public key and the broker URL; --fleet and --device-id, if given, must
match its certificate, and --broker and --trust-key replace what it says.

  curl -s localhost:8765/health
  curl -s -XPOST localhost:8765/score -d '{"record": {"tenure_months": 3, ...}}'
  curl -s -XPOST localhost:8765/outcome -d '{"id": "<prediction id>", "label": "Yes"}'

The agent keeps scoring with its installed model while the broker is away; reports wait
in STATE_DIR/outbox.db (bounded: 10,000 reports or 50 MB, 7 days; the oldest are dropped
first and the count of drops travels in the next report).
"""


def register(subparsers: Any) -> None:
    agent = subparsers.add_parser(
        "agent",
        help="run an edge agent: follow the fleet's rollout, score, report",
        description="Follow the fleet's signed rollout over MQTT, install verified models "
        "(download, verify, self-test, activate, or roll back), score locally "
        "and report aggregated outcomes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    agent.add_argument("--fleet", help="fleet name (default: the identity's)")
    agent.add_argument(
        "--device-id", help="this device's id ([A-Za-z0-9._-]; default: the identity's)"
    )
    agent.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="folder for installed models, update state and the outbox",
    )
    agent.add_argument(
        "--trust-key",
        type=Path,
        action="append",
        help="publisher public key to trust (repeatable; default: the identity's signing.pub)",
    )
    agent.add_argument("--format", help="model format to run (default: the first available)")
    agent.add_argument("--device-group", default="default", help="cohort label in reports")
    agent.add_argument(
        "--http-port", type=int, help="serve the local scoring API on 127.0.0.1:PORT"
    )
    agent.add_argument(
        "--report-seconds",
        type=float,
        default=30.0,
        help="close a report window after this many seconds (default 30)",
    )
    agent.add_argument(
        "--report-records",
        type=int,
        default=5000,
        help="... or after this many scored records (default 5000)",
    )
    add_broker_options(agent)
    agent.set_defaults(handler=run_agent)


def _device(args: argparse.Namespace) -> tuple[str, str, list[Path], str]:
    """Fleet, device id, trusted keys and topic prefix, from the options and the identity."""
    from edgefleet.errors import InputError

    identity = identity_from_args(args)
    if identity is None:
        missing = [
            o for o, v in (("--fleet", args.fleet), ("--device-id", args.device_id)) if not v
        ]
        if missing or not args.trust_key:
            raise InputError(
                f"give --identity DIR (from 'edgefleet devices enroll'), or "
                f"{', '.join(missing + ([] if args.trust_key else ['--trust-key']))}"
            )
        return args.fleet, args.device_id, args.trust_key, "edgefleet"
    identity.check(fleet=args.fleet, device_id=args.device_id)
    keys = args.trust_key or [identity.signing_key]
    return identity.fleet, identity.device_id, keys, identity.prefix


def run_agent(args: argparse.Namespace) -> int:
    from edgefleet.edge.agent.agent import Agent, AgentConfig
    from edgefleet.edge.agent.http import AgentHTTPServer
    from edgefleet.edge.scorer import trusted_keys_from

    fleet, device_id, keys, prefix = _device(args)
    args.fleet, args.device_id = fleet, device_id
    agent = Agent(
        AgentConfig(
            fleet=fleet,
            device_id=device_id,
            state_dir=args.state_dir,
            trusted_keys=tuple(trusted_keys_from(keys)),
            broker=broker_from_args(args),
            prefix=prefix,
            format=args.format,
            device_group=args.device_group,
            report_seconds=args.report_seconds,
            report_records=args.report_records,
        )
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    agent.start()
    server = AgentHTTPServer(agent, args.http_port).start() if args.http_port is not None else None
    say(
        f"agent {args.device_id} of fleet {args.fleet} started; state in {args.state_dir}"
        + (f"; scoring API on {server.url}" if server else "")
    )
    last = None
    while not stop.wait(1.0):
        status = agent.status()
        summary = (status["state"], status["model"], status["update_state"], status["problem"])
        if summary != last:
            say(
                f"  {status['state']}: model {status['model'] or 'none'}, update "
                f"{status['update_state']}"
                + (f", {status['problem']}" if status["problem"] else "")
            )
            last = summary
    say("stopping: closing the report window and flushing the outbox")
    if server:
        server.stop()
    agent.stop()
    return 0
