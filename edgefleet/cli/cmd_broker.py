"""``edgefleet broker``, and the ``--broker`` options every MQTT command takes."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from edgefleet.cli.progress import say

if TYPE_CHECKING:
    from edgefleet.edge.mqtt import BrokerAddress

# Spelled out rather than imported so that building the parser does not import paho.
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MQTT broker")
    group.add_argument(
        "--broker",
        default=DEFAULT_BROKER,
        metavar="URL",
        help=f"mqtt://[user:pass@]host:port or mqtts://... (default: {DEFAULT_BROKER})",
    )
    group.add_argument("--ca-file", type=Path, help="CA certificate(s) to verify an mqtts broker")
    group.add_argument("--cert-file", type=Path, help="client certificate for mqtts")
    group.add_argument("--key-file", type=Path, help="private key of the client certificate")
    group.add_argument(
        "--insecure",
        action="store_true",
        help="mqtts without checking the broker's host name (the certificate chain is checked)",
    )


def broker_from_args(args: argparse.Namespace) -> BrokerAddress:
    from edgefleet.edge.mqtt import BrokerAddress

    return BrokerAddress.parse(
        args.broker,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        insecure=args.insecure,
    )


def register(subparsers: Any) -> None:
    broker = subparsers.add_parser(
        "broker",
        help="run a local MQTT broker (Mosquitto) in the foreground",
        description="Run Mosquitto with a generated configuration until Ctrl-C: loopback "
        "only, anonymous, persistent (retained models, rollout state and queued messages "
        "survive a restart), and with no limit on messages queued for slow or offline "
        "subscribers. The configuration and database live in the data folder.",
        epilog="example:\n  edgefleet broker\n  edgefleet broker --port 1884 --data-dir /tmp/b",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    broker.add_argument("--port", type=int, default=1883, help="TCP port (default: 1883)")
    broker.add_argument(
        "--host", default="127.0.0.1", help="loopback address to listen on (default: 127.0.0.1)"
    )
    broker.add_argument(
        "--data-dir", type=Path, help="configuration, database and log (default: HOME/broker)"
    )
    broker.set_defaults(handler=run_broker)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_broker(args: argparse.Namespace) -> int:
    from edgefleet.central.broker import MosquittoBroker
    from edgefleet.errors import BrokerError

    broker = MosquittoBroker(
        args.data_dir or Path(args.home) / "broker", port=args.port, host=args.host, echo_log=True
    )
    # `kill` (SIGTERM) stops the broker as cleanly as Ctrl-C: it saves its database. SIGINT
    # is installed too because a shell starts background jobs with it ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        broker.start()
        say(f"broker listening on {broker.url}, data in {broker.data_dir}; Ctrl-C stops it")
        code = broker.wait()
        raise BrokerError(f"mosquitto exited with status {code}.\n{broker.log_tail()}")
    except KeyboardInterrupt:
        say("stopping the broker (it saves its database)")
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
