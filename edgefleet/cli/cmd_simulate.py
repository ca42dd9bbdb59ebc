"""``edgefleet simulate``: a fleet of real agents in one process."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.cli.cmd_broker import INSECURE_WARNING, add_broker_options, broker_from_args
from edgefleet.cli.progress import say

if TYPE_CHECKING:
    from edgefleet.edge.mqtt import BrokerAddress

EPILOG = """\
example (a fleet CA, a running broker and a published model first):
  edgefleet ca init && edgefleet ca issue-service --role publisher
  edgefleet broker &
  edgefleet publish latest --fleet shops
  edgefleet simulate --fleet shops --devices 50 --scenario price_increase \\
      --drift-share 0.4 --drift-at 30 --duration 120

Devices are named FLEET-0000, FLEET-0001, ...; the first DRIFT_SHARE of them switch to the
scenario at DRIFT_AT seconds. Each device scores RATE generated customers a second and gets
the true label back for LABEL_SHARE of its predictions.

Each device connects with its own certificate: those without one are enrolled first (into
HOME/devices/FLEET/, a few milliseconds each) and the broker on --broker-dir is reloaded.
With --insecure-dev they connect anonymously to an 'edgefleet broker --insecure-dev'.
"""


def register(subparsers: Any) -> None:
    simulate = subparsers.add_parser(
        "simulate",
        help="run a simulated fleet of real agents fed with generated data",
        description="Run N edge agents in this process, each with its own MQTT client and "
        "state folder, following the fleet's rollout and reporting.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulate.add_argument("--fleet", required=True)
    simulate.add_argument("--devices", type=int, default=20, help="number of agents (default 20)")
    simulate.add_argument("--scenario", default="none", help="drift scenario (default none)")
    simulate.add_argument(
        "--drift-share", type=float, default=0.0, help="share of devices that drift (default 0)"
    )
    simulate.add_argument(
        "--drift-at",
        type=float,
        default=0.0,
        help="seconds after start when they drift (default 0)",
    )
    simulate.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    simulate.add_argument(
        "--rate", type=float, default=20.0, help="records scored per device per second (default 20)"
    )
    simulate.add_argument(
        "--label-share",
        type=float,
        default=0.5,
        help="share of predictions whose true label comes back (default 0.5)",
    )
    simulate.add_argument(
        "--report-seconds", type=float, default=5.0, help="report window of each agent (default 5)"
    )
    simulate.add_argument(
        "--state-dir",
        type=Path,
        help="folder for the agents' state (default HOME/simulation/FLEET)",
    )
    simulate.add_argument(
        "--trust-key",
        type=Path,
        action="append",
        help="publisher public key (default HOME/keys/edgefleet.pub)",
    )
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument(
        "--insecure-dev",
        action="store_true",
        help="no identities: anonymous agents on an insecure development broker",
    )
    simulate.add_argument(
        "--broker-dir",
        type=Path,
        help="data folder of the running 'edgefleet broker' to reload after enrolling "
        "(default: HOME/broker)",
    )
    add_broker_options(simulate)
    simulate.set_defaults(handler=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    from edgefleet.central.simulator import Simulation, SimulationConfig
    from edgefleet.cli.cmd_bundle import default_public_key
    from edgefleet.edge.scorer import trusted_keys_from

    keys = trusted_keys_from(args.trust_key or [default_public_key(args.home)])
    identities = None if args.insecure_dev else _enroll(args)
    config = SimulationConfig(
        fleet=args.fleet,
        devices=args.devices,
        broker=_broker(args),
        identity_root=identities,
        trusted_keys=tuple(keys),
        state_root=args.state_dir or args.home / "simulation" / args.fleet,
        scenario=args.scenario,
        drift_share=args.drift_share,
        drift_at=args.drift_at,
        records_per_second=args.rate,
        label_share=args.label_share,
        report_seconds=args.report_seconds,
        seed=args.seed,
    )
    say(f"starting {args.devices} agents of fleet {args.fleet} ...")
    with Simulation(config) as sim:
        sim.run_for(args.duration, progress=lambda line: say("  " + line))
        say("  " + sim.describe())
        say("stopping: closing report windows and flushing outboxes")
    return 0


def _broker(args: argparse.Namespace) -> BrokerAddress:
    from edgefleet.edge.mqtt import BrokerAddress

    if args.insecure_dev:
        say(INSECURE_WARNING)
        return broker_from_args(args)
    from edgefleet.central.identity.authority import DEFAULT_SECURE_URL, load_ca

    # The agents bring their own certificates; this names the broker and its CA.
    return BrokerAddress.parse(
        args.broker or DEFAULT_SECURE_URL,
        ca_file=args.ca_file or load_ca(Path(args.home)).cert_path,
        insecure=args.insecure,
    )


def _enroll(args: argparse.Namespace) -> Path:
    from edgefleet.central.identity.authority import DEFAULT_SECURE_URL, ensure_enrolled
    from edgefleet.central.simulator import device_ids
    from edgefleet.cli.cmd_bundle import default_public_key
    from edgefleet.cli.cmd_identity import reload_broker

    root: Path = Path(args.home) / "devices" / args.fleet
    enrolled = ensure_enrolled(
        Path(args.home),
        args.fleet,
        device_ids(args.fleet, args.devices),
        root,
        broker_url=args.broker or DEFAULT_SECURE_URL,
        signing_key=(args.trust_key or [default_public_key(Path(args.home))])[0],
    )
    if enrolled:
        say(f"enrolled {enrolled} device(s) into {root}")
        reload_broker(args)
    return root
