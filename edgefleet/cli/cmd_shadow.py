"""``edgefleet rollout shadow``: a challenger scored beside the stable model on a share of
the devices, compared on the same records, then made the canary or dropped."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.cli.cmd_broker import broker_from_args
from edgefleet.cli.lifetime import add_lifetime_option
from edgefleet.cli.progress import say
from edgefleet.errors import InputError

SHADOW_EPILOG = """\
examples:
  # 20 % of the devices score every record with 1.3.0 too, acting on stable's answer only
  edgefleet rollout shadow 1.3.0 --fleet shops --percent 20
  # the two models on the same labelled records (the shadow devices' reports)
  edgefleet rollout shadow --fleet shops --compare
  # better: make it the canary (devices now act on it); or drop it
  edgefleet rollout shadow --fleet shops --to-canary 10
  edgefleet rollout shadow --fleet shops --end

The challenger is signed, fetched and verified like any model (a device that cannot verify
it keeps scoring with stable and says why in its status). Shadow devices are drawn like the
canary cohort (a hash of the rollout id and the device id), among the devices that run
stable. Their reports (version 3) carry the challenger's score histogram and both models'
scores of the records whose label came back, by label; --compare prints AUROC and average
precision of both on those same records. 'edgefleet watch --shadow PERCENT' runs the whole
stage on its own: shadow, then canary if better, else an escalation alert.
"""


def register_shadow(
    actions: Any,
    signing_key: Callable[[argparse.ArgumentParser], None],
    fleet_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    shadow = actions.add_parser(
        "shadow",
        help="score a challenger beside stable on some devices, compare, then canary or drop",
        description="Publish VERSION_OR_BUNDLE as the fleet's challenger for --percent % of "
        "the devices that run stable: they score every record with both models and act on "
        "stable's answer only. Without VERSION_OR_BUNDLE: --compare shows the evidence, "
        "--to-canary makes the challenger the canary, --end drops it.",
        epilog=SHADOW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shadow.add_argument("source", metavar="VERSION_OR_BUNDLE", nargs="?")
    shadow.add_argument("--percent", type=int, metavar="PERCENT", help="shadow share, 1-100")
    shadow.add_argument("--formats", help="formats when exporting a version (default: all)")
    mode = shadow.add_mutually_exclusive_group()
    mode.add_argument("--compare", action="store_true", help="compare the two models")
    mode.add_argument("--to-canary", type=int, metavar="PERCENT", help="challenger -> canary")
    mode.add_argument("--end", action="store_true", help="drop the challenger")
    shadow.add_argument(
        "--db", help="monitor database URL for --compare (default: HOME/monitor.db)"
    )
    shadow.add_argument(
        "--min-labelled",
        type=int,
        default=200,
        metavar="N",
        help="paired labelled records a verdict needs (default 200)",
    )
    add_lifetime_option(shadow)
    signing_key(shadow)
    fleet_options(shadow)
    shadow.set_defaults(handler=run_shadow)


def run_shadow(args: argparse.Namespace) -> int:
    modes = [args.compare, args.to_canary is not None, args.end]
    if args.source is not None and any(modes):
        raise InputError(
            "give VERSION_OR_BUNDLE to start a shadow test, or one of --compare, --to-canary, "
            "--end for the one that runs, not both"
        )
    if args.source is None and not any(modes):
        raise InputError(
            "nothing to do: give VERSION_OR_BUNDLE and --percent to start a shadow test, or "
            "--compare, --to-canary PERCENT or --end (see 'edgefleet rollout shadow --help')"
        )
    if args.compare:
        return _compare(args)
    from edgefleet.central.publish import describe_state
    from edgefleet.cli.cmd_fleet import _bundle, _private_key, _state_file

    key = _private_key(args)
    settings: dict[str, Any] = {
        "prefix": args.prefix,
        "state_file": _state_file(args),
        "progress": say,
        "lifetime": args.lifetime,
    }
    broker = broker_from_args(args)
    from edgefleet.central import shadowing

    if args.source is not None:
        if args.percent is None:
            raise InputError("--percent PERCENT is needed: the share of devices to shadow on")
        result = shadowing.publish_shadow(
            _bundle(args, key), args.fleet, broker, key, shadow_percent=args.percent, **settings
        )
        state = result.state
    elif args.end:
        state = shadowing.end_shadow(args.fleet, broker, key, **settings)
    else:
        state = shadowing.shadow_to_canary(
            args.fleet, broker, key, canary_percent=args.to_canary, **settings
        )
    print(describe_state(state))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from edgefleet.central.monitor.shadow import compare_shadow, shadow_started
    from edgefleet.central.monitor.store import MonitorStore
    from edgefleet.central.publish import rollout_status
    from edgefleet.cli.cmd_fleet import _private_key
    from edgefleet.cli.cmd_watch import default_db_url
    from edgefleet.edge.signing import TrustedKey

    trusted = [TrustedKey.from_public_key(_private_key(args).public_key())]
    state = rollout_status(args.fleet, broker_from_args(args), trusted, prefix=args.prefix)
    if state is None or state.challenger is None or state.stable is None:
        raise InputError(
            f"fleet {args.fleet} has no challenger in shadow: start one with 'edgefleet "
            f"rollout shadow VERSION --fleet {args.fleet} --percent 20'"
        )
    store = MonitorStore(args.db or default_db_url(Path(args.home)))
    since = shadow_started(store.decisions(args.fleet), state)
    aggregate = store.aggregate(args.fleet, model_version=state.stable.version, since=since)
    sketch = None if aggregate is None else aggregate.shadow_of(state.challenger.version)
    comparison = compare_shadow(
        sketch, state.stable.version, state.challenger.version, min_labelled=args.min_labelled
    )
    print(f"{state.challenger.label} in shadow beside {state.stable.label}: {comparison.verdict}")
    print(f"  {comparison.reason}")
    if comparison.champion_ap is not None and comparison.challenger_ap is not None:
        print(
            f"  average precision {comparison.challenger_ap:.4f} vs "
            f"{comparison.champion_ap:.4f} ({comparison.ap_gain:+.4f})"
        )
    return 0
