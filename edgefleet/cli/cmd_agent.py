"""``edgefleet agent``: run one device's agent until interrupted."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.cli.cmd_broker import add_broker_options, broker_from_args, identity_from_args
from edgefleet.cli.progress import say

if TYPE_CHECKING:
    from edgefleet.edge.agent.http import ApiLimits

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

The local API listens on loopback only and refuses, with a JSON error, what would flood
the device: bodies over --http-max-body, batches over --http-max-records, JSON nested
over --http-max-depth; it drops connections silent (or a request still arriving) for
--http-timeout seconds and holds at most --http-connections open.

The agent keeps scoring with its installed model while the broker is away; reports wait
in STATE_DIR/outbox.db until a monitor acknowledges that it has stored them (re-sent after
--ack-timeout seconds, doubling up to 10 minutes). The outbox is bounded: 10,000 reports or
50 MB, 7 days; the oldest are dropped first and the count of drops travels in the next
report.

It follows only fresh rollout states: it refuses a serial below the highest it accepted
(saved in STATE_DIR/agent.json, so also after a restart) and a state past its expiry, with
--clock-skew seconds allowed between its clock and the publisher's. When its state expires
it keeps scoring with its model and says so in /health's "problem" until the publisher
re-signs ('edgefleet rollout refresh').
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
    add_http_limit_options(agent)
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
    agent.add_argument(
        "--ack-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="re-send a report no monitor acknowledged as stored within this long; the wait "
        "doubles with each try, up to 600 s (default 30)",
    )
    agent.add_argument(
        "--clock-skew",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how far this device's clock may be from the publisher's when judging a "
        "rollout state's expiry (default 300)",
    )
    add_broker_options(agent)
    agent.set_defaults(handler=run_agent)


def add_http_limit_options(parser: argparse.ArgumentParser) -> None:
    """What one client of the local API may cost: each limit answered with a JSON error."""
    from edgefleet.edge.agent.http import ApiLimits

    default = ApiLimits()
    limits = parser.add_argument_group(
        "local API limits",
        "A request over a limit is refused with a JSON error; the agent goes on scoring.",
    )
    limits.add_argument(
        "--http-max-body",
        type=int,
        default=default.max_body,
        metavar="BYTES",
        help="largest request body, counted on the bytes received, chunked or not (413 "
        f"beyond; default {default.max_body})",
    )
    limits.add_argument(
        "--http-max-records",
        type=int,
        default=default.max_records,
        metavar="N",
        help=f"most records in one /score request (413 beyond; default {default.max_records})",
    )
    limits.add_argument(
        "--http-max-depth",
        type=int,
        default=default.max_depth,
        metavar="N",
        help='deepest JSON nesting of a body; {"records": [{...}]} is 3 (400 beyond; '
        f"default {default.max_depth}, at most 200)",
    )
    limits.add_argument(
        "--http-timeout",
        type=int,
        default=default.timeout,
        metavar="SECONDS",
        help="close a connection that sends nothing for this long, or whose request has "
        f"not all arrived this long after it began (default {default.timeout})",
    )
    limits.add_argument(
        "--http-connections",
        type=int,
        default=default.connections,
        metavar="N",
        help="most open connections; further clients wait until one closes "
        f"(default {default.connections})",
    )
    limits.add_argument(
        "--http-threads",
        type=int,
        default=default.threads,
        metavar="N",
        help=f"requests scored at once (default {default.threads})",
    )


def http_limits_from(args: argparse.Namespace) -> ApiLimits:
    """The :class:`ApiLimits` of the ``--http-*`` flags."""
    from edgefleet.edge.agent.http import ApiLimits

    return ApiLimits(
        max_body=args.http_max_body,
        max_depth=args.http_max_depth,
        max_records=args.http_max_records,
        timeout=args.http_timeout,
        connections=args.http_connections,
        threads=args.http_threads,
    )


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
            ack_timeout=args.ack_timeout,
            clock_skew=args.clock_skew,
        )
    )
    # A bad flag or a port in use fails before the agent starts anything.
    server = (
        AgentHTTPServer(agent, args.http_port, http_limits_from(args))
        if args.http_port is not None
        else None
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    agent.start()
    if server:
        server.start()
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
