"""``edgefleet demo``: the whole story on embedded defaults, end to end.

Generate telco-churn data, train, export every format with parity checks and sign; start a
local Mosquitto and a monitor; publish to a simulated fleet; part of the fleet is hit by a
drift scenario (a competitor's offer by default: concept drift that retraining fixes); the
monitor detects it from the devices' aggregated reports alone, the loop retrains on the
window of data that validates best, ships the candidate only if it beats the running model
with confidence, releases a canary, judges it against the stable cohort and promotes it, and
the demo prints the AUROC before and after the update on the drifted devices. Exit status 0
only when the loop closed with the new model promoted to every device.
"""

from __future__ import annotations

import argparse
import shutil
import textwrap
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgefleet.cli.cmd_serve import add_demo_options, finish_demo
from edgefleet.cli.progress import say, step

FLEET = "demo"
SEGMENTS = ("senior_citizen", "region")


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="the whole story end to end: train, export, fleet, drift, retrain, update",
        description="Generate data, train, export all formats, create a fleet CA, start a "
        "secured local Mosquitto (TLS, a certificate per device and service, an access list) "
        "and a monitor, enroll the simulated devices, publish to the fleet, let part of it "
        "drift, and watch the closed loop detect, retrain, canary and promote. Everything lives "
        "in a work folder (default ./demo-run, replaced each run). Exit status 0 "
        "only when the loop closed.",
        epilog="examples:\n  edgefleet demo --devices 50\n"
        "  edgefleet demo --scenario price_increase   # retraining does not help: escalated",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-run"),
        help="folder for data, registry, keys, bundles, broker and monitor",
    )
    demo.add_argument("--rows", type=int, default=20000, help="training rows (default 20000)")
    demo.add_argument("--model", default="rf", help="model family (default rf)")
    demo.add_argument("--devices", type=int, default=50, help="simulated devices (default 50)")
    demo.add_argument(
        "--scenario",
        default="competitor_offer",
        help="drift scenario for part of the fleet (default competitor_offer, where retraining "
        "helps; price_increase is one where it does not, and the loop escalates)",
    )
    demo.add_argument(
        "--drift-share", type=float, default=0.5, help="share of devices that drift (default 0.5)"
    )
    demo.add_argument(
        "--canary",
        type=int,
        default=20,
        metavar="PERCENT",
        help="share of devices the candidate goes to first (default 20; with few devices, "
        "more, or the canary may hold none)",
    )
    demo.add_argument(
        "--min-labels",
        type=int,
        default=1000,
        help="labels a scope needs in a window before AUROC and calibration rules speak "
        "(default 1000; a small demo fleet reports fewer)",
    )
    demo.add_argument(
        "--drift-at",
        type=float,
        default=15.0,
        help="seconds after the fleet starts when the drift begins (default 15)",
    )
    demo.add_argument(
        "--window", type=float, default=5.0, help="monitoring window in seconds (default 5)"
    )
    demo.add_argument(
        "--timeout",
        type=float,
        default=240.0,
        help="give up if the loop has not closed after this many seconds",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--insecure-dev",
        action="store_true",
        help="run the broker anonymous, without TLS, certificates or access list",
    )
    add_demo_options(demo)
    demo.set_defaults(handler=run_demo)


@dataclass
class Milestones:
    """When each step of the story happened, in seconds since the fleet started."""

    drift: float | None = None
    alert: float | None = None
    alert_text: str = ""
    canary: float | None = None
    canary_version: str = ""
    promoted: float | None = None
    everywhere: float | None = None
    outcome: str = "not closed"
    drift_wall: float | None = None
    everywhere_wall: float | None = None
    before: Any = None
    after: Any = None
    fairness: str = ""


def run_demo(args: argparse.Namespace) -> int:
    from edgefleet.central.data.generator import generate
    from edgefleet.central.data.loader import data_sha256, load_training_table, write_table
    from edgefleet.central.export import export_bundle
    from edgefleet.central.keys import generate_keys
    from edgefleet.central.monitor.alerts import AlertRules, describe
    from edgefleet.central.monitor.ingest import Monitor
    from edgefleet.central.monitor.loop import RetrainLoop
    from edgefleet.central.monitor.store import MonitorStore
    from edgefleet.central.publish import publish, state_file_for
    from edgefleet.central.registry import Registry
    from edgefleet.central.simulator import Simulation, SimulationConfig
    from edgefleet.central.trainer import train
    from edgefleet.converters.registry import DEFAULT_FORMATS
    from edgefleet.edge.scorer import Scorer
    from edgefleet.edge.signing import load_private_key, load_public_key

    started = time.perf_counter()
    work: Path = args.workdir.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    home = work / "home"

    # -- train, export, sign --------------------------------------------------------------
    with step(f"generating {args.rows:,} customers (seed {args.seed})"):
        data = generate(args.rows, seed=args.seed)
        write_table(data.frame, work / "churn.csv")
    say(f"  {work / 'churn.csv'}: churn rate {(data.frame['churn'] == 'Yes').mean():.1%}")
    with step(f"training {args.model}"):
        # Segments: devices report per-group histograms, the dashboard's drift page shows
        # fairness across seniors and regions.
        schema = replace(data.schema, segments=SEGMENTS)
        table = load_training_table(data.frame, "churn", schema=schema)
        model = train(table, args.model, seed=args.seed)
        version = Registry(home).register(model, data_sha256=data_sha256(data.frame))
    say(
        f"  registered {version.label}: AUROC {model.metrics['auroc']:.3f}, "
        f"AP {model.metrics['average_precision']:.3f}"
    )
    private, public, key_id = generate_keys(home / "keys")
    say(f"- signing key {key_id} created")
    signing_key = load_private_key(private)
    with step(f"exporting {', '.join(DEFAULT_FORMATS)} with parity checks"):
        result = export_bundle(
            version,
            DEFAULT_FORMATS,
            home / "bundles" / "churn-1.0.0",
            signing_key,
            progress=lambda m: say(f"  {m}"),
        )
    with step("verifying the bundle as a device would (signature, hashes, golden vectors)"):
        scorer = Scorer.from_bundle(result.bundle, public)
    say(
        f"  {scorer.manifest.label} on {scorer.format}: self-test max |diff| "
        f"{scorer.self_test_error:.2g}"
    )

    # -- the fleet, the monitor and the loop ------------------------------------------------
    labelled = work / "labelled"
    store = MonitorStore(f"sqlite:///{work / 'monitor.db'}")
    milestones = Milestones()
    secured = _secure_broker(args, home, work, public)
    with secured.broker as broker:
        say(f"- local Mosquitto at {broker.url} (config {broker.config_path})")
        with step(f"publishing {version.label} to fleet {FLEET!r}"):
            publish(
                result.bundle,
                FLEET,
                secured.address("publisher"),
                signing_key,
                state_file=state_file_for(home, FLEET),
                progress=lambda m: say(f"  {m}"),
            )
        config = SimulationConfig(
            fleet=FLEET,
            devices=args.devices,
            broker=broker.address,
            trusted_keys=(load_public_key(public),),
            state_root=work / "devices",
            identity_root=secured.identity_root,
            scenario=args.scenario,
            drift_share=args.drift_share,
            drift_at=args.drift_at,
            report_seconds=args.window / 2,
            seed=args.seed,
        )
        loop = RetrainLoop(
            FLEET,
            home,
            store,
            secured.address("publisher"),
            signing_key,
            labelled,
            reference_source=work / "churn.csv",
            rules=AlertRules(min_labels=args.min_labels),
            canary_percent=args.canary,
            canary_windows=2,
            max_canary_windows=12,
            min_canary_reports=5,
            window_seconds=args.window,
            seed=args.seed,
            progress=lambda m: say(f"  loop: {m}"),
        )
        drifting = round(args.devices * args.drift_share)
        say(
            f"- {args.devices} simulated devices; {args.scenario} hits {drifting} of them "
            f"(groups group-0..) {args.drift_at:.0f} s after they start"
        )
        with (
            Monitor(FLEET, secured.address("monitor"), store) as monitor,
            Simulation(config) as sim,
        ):
            stop = threading.Event()
            feeder = threading.Thread(
                target=sim.run_for,
                args=(args.timeout + 60,),
                kwargs={"step": 0.5, "until": stop.is_set},
                daemon=True,
            )
            feeder.start()
            try:
                _watch(
                    args, sim, loop, monitor, milestones, labelled, describe, generate, write_table
                )
                if milestones.everywhere is not None:
                    _measure_gain(args, sim, store, home, milestones)
            finally:
                stop.set()
                feeder.join(timeout=15)
            fleet_scored = sim.stats.scored
        devices_seen = len(store.devices(FLEET))
        reports = store.report_count(FLEET)

    _summary(
        args,
        version,
        model,
        result,
        milestones,
        devices_seen,
        reports,
        fleet_scored,
        time.perf_counter() - started,
        work,
    )
    finish_demo(args, work, FLEET)
    return 0 if milestones.outcome == "promoted" else 1


@dataclass(frozen=True)
class SecuredBroker:
    """The demo's broker, and the identities of its services and devices (None: the
    insecure development broker, where everyone uses the broker's own address)."""

    broker: Any
    identities: Path | None
    identity_root: Path | None

    def address(self, service: str) -> Any:
        if self.identities is None:
            return self.broker.address
        from edgefleet.edge.identity import load_identity

        return load_identity(self.identities / service).address(self.broker.url)


def _secure_broker(args: argparse.Namespace, home: Path, work: Path, public: Path) -> SecuredBroker:
    """A fleet CA in ``home``, the broker's TLS files, service identities for the monitor,
    the publisher (the loop publishes canaries) and the dashboard, and one per device."""
    from edgefleet.central.broker import MosquittoBroker
    from edgefleet.central.identity import authority
    from edgefleet.central.simulator import device_ids
    from edgefleet.cli.cmd_broker import INSECURE_WARNING

    if args.insecure_dev:
        say(INSECURE_WARNING)
        return SecuredBroker(MosquittoBroker(work / "broker"), None, None)
    with step(f"fleet CA, service identities and {args.devices} device certificates"):
        authority.init_ca(home)
        broker = MosquittoBroker(work / "broker", tls=authority.broker_tls(home))
        for role in ("monitor", "publisher", "dashboard"):
            authority.issue_service(home, role, [role], broker_url=broker.url, signing_key=public)
        root = home / "devices" / FLEET
        authority.enroll_devices(
            home,
            FLEET,
            device_ids(FLEET, args.devices),
            root,
            broker_url=broker.url,
            signing_key=public,
        )
    say(f"  CA {home / 'ca'}; identities in {home / 'identities'} and {root}")
    return SecuredBroker(broker, home / "identities", root)


def _watch(
    args: argparse.Namespace,
    sim: Any,
    loop: Any,
    monitor: Any,
    milestones: Milestones,
    labelled: Path,
    describe: Any,
    generate: Any,
    write_table: Any,
) -> None:
    """Step the loop once a window until the canary is promoted (or rolled back), printing
    what the monitor sees."""
    deadline = time.monotonic() + args.timeout
    next_step = time.monotonic() + args.window
    window = 0
    while time.monotonic() < deadline:
        time.sleep(max(0.0, next_step - time.monotonic()))
        next_step += args.window
        window += 1
        now = sim.elapsed
        if milestones.drift is None and now >= args.drift_at:
            milestones.drift, milestones.drift_wall = now, time.time()
            # The newest labelled data, as a CRM export would bring it: customers from the
            # whole fleet, the drifted share among them.
            drifted = generate(
                int(8000 * args.drift_share), seed=args.seed + 7, scenario=args.scenario
            ).frame
            steady = generate(int(8000 * (1 - args.drift_share)), seed=args.seed + 8).frame
            write_table(drifted, labelled / "drifted-customers.csv")
            write_table(steady, labelled / "other-customers.csv")
            say(
                f"  t={now:5.1f}s drift begins on {len(sim.drifted)} devices; newest labelled "
                f"data exported to {labelled}"
            )
        result = loop.step()
        models = ", ".join(
            f"{v or 'none'}: {n}"
            for v, n in sorted(sim.models().items(), key=lambda item: str(item[0]))
        )
        say(
            f"  t={now:5.1f}s window {window}: {result.action} - {result.message[:110]} "
            f"[reports stored {monitor.stats.stored}, models {models}]"
        )
        if result.alerts and milestones.alert is None:
            milestones.alert = now
            milestones.alert_text = describe(result.alerts[0])
        if result.action == "canary":
            milestones.canary, milestones.canary_version = now, result.model_version or ""
        if result.action in ("promoted", "rolled_back", "escalated"):
            milestones.outcome = result.action
            if result.action != "promoted":
                return
            milestones.promoted = now
            target = result.model_version
            settle = time.monotonic() + 60
            while time.monotonic() < settle:
                if sim.models() == {target: len(sim.agents)}:
                    milestones.everywhere = sim.elapsed
                    milestones.everywhere_wall = time.time()
                    return
                time.sleep(0.5)
            milestones.outcome = "promoted, but not every device updated within 60 s"
            return
    say(f"  the loop did not close within {args.timeout:.0f} s")


def _measure_gain(
    args: argparse.Namespace, sim: Any, store: Any, home: Path, milestones: Milestones
) -> None:
    """The AUROC on the drifted devices' labelled reports: the old model's after the drift
    began, the new one's once every device runs it (fed for three more windows)."""
    from edgefleet.central.monitor.fielded import field_auroc

    say(f"  measuring the new model on the drifted devices for {3 * args.window:.0f} s")
    time.sleep(3 * args.window + args.window / 2)
    drifted = sorted(sim.drifted)
    old, new = "1.0.0", sim.models()
    target = next(iter(new)) if len(new) == 1 else None
    milestones.fairness = _fairness_line(store, home, new)
    milestones.before = field_auroc(
        store, FLEET, drifted, old, since=milestones.drift_wall, until=milestones.everywhere_wall
    )
    if target is not None:
        milestones.after = field_auroc(
            store, FLEET, drifted, str(target), since=milestones.everywhere_wall
        )


def _fairness_line(store: Any, home: Path, running: dict[Any, int]) -> str:
    """Demographic-parity and equalized-odds differences of the model every device runs,
    over its reports so far."""
    from edgefleet.central.monitor.fairness import fairness_of
    from edgefleet.central.registry import Registry

    if len(running) != 1:
        return "not measured (the fleet runs several versions)"
    version = str(next(iter(running)))
    aggregate = store.aggregate(FLEET, model_version=version)
    if aggregate is None:
        return "not measured (no reports)"
    schema = Registry(home).get(version).manifest().schema
    return "; ".join(
        f"{f.feature} DP {f.demographic_parity_difference:.3f} EO {f.equalized_odds_difference:.3f}"
        for f in fairness_of(aggregate, schema)
    )


def _gain_line(milestones: Milestones) -> str:
    before, after = milestones.before, milestones.after
    if before is None or after is None:
        return "not measured (too few labels on the drifted devices)"
    return (
        f"{before.auroc:.4f} ({before.model_version}, {before.labelled:,} labels) -> "
        f"{after.auroc:.4f} ({after.model_version}, {after.labelled:,} labels): "
        f"{after.auroc - before.auroc:+.4f}"
    )


def _summary(
    args: argparse.Namespace,
    version: Any,
    model: Any,
    result: Any,
    milestones: Milestones,
    devices_seen: int,
    reports: int,
    scored: int,
    seconds: float,
    work: Path,
) -> None:
    def at(value: float | None) -> str:
        return "-" if value is None else f"t={value:5.1f}s"

    say("\nsummary")
    say(
        f"  {'trained':22} {version.label} ({version.family}), holdout AUROC "
        f"{model.metrics['auroc']:.3f}"
    )
    for exported in result.formats:
        say(
            f"  {'export ' + exported.format:22} {exported.bytes:>11,} bytes, parity "
            f"{exported.parity.max_abs_diff:.2g}"
        )
    say(
        f"  {'fleet':22} {devices_seen} devices reported, {reports:,} reports stored, "
        f"{scored:,} records scored on the devices"
    )
    say(
        f"  {'drift begins':22} {at(milestones.drift)}  {args.scenario} on "
        f"{args.drift_share:.0%} of the devices"
    )
    # The whole alert, wrapped under itself: a cut ends mid-word ("(>= 0.100?), PS").
    when = at(milestones.alert)
    first, *rest = textwrap.wrap(milestones.alert_text, width=72) or [""]
    say(f"  {'first alert':22} {when}  {first}")
    for line in rest:
        say(" " * (2 + 22 + 1 + len(when) + 2) + line)
    say(f"  {'canary published':22} {at(milestones.canary)}  {milestones.canary_version}")
    say(f"  {'promoted':22} {at(milestones.promoted)}")
    say(f"  {'every device updated':22} {at(milestones.everywhere)}")
    say(f"  {'AUROC, drifted devices':22} {_gain_line(milestones)}")
    say(f"  {'fairness (segments)':22} {milestones.fairness or 'not measured'}")
    say(
        f"  {'loop':22} {milestones.outcome}; decisions: edgefleet --home {work / 'home'} "
        f"rollout history --fleet {FLEET} --db sqlite:///{work / 'monitor.db'}"
    )
    say(f"  finished in {seconds:.1f} s; files in {work}")
