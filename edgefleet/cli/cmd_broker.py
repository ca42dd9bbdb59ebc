"""``edgefleet broker``, and the broker options every MQTT command takes (``--identity`` or
``--broker`` with TLS files)."""

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
SECURE_PORT = 8883
INSECURE_PORT = 1883
INSECURE_WARNING = (
    "warning: --insecure-dev: anonymous clients may read and write every topic (any "
    "process on this machine can poison reports or read models); for development only"
)


def add_broker_options(parser: argparse.ArgumentParser, default_identity: str = "") -> None:
    """``--identity`` and ``--broker`` with its TLS files. ``default_identity`` names the
    folder under HOME/identities used when neither ``--identity`` nor ``--broker`` is
    given (as ``edgefleet ca issue-service --name NAME`` writes it)."""
    group = parser.add_argument_group("MQTT broker")
    hint = (
        f" (default: HOME/identities/{default_identity} if it exists)" if default_identity else ""
    )
    group.add_argument(
        "--identity",
        type=Path,
        metavar="DIR",
        help="identity folder (edgefleet devices enroll / ca issue-service): the broker URL, "
        f"CA, certificate and key{hint}",
    )
    group.add_argument(
        "--broker",
        metavar="URL",
        help="mqtt://[user:pass@]host:port or mqtts://...; with --identity, overrides its URL "
        f"(default: the identity's, else {DEFAULT_BROKER})",
    )
    group.add_argument("--ca-file", type=Path, help="CA certificate(s) to verify an mqtts broker")
    group.add_argument("--cert-file", type=Path, help="client certificate for mqtts")
    group.add_argument("--key-file", type=Path, help="private key of the client certificate")
    group.add_argument(
        "--insecure",
        action="store_true",
        help="mqtts without checking the broker's host name (the certificate chain is checked)",
    )
    parser.set_defaults(default_identity=default_identity)


def identity_from_args(args: argparse.Namespace) -> Any:
    """The :class:`edgefleet.edge.identity.Identity` the options name: ``--identity``, else
    the command's default folder under HOME/identities when it exists and neither
    ``--broker`` nor TLS files were given; None without one."""
    from edgefleet.edge.identity import load_identity

    if args.identity is not None:
        if args.ca_file or args.cert_file or args.key_file:
            from edgefleet.errors import InputError

            raise InputError(
                "--identity brings its own CA, certificate and key: drop --ca-file, "
                "--cert-file and --key-file (or drop --identity)"
            )
        return load_identity(args.identity)
    name = getattr(args, "default_identity", "")
    if name and args.broker is None and not (args.cert_file or args.ca_file):
        folder = Path(args.home) / "identities" / name
        if folder.is_dir():
            return load_identity(folder)
    return None


def broker_from_args(args: argparse.Namespace) -> BrokerAddress:
    from edgefleet.edge.mqtt import BrokerAddress

    identity = identity_from_args(args)
    if identity is not None:
        return identity.address(args.broker, insecure=args.insecure)  # type: ignore[no-any-return]
    return BrokerAddress.parse(
        args.broker or DEFAULT_BROKER,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        insecure=args.insecure,
    )


BROKER_EPILOG = f"""\
Secured (the default): TLS on port {SECURE_PORT}, a client certificate of the fleet CA
required (its common name is the user name), revoked certificates refused (the CRL), and
an access list that keeps each identity to its topics (README, "Identities"). The CA,
the access list and the CRL live in HOME/ca; 'edgefleet devices enroll' and 'revoke'
reload a broker running on the default data folder.

examples:
  edgefleet ca init && edgefleet broker
  edgefleet broker --host 0.0.0.0 --server-name broker.example.com
  edgefleet broker --insecure-dev          # anonymous, loopback, port {INSECURE_PORT}
"""


def register(subparsers: Any) -> None:
    broker = subparsers.add_parser(
        "broker",
        help="run the fleet's MQTT broker (Mosquitto) in the foreground",
        description="Run Mosquitto with a generated configuration until Ctrl-C: TLS with "
        "client certificates and an access list per identity (or, with --insecure-dev, "
        "anonymous on loopback), persistent (retained models, rollout state and queued "
        "messages survive a restart), with a bound on the size of a message and on the "
        "messages queued for a slow or offline client. The configuration and database live "
        "in the data folder.",
        epilog=BROKER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    broker.add_argument(
        "--port",
        type=int,
        help=f"TCP port (default: {SECURE_PORT}, or {INSECURE_PORT} with --insecure-dev)",
    )
    broker.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; --insecure-dev: loopback only)",
    )
    broker.add_argument(
        "--server-name",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name or address clients use for this broker, put in its certificate "
        "(repeatable; localhost, 127.0.0.1, ::1 and --host are always in)",
    )
    broker.add_argument(
        "--data-dir", type=Path, help="configuration, database and log (default: HOME/broker)"
    )
    broker.add_argument(
        "--max-message-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="largest MQTT packet accepted, announced to clients (a model file is one "
        "message: keep this above the largest; default 64)",
    )
    broker.add_argument(
        "--max-queued",
        type=int,
        default=100_000,
        metavar="N",
        help="messages queued for one slow or offline client before the oldest are "
        "dropped; reports survive a drop (devices re-send until a monitor acknowledges), "
        "acks and statuses are re-sent too (default 100000; 0: no bound)",
    )
    broker.add_argument(
        "--insecure-dev",
        action="store_true",
        help="no TLS, no certificates, no access list: anonymous clients may do anything "
        "(development only; prints a warning)",
    )
    broker.set_defaults(handler=run_broker)


def _packet_bytes(megabytes: float) -> int:
    from edgefleet.errors import InputError

    if not 0.01 <= megabytes <= 256:
        raise InputError(
            f"--max-message-mb must be from 0.01 to 256 (MQTT's limit), not {megabytes}"
        )
    return int(megabytes * 1024 * 1024)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_broker(args: argparse.Namespace) -> int:
    from edgefleet.central.broker import MosquittoBroker
    from edgefleet.errors import BrokerError

    tls = None
    if args.insecure_dev:
        say(INSECURE_WARNING)
    else:
        from edgefleet.central.identity.authority import broker_tls

        # A wildcard address is no name a client dials: only the --server-name ones count.
        names = [n for n in (args.host, *args.server_name) if n not in ("0.0.0.0", "::", "")]
        tls = broker_tls(Path(args.home), names)
    port = args.port or (INSECURE_PORT if args.insecure_dev else SECURE_PORT)
    broker = MosquittoBroker(
        args.data_dir or Path(args.home) / "broker",
        port=port,
        host=args.host,
        echo_log=True,
        tls=tls,
        max_packet_size=_packet_bytes(args.max_message_mb),
        max_queued_messages=args.max_queued,
    )
    # `kill` (SIGTERM) stops the broker as cleanly as Ctrl-C: it saves its database. SIGINT
    # is installed too because a shell starts background jobs with it ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        broker.start()
        say(f"broker listening on {broker.url}, data in {broker.data_dir}; Ctrl-C stops it")
        if tls is not None:
            say(f"  clients need an identity of the CA in {tls.ca_file.parent} (--identity DIR)")
        code = broker.wait()
        raise BrokerError(f"mosquitto exited with status {code}.\n{broker.log_tail()}")
    except KeyboardInterrupt:
        say("stopping the broker (it saves its database)")
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
