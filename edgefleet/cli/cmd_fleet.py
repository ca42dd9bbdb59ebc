"""``edgefleet publish`` and ``edgefleet rollout status|promote|rollback|refresh|restore``
(``rollout shadow``: :mod:`edgefleet.cli.cmd_shadow`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.cli.cmd_broker import add_broker_options, broker_from_args
from edgefleet.cli.cmd_shadow import register_shadow
from edgefleet.cli.cmd_watch import add_decisions_command
from edgefleet.cli.lifetime import add_lifetime_option
from edgefleet.cli.progress import say

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PUBLISH_EPILOG = """\
VERSION_OR_BUNDLE is a bundle folder or .tar, or a registered version (1.2.0,
churn@1.2.0, latest), which is exported first to HOME/bundles/NAME-VERSION unless
that bundle exists already.

examples:
  edgefleet publish latest --fleet shops
  edgefleet publish bundle/ --fleet shops --canary 10
  edgefleet rollout status --fleet shops
  edgefleet rollout promote --fleet shops
  edgefleet rollout refresh --fleet shops --lifetime 14d
  edgefleet rollout shadow 1.3.0 --fleet shops --percent 20   (a challenger, see --help)

Every signed rollout state carries the next serial of the fleet and an expiry (--lifetime,
default 7 days): devices refuse an older serial or an expired state, so a replayed old
state is refused. Whatever the broker retains on the rollout topic that does not verify
(garbage, another key) is replaced, with a warning.
"""

REFRESH_EPILOG = """\
examples:
  edgefleet rollout refresh --fleet shops
  edgefleet rollout refresh --fleet shops --lifetime 30d

Devices refuse a rollout state past its expiry and keep scoring with the model they have,
saying so in their status. 'edgefleet watch' refreshes on its own when less than a third
of the lifetime is left; run this when no watch runs, or after a device reported
"rollout state ... expired".
"""


def _fleet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fleet", required=True, help="fleet name (a topic level)")
    parser.add_argument(
        "--prefix", default="edgefleet", help="first topic level (default: edgefleet)"
    )
    add_broker_options(parser, "publisher")


def _signing_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", type=Path, help="signing key (default: HOME/keys/edgefleet.key)")


def register(subparsers: Any) -> None:
    publish = subparsers.add_parser(
        "publish",
        help="publish a signed bundle to a fleet over MQTT",
        description="Verify the bundle, send its manifest, signature and artifacts retained "
        "to the broker (topics named by sha256), then publish a new signed rollout state: "
        "the model becomes stable, or with --canary the canary for that share of devices.",
        epilog=PUBLISH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    publish.add_argument("source", metavar="VERSION_OR_BUNDLE")
    publish.add_argument(
        "--canary", type=int, metavar="PERCENT", help="roll out to PERCENT %% of devices first"
    )
    publish.add_argument("--formats", help="formats when exporting a version (default: all)")
    add_lifetime_option(publish)
    _signing_key(publish)
    _fleet_options(publish)
    publish.set_defaults(handler=run_publish)

    rollout = subparsers.add_parser("rollout", help="show or change a fleet's rollout")
    actions = rollout.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status",
        help="show the rollout state retained on the broker (signature checked)",
    )
    status.add_argument(
        "--key", type=Path, help="trusted public key (default: HOME/keys/edgefleet.pub)"
    )
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    _fleet_options(status)
    status.set_defaults(handler=run_status)

    promote = actions.add_parser("promote", help="make the canary the stable model")
    add_lifetime_option(promote)
    _signing_key(promote)
    _fleet_options(promote)
    promote.set_defaults(handler=run_promote)

    rollback = actions.add_parser(
        "rollback",
        help="drop the canary, or with --to re-point stable to an older version",
        description="Without --to, the canary is dropped and its devices return to stable. "
        "With --to VERSION, stable becomes that older version (published to this fleet "
        "before). Both carry a signed permission for devices to go down a version.",
    )
    rollback.add_argument("--to", metavar="VERSION", help="older version to make stable")
    add_lifetime_option(rollback)
    _signing_key(rollback)
    _fleet_options(rollback)
    rollback.set_defaults(handler=run_rollback)
    refresh = actions.add_parser(
        "refresh",
        help="re-sign the rollout state before it expires (same models, new serial)",
        description="Sign the fleet's current rollout state again, unchanged but for the "
        "next serial and a new expiry, and publish it retained (replacing anything there "
        "that does not verify). Devices that followed the old one install nothing.",
        epilog=REFRESH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_lifetime_option(refresh)
    _signing_key(refresh)
    _fleet_options(refresh)
    refresh.set_defaults(handler=run_refresh)
    restore = actions.add_parser(
        "restore",
        help="put the rollout state and models back on a broker that lost them",
        description="Compare what the broker retains for the fleet with the state file "
        "(HOME/fleets/FLEET.json) and the published files kept beside it, and re-publish "
        "the signed rollout state and the files of its models where the broker lost them "
        "(e.g. restarted without its database). Signs nothing. 'edgefleet watch' does this "
        "every --keep-seconds on its own.",
    )
    restore.add_argument(
        "--key", type=Path, help="trusted public key (default: HOME/keys/edgefleet.pub)"
    )
    _fleet_options(restore)
    restore.set_defaults(handler=run_restore)
    add_decisions_command(actions, "history")
    register_shadow(actions, _signing_key, _fleet_options)


def _private_key(args: argparse.Namespace) -> Ed25519PrivateKey:
    from edgefleet.central.keys import PRIVATE_NAME, default_key_dir
    from edgefleet.edge.signing import load_private_key

    return load_private_key(args.key or default_key_dir(Path(args.home)) / PRIVATE_NAME)


def _state_file(args: argparse.Namespace) -> Path:
    from edgefleet.central.publish import state_file_for

    return state_file_for(Path(args.home), args.fleet)


def _bundle(args: argparse.Namespace, key: Ed25519PrivateKey) -> Path:
    source = Path(args.source)
    if source.exists():
        return source
    # Registry references never hold a path separator; anything else was meant as a path.
    if "/" in args.source or "\\" in args.source or args.source.endswith(".tar"):
        from edgefleet.errors import InputError

        raise InputError(f"no bundle at {source}")
    from edgefleet.central.export import export_bundle
    from edgefleet.central.registry import Registry
    from edgefleet.converters.registry import parse_formats

    version = Registry(Path(args.home)).get(args.source)
    out = Path(args.home) / "bundles" / f"{version.name}-{version.version}"
    if (out / "manifest.json").exists():
        say(f"using the bundle exported before: {out}")
        return out
    formats = parse_formats(args.formats)
    say(f"exporting {version.label} as {', '.join(formats)} to {out}")
    export_bundle(version, formats, out, key, progress=lambda m: say(f"  {m}"))
    return out


def run_publish(args: argparse.Namespace) -> int:
    from edgefleet.central.publish import describe_state, publish

    key = _private_key(args)
    broker = broker_from_args(args)
    bundle = _bundle(args, key)
    result = publish(
        bundle,
        args.fleet,
        broker,
        key,
        canary_percent=args.canary,
        prefix=args.prefix,
        state_file=_state_file(args),
        progress=say,
        lifetime=args.lifetime,
    )
    print(describe_state(result.state))
    return 0


def run_status(args: argparse.Namespace) -> int:
    from edgefleet.central.publish import describe_state, rollout_status
    from edgefleet.edge.scorer import trusted_keys_from

    public = args.key or Path(args.home) / "keys" / "edgefleet.pub"
    state = rollout_status(
        args.fleet, broker_from_args(args), trusted_keys_from(public), prefix=args.prefix
    )
    if args.json:
        print(json.dumps(None if state is None else state.to_dict(), indent=1))
    elif state is None:
        print(f"no rollout state published for fleet {args.fleet}")
    else:
        say("signature OK")
        print(describe_state(state))
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from edgefleet.central.keeper import RetainedKeeper
    from edgefleet.edge.scorer import trusted_keys_from
    from edgefleet.errors import InputError

    public = args.key or Path(args.home) / "keys" / "edgefleet.pub"
    state_file = _state_file(args)
    if not state_file.is_file():
        raise InputError(
            f"no state file {state_file}: this home never published to fleet {args.fleet}"
        )
    keeper = RetainedKeeper(
        args.fleet,
        broker_from_args(args),
        trusted_keys_from(public),
        state_file,
        prefix=args.prefix,
        progress=say,
    )
    keeper.connect()
    try:
        restored = keeper.check()
    finally:
        keeper.stop()
    print(f"restored {len(restored)} retained message(s)" if restored else "nothing was missing")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from edgefleet.central.publish import describe_state, promote

    state = promote(
        args.fleet,
        broker_from_args(args),
        _private_key(args),
        prefix=args.prefix,
        state_file=_state_file(args),
        progress=say,
        lifetime=args.lifetime,
    )
    print(describe_state(state))
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from edgefleet.central.publish import describe_state, rollback

    state = rollback(
        args.fleet,
        broker_from_args(args),
        _private_key(args),
        to_version=args.to,
        prefix=args.prefix,
        state_file=_state_file(args),
        progress=say,
        lifetime=args.lifetime,
    )
    print(describe_state(state))
    return 0


def run_refresh(args: argparse.Namespace) -> int:
    from edgefleet.central.publish import describe_state, refresh

    state = refresh(
        args.fleet,
        broker_from_args(args),
        _private_key(args),
        prefix=args.prefix,
        state_file=_state_file(args),
        progress=say,
        lifetime=args.lifetime,
    )
    print(describe_state(state))
    return 0
