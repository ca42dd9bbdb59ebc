"""``edgefleet demo``: the main job end to end on embedded defaults.

Generate telco-churn data, train, register, export every format with parity checks, sign,
start a local Mosquitto, publish to a fleet, run simulated devices (a share of them hit by
a price increase part-way), and show their aggregated reports arriving and what drifted.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from edgefleet.cli.progress import say, step


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the main job end to end on generated data",
        description="Generate data, train, export all formats, start a local Mosquitto, "
        "publish to a simulated fleet, and watch its reports and drift; in a "
        "work folder (default ./demo-run, replaced each run).",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-run"),
        help="folder for data, registry, keys, bundles and the broker",
    )
    demo.add_argument("--rows", type=int, default=20000, help="training rows (default 20000)")
    demo.add_argument("--model", default="rf", help="model family (default rf)")
    demo.add_argument("--devices", type=int, default=20, help="simulated devices (default 20)")
    demo.add_argument(
        "--scenario",
        default="price_increase",
        help="drift scenario for part of the fleet (default price_increase)",
    )
    demo.add_argument(
        "--drift-share", type=float, default=0.4, help="share of devices that drift (default 0.4)"
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=24.0,
        help="seconds the fleet runs (default 24; drift starts at a third)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from edgefleet.central.broker import MosquittoBroker
    from edgefleet.central.data.generator import generate
    from edgefleet.central.data.loader import data_sha256, load_training_table, write_table
    from edgefleet.central.export import export_bundle
    from edgefleet.central.keys import generate_keys
    from edgefleet.central.monitor.drift import DriftDetector
    from edgefleet.central.publish import publish
    from edgefleet.central.registry import Registry
    from edgefleet.central.simulator import Simulation, SimulationConfig
    from edgefleet.central.trainer import train
    from edgefleet.converters.registry import DEFAULT_FORMATS
    from edgefleet.edge.mqtt import MqttClient
    from edgefleet.edge.profile import NumericProfile
    from edgefleet.edge.report import Report, merge_all
    from edgefleet.edge.scorer import Scorer
    from edgefleet.edge.signing import load_private_key, load_public_key
    from edgefleet.edge.topics import Topics

    started = time.perf_counter()
    work: Path = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    home = work / "home"
    with step(f"generating {args.rows:,} customers (seed {args.seed})"):
        data = generate(args.rows, seed=args.seed)
        write_table(data.frame, work / "churn.csv")
    say(f"  {work / 'churn.csv'}: churn rate {(data.frame['churn'] == 'Yes').mean():.1%}")
    with step(f"training {args.model}"):
        table = load_training_table(data.frame, "churn", schema=data.schema)
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
            version, DEFAULT_FORMATS, work / "bundle", signing_key, progress=lambda m: say(f"  {m}")
        )
    with step("verifying the bundle as a device would (signature, hashes, golden vectors)"):
        scorer = Scorer.from_bundle(result.bundle, public)
    say(
        f"  {scorer.manifest.label} on {scorer.format}: self-test max |diff| "
        f"{scorer.self_test_error:.2g}"
    )

    fleet = "demo"
    reports: list[Report] = []
    lock = threading.Lock()

    def on_report(topic: str, payload: bytes, retained: bool) -> None:
        with lock:
            reports.append(Report.decode(payload))

    with MosquittoBroker(work / "broker") as broker:
        say(f"- local Mosquitto running at {broker.url} (config in {broker.config_path})")
        collector = MqttClient(broker.address, "demo-monitor")
        collector.connect()
        collector.subscribe(Topics(fleet).all_reports, on_report)
        with step(f"publishing {version.label} to fleet {fleet!r}"):
            publish(
                result.bundle,
                fleet,
                broker.address,
                signing_key,
                state_file=home / "rollout-demo.json",
                progress=lambda m: say(f"  {m}"),
            )
        config = SimulationConfig(
            fleet=fleet,
            devices=args.devices,
            broker=broker.address,
            trusted_keys=(load_public_key(public),),
            state_root=work / "devices",
            scenario=args.scenario,
            drift_share=args.drift_share,
            drift_at=args.duration / 3,
            report_seconds=3.0,
            seed=args.seed,
        )
        say(
            f"- {args.devices} simulated devices; {args.scenario} hits "
            f"{round(args.devices * args.drift_share)} of them after {config.drift_at:.0f} s"
        )
        with Simulation(config) as sim:

            def line(text: str) -> None:
                with lock:
                    arrived = len(reports)
                say(f"  {text}, reports arrived {arrived}")

            sim.run_for(args.duration, progress=line)
            drifted = sim.drifted
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                devices_heard = {r.device_id for r in reports}
            if len(devices_heard) >= args.devices:
                break
            time.sleep(0.2)
        collector.disconnect()

    with lock:
        received = list(reports)
    if not received:
        say("no reports arrived: the fleet did not report")
        return 1
    say("\nsummary")
    say(f"  model          {version.label} ({version.family}), AUROC {model.metrics['auroc']:.3f}")
    for exported in result.formats:
        parity = exported.parity.max_abs_diff
        say(f"  {exported.format:14} {exported.bytes:>11,} bytes, parity {parity:.2g}")
    say(
        f"  fleet          {len({r.device_id for r in received})} devices, {len(received)} "
        f"reports, {sum(r.scored for r in received):,} records scored on the devices"
    )
    detector = DriftDetector()
    reference = {f.name: f for f in model.reference.features}
    for label, group in (
        ("stable devices", [r for r in received if r.device_id not in drifted]),
        (f"{args.scenario}", [r for r in received if r.device_id in drifted]),
    ):
        if not group:
            continue
        merged = merge_all(group)
        flagged = []
        for feature in data.schema.features:
            ref, sketch = reference[feature.name], merged.feature(feature.name)
            ref_extra = ref.missing if isinstance(ref, NumericProfile) else ref.unknown
            verdict = detector.assess(
                feature.name,
                list(ref.counts),
                list(sketch.bins.counts),
                reference_extra=ref_extra,
                current_extra=sketch.missing + sketch.unknown,
            )
            if verdict.drifted:
                flagged.append(f"{feature.name} (JS {verdict.js:.2f}, PSI {verdict.psi:.2f})")
        say(
            f"  {label:14} {merged.scored:,} records: drift in "
            f"{', '.join(flagged) if flagged else 'no feature'}"
        )
    say(f"  finished in {time.perf_counter() - started:.1f} s; files in {work}")
    return 0
