"""``edgefleet serve``: the fleet dashboard and the browser demo (edgefleet/web), and what
``edgefleet demo`` prints (or, with ``--serve``, runs) when it ends."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from edgefleet.cli.cmd_broker import add_broker_options, broker_from_args
from edgefleet.cli.progress import say

if TYPE_CHECKING:
    from flask import Flask

DEFAULT_PORT = 8050
TOKEN_ENV = "EDGEFLEET_WEB_TOKEN"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

SERVE_EPILOG = f"""\
Promote and roll back need the write token: from --token-file, else ${TOKEN_ENV}, else a
random one printed at start (--read-only: none at all). The dashboard listens on loopback
unless --host says otherwise; behind a reverse proxy, name its host with --allow-host.

examples:
  edgefleet serve
  edgefleet serve --db postgresql://monitor@db.example/edgefleet --fleet shops
  edgefleet --home demo-run/home serve --db sqlite:///demo-run/monitor.db
  curl http://127.0.0.1:{DEFAULT_PORT}/api/fleets/shops/overview
"""


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="the fleet dashboard and the browser demo (a local web server)",
        description="Serve the dashboard of the fleets of the home folder: overview, model "
        "registry, drift, devices, rollout history with evidence, promote and roll back; "
        "the browser demo at /demo; the JSON API at /api (edgefleet/web/API.md). Runs until "
        "Ctrl-C.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--db",
        metavar="URL",
        help="monitor database: sqlite:///FILE or postgresql://... (default: HOME/monitor.db)",
    )
    serve.add_argument(
        "--predictions-db",
        metavar="URL",
        help="database of batch predictions for GET /api/predictions/KEY (default: --db's)",
    )
    serve.add_argument(
        "--predictions-table",
        default="predictions",
        metavar="NAME",
        help="their table, as 'batch score --table' wrote it (default: %(default)s)",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: loopback)"
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT})"
    )
    serve.add_argument(
        "--fleet",
        action="append",
        dest="fleets",
        metavar="NAME",
        help="a fleet to show (repeatable; default: every fleet that reported or was published)",
    )
    serve.add_argument("--token-file", type=Path, help="file whose first line is the write token")
    serve.add_argument(
        "--read-only", action="store_true", help="no write token: promote and roll back refused"
    )
    serve.add_argument(
        "--online-seconds",
        type=float,
        default=120.0,
        help="a device without a report for this long counts as offline (default: 120)",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the dashboard answers to besides loopback (repeatable)",
    )
    add_broker_options(serve, "dashboard")
    serve.set_defaults(handler=run_serve)


def write_token(args: argparse.Namespace) -> tuple[str | None, str]:
    """The write token and where it came from."""
    from edgefleet.errors import InputError

    if args.read_only:
        return None, "read-only"
    if args.token_file is not None:
        try:
            lines = args.token_file.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise InputError(
                f"cannot read the token file {args.token_file}: {error.strerror}"
            ) from None
        token = lines[0].strip() if lines else ""
        return token, f"from {args.token_file}"
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV], f"from ${TOKEN_ENV}"
    return secrets.token_urlsafe(24), "generated"


def run_serve(args: argparse.Namespace) -> int:
    from edgefleet.errors import InputError
    from edgefleet.web.app import create_app
    from edgefleet.web.config import LOOPBACK_HOSTS, WebConfig

    if not Path(args.home).is_dir():
        raise InputError(
            f"there is no home folder {args.home}: pass --home with the registry, keys and "
            "rollout states the dashboard should show (edgefleet demo makes demo-run/home)"
        )
    token, origin = write_token(args)
    loopback = args.host in _LOOPBACK
    trusted: tuple[str, ...] | None = (
        (*LOOPBACK_HOSTS, *args.allow_host) if loopback or args.allow_host else None
    )
    config = WebConfig(
        home=Path(args.home),
        db=args.db,
        broker=broker_from_args(args),
        fleets=tuple(args.fleets or ()),
        write_token=token,
        online_seconds=args.online_seconds,
        trusted_hosts=trusted,
        predictions_db=args.predictions_db,
        predictions_table=args.predictions_table,
    )
    app = create_app(config)
    say(f"monitor database {app.extensions['edgefleet'].dashboard.store.display}, home {args.home}")
    if token is None:
        say("read-only: promote and roll back are refused")
    elif origin == "generated":
        say(f"write token (promote, roll back): {token}")
    else:
        say(f"write token {origin}")
    if not loopback:
        say(
            f"warning: listening on {args.host} over plain http: the write token crosses the "
            "network in clear, and browsers allow the demo's WebCrypto checks only on "
            "localhost or https. Put a TLS reverse proxy in front (--allow-host NAME)."
        )
    serve_app(app, args.host, args.port)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve_app(app: Flask, host: str, port: int, *, path: str = "") -> None:
    """Serve ``app`` under waitress, within the dashboard's limits, until Ctrl-C or
    SIGTERM, printing its address (with ``path``) first."""
    from edgefleet.web.server import dashboard_server

    server = dashboard_server(app, host, port)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    address = f"http://{shown}:{server.port}/"
    say(f"dashboard: {address}{path}  (browser demo: {address}demo; Ctrl-C stops)")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()  # closes every connection when Ctrl-C or SIGTERM ends it
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    say("dashboard stopped")


# -- the end of `edgefleet demo` ----------------------------------------------------------


def add_demo_options(parser: argparse.ArgumentParser) -> None:
    """``--serve`` and ``--dashboard-port`` of ``edgefleet demo``."""
    parser.add_argument(
        "--serve",
        action="store_true",
        help="when the story ends, keep the dashboard up (with the broker) until Ctrl-C",
    )
    parser.add_argument(
        "--dashboard-port",
        type=int,
        default=DEFAULT_PORT,
        help=f"the dashboard's port (default: {DEFAULT_PORT})",
    )


def finish_demo(args: argparse.Namespace, work: Path, fleet: str) -> None:
    """Print the dashboard's address; with ``--serve``, restart the demo's broker (its
    retained rollout state persisted) and serve the dashboard until Ctrl-C."""
    home, db = work / "home", f"sqlite:///{work / 'monitor.db'}"
    port = getattr(args, "dashboard_port", DEFAULT_PORT)
    url = f"http://127.0.0.1:{port}/fleets/{fleet}/"
    if not getattr(args, "serve", False):
        say(f"\ndashboard: {url}")
        say(f"  start it with: edgefleet --home {home} serve --db {db} --port {port}")
        say("  (or run the demo with --serve to keep it up when the demo ends)")
        return
    from edgefleet.central.broker import MosquittoBroker
    from edgefleet.central.identity.authority import broker_tls, ca_folder
    from edgefleet.edge.identity import load_identity
    from edgefleet.web.app import create_app
    from edgefleet.web.config import WebConfig

    token = os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    secured = ca_folder(home).is_dir()  # the demo ran without --insecure-dev
    tls = broker_tls(home) if secured else None
    with MosquittoBroker(work / "broker", tls=tls) as broker:
        # The dashboard may promote and roll back: its identity, at this broker's port.
        address = (
            load_identity(home / "identities" / "dashboard").address(broker.url)
            if secured
            else broker.address
        )
        config = WebConfig(home=home, db=db, broker=address, fleets=(fleet,), write_token=token)
        say(f"\nbroker {broker.url} restarted for promote and roll back")
        say(f"write token (promote, roll back): {token}")
        serve_app(create_app(config), "127.0.0.1", port, path=f"fleets/{fleet}/")
