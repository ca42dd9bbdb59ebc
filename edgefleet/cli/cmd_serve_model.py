"""``edgefleet serve-model``: the central scoring service (Open Inference Protocol)."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.cli.cmd_broker import add_broker_options, broker_from_args, identity_from_args
from edgefleet.cli.progress import say

if TYPE_CHECKING:
    from edgefleet.central.serving.worker import WorkerSpec

EPILOG = """\
examples:
  edgefleet serve-model bundle/ --trust-key .edgefleet/keys/edgefleet.pub --port 8080
  edgefleet serve-model churn-1.2.0/ other-model/ --trust-key edgefleet.pub --workers 4

  # a fleet member: follows the fleet's rollouts and reports like a device
  edgefleet devices enroll --fleet shops --device-id scoring-1 --out scoring-1/
  edgefleet serve-model --identity scoring-1/ --state-dir svc-state/ --port 8080

  curl -s localhost:8080/v2/health/ready
  curl -s localhost:8080/v2/models/churn            # the input tensors it takes
  curl -s -XPOST localhost:8080/v2/models/churn/infer -d '{"inputs": [
      {"name": "tenure_months", "shape": [1], "datatype": "FP32", "data": [3]},
      {"name": "contract", "shape": [1], "datatype": "BYTES", "data": ["month-to-month"]},
      ...]}'
  curl -s -XPOST localhost:8080/v1/models/churn:predict -d '{"instances": [{...}]}'
  curl -s -XPOST localhost:8080/v1/outcome -d '{"id": "<prediction_id>", "label": "Yes"}'

Every bundle is verified at start as a device does (signature, hashes, golden vectors);
one that fails stops the service with the reason. Concurrent requests of a worker are
scored in one runtime call (up to --max-batch rows, holding a batch at most --max-wait
ms for more). Past --max-queue rows waiting, a request is answered 503 with Retry-After;
one not scored within --request-timeout seconds, 504. Nothing waits without bound.

As a fleet member (--identity or --fleet) the service installs what the fleet's rollout
names, swaps each promoted model in without failing a request, reports its aggregated
counts through an outbox acknowledged end to end, and counts labels posted to
/v1/outcome by prediction id. Scale past one machine with more replicas behind a load
balancer (each with its own identity).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve-model",
        help="serve verified bundles over HTTP (Open Inference Protocol), batching and all",
        description="A central scoring service: the Open Inference Protocol (KServe V2 REST) "
        "and a plain V1 predict, several worker processes, adaptive batching, overload "
        "answered with 503 and timeouts; optionally a member of a fleet.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundles", nargs="*", type=Path, metavar="BUNDLE", help="bundle folders")
    parser.add_argument("--trust-key", type=Path, action="append", help="publisher key to trust")
    parser.add_argument("--format", help="artifact format to run (default: the first available)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes sharing the port (default: one per CPU)",
    )
    _batching_options(parser)
    _limit_options(parser)
    fleet = parser.add_argument_group("fleet membership")
    fleet.add_argument("--fleet", help="join this fleet (default: the identity's)")
    fleet.add_argument("--device-id", help="this member's id in the fleet (the identity's)")
    fleet.add_argument("--state-dir", type=Path, help="installed models and the report outbox")
    fleet.add_argument(
        "--report-seconds", type=float, default=30.0, help="report window (default 30)"
    )
    add_broker_options(parser)
    parser.set_defaults(handler=run_serve_model)


def _batching_options(parser: argparse.ArgumentParser) -> None:
    from edgefleet.central.serving.batcher import BatchLimits

    default = BatchLimits()
    group = parser.add_argument_group("batching and overload (per worker)")
    group.add_argument(
        "--max-batch",
        type=int,
        default=default.max_batch,
        metavar="ROWS",
        help=f"most rows in one runtime call (default {default.max_batch})",
    )
    group.add_argument(
        "--max-wait",
        type=float,
        default=default.max_wait * 1000,
        metavar="MS",
        help="hold an incomplete batch this long for more rows (default 0: "
        "score at once; under load the next batch fills while one runs)",
    )
    group.add_argument(
        "--max-queue",
        type=int,
        default=default.max_queue_rows,
        metavar="ROWS",
        help=f"rows waiting past which requests get 503 (default {default.max_queue_rows})",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=default.timeout,
        metavar="S",
        help=f"answer 504 if not scored within this (default {default.timeout:g})",
    )


def _limit_options(parser: argparse.ArgumentParser) -> None:
    from edgefleet.central.serving.app import ServiceLimits

    default = ServiceLimits()
    group = parser.add_argument_group("request limits (per worker)")
    group.add_argument(
        "--max-body",
        type=int,
        default=default.max_body,
        metavar="BYTES",
        help=f"largest request body (413 beyond; default {default.max_body})",
    )
    group.add_argument(
        "--max-records",
        type=int,
        default=default.max_records,
        metavar="N",
        help=f"most records in one request (413; default {default.max_records})",
    )
    group.add_argument(
        "--threads",
        type=int,
        default=default.threads,
        help=f"requests in progress at once (default {default.threads})",
    )
    group.add_argument(
        "--connections",
        type=int,
        default=default.connections,
        help=f"open connections (default {default.connections})",
    )
    group.add_argument(
        "--http-timeout",
        type=int,
        default=default.timeout,
        metavar="S",
        help=f"close silent or trickling connections (default {default.timeout})",
    )


def _keys(args: argparse.Namespace, identity: Any) -> list[Path]:
    from edgefleet.errors import InputError

    keys = args.trust_key or ([identity.signing_key] if identity is not None else [])
    if not keys:
        raise InputError("give --trust-key FILE (the publisher's public key) or --identity DIR")
    return list(keys)


def worker_spec(args: argparse.Namespace, keys: list[Path], *, reporting: bool) -> WorkerSpec:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from edgefleet.central.serving.app import ServiceLimits
    from edgefleet.central.serving.batcher import BatchLimits
    from edgefleet.central.serving.worker import WorkerSpec
    from edgefleet.edge.scorer import trusted_keys_from

    raw = tuple(
        k.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw) for k in trusted_keys_from(keys)
    )
    return WorkerSpec(
        trusted_keys=raw,
        secret=secrets.token_bytes(32),
        limits=ServiceLimits(
            max_body=args.max_body,
            max_records=args.max_records,
            threads=args.threads,
            connections=args.connections,
            timeout=args.http_timeout,
        ),
        batching=BatchLimits(
            max_batch=args.max_batch,
            max_wait=args.max_wait / 1000,
            max_queue_rows=args.max_queue,
            timeout=args.request_timeout,
        ),
        bundles=tuple(str(b) for b in args.bundles),
        format=args.format,
        reporting=reporting,
        host=args.host,
        port=args.port,
    )


def run_serve_model(args: argparse.Namespace) -> int:
    from edgefleet.central.serving.service import ScoringService
    from edgefleet.edge.scorer import Scorer
    from edgefleet.errors import InputError

    identity = identity_from_args(args)
    in_fleet = identity is not None or args.fleet is not None
    if in_fleet and args.bundles:
        raise InputError("a fleet member serves what the fleet's rollout names: drop the BUNDLEs")
    if not in_fleet and not args.bundles:
        raise InputError("give BUNDLE folders to serve, or --identity DIR to join a fleet")
    keys = _keys(args, identity)
    spec = worker_spec(args, keys, reporting=in_fleet)
    if not in_fleet:
        names = set()
        for bundle in args.bundles:  # a clear error here, before any worker starts
            manifest = Scorer.from_bundle(bundle, keys, format=args.format).manifest
            name = manifest.name
            if name in names:
                raise InputError(f"two bundles are named {name!r}: serve one version per name")
            names.add(name)
        return _serve(ScoringService(spec, workers=args.workers), args, None)
    member = _member(args, identity, keys)
    service = ScoringService(
        spec, workers=args.workers, on_message=member.on_message, welcome=member.welcome
    )
    return _serve(service, args, member)


def _member(args: argparse.Namespace, identity: Any, keys: list[Path]) -> Any:
    from edgefleet.central.serving.member import FleetMember
    from edgefleet.edge.agent.agent import Agent, AgentConfig
    from edgefleet.edge.scorer import trusted_keys_from
    from edgefleet.errors import InputError

    if args.state_dir is None:
        raise InputError("a fleet member needs --state-dir DIR for its models and outbox")
    if identity is not None:
        identity.check(fleet=args.fleet, device_id=args.device_id)
        fleet, device_id, prefix = identity.fleet, identity.device_id, identity.prefix
    elif args.device_id is None:
        raise InputError("give --device-id (or --identity DIR from 'edgefleet devices enroll')")
    else:
        fleet, device_id, prefix = args.fleet, args.device_id, "edgefleet"
    agent = Agent(
        AgentConfig(
            fleet=fleet,
            device_id=device_id,
            state_dir=args.state_dir,
            trusted_keys=tuple(trusted_keys_from(keys)),
            broker=broker_from_args(args),
            prefix=prefix,
            format=args.format,
            report_seconds=args.report_seconds,
        )
    )
    return FleetMember(agent)


def _serve(service: Any, args: argparse.Namespace, member: Any) -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    say(f"starting {service.count} worker(s) on {service.url} ...")
    service.start()
    if member is not None:
        member.follow(service.broadcast)
        member.agent.start()
    say(f"serving on {service.url} (Open Inference Protocol: {service.url}/v2); Ctrl-C stops")
    last = None
    while not stop.wait(1.0):
        if member is not None:
            status = member.agent.status()
            summary = (status["state"], status["model"], status["problem"])
            if summary != last:
                say(
                    f"  {status['state']}: model {status['model'] or 'none yet'}"
                    + (f", {status['problem']}" if status["problem"] else "")
                )
                last = summary
    say("stopping: finishing queued requests")
    service.stop()
    if member is not None:
        member.agent.stop()
    return 0
