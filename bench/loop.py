"""Does the loop retrain only when it helps? Each drift scenario through the real loop.

For each scenario of the generator: churn 1.0.0 (``--family``, trained on ``--rows``
no-drift rows) is published stable to a fleet on a real Mosquitto (started here, development
mode); ``--devices`` devices send one report per window, as agents build them
(``SketchBuilder`` over the manifest: ``--records`` records scored by the model the signed
rollout state gives each device, canary cohort included, with the labels of
``--label-share`` of them). At window ``--onset`` the first ``--drift-share`` of the devices
switch to the scenario and the newest labelled data (8000 customers, the same share
drifted) lands in the loop's folder. The real :class:`RetrainLoop` steps once a window (SQLite
store, alert rules with ``--min-labels``, reference data = the training rows) until it
promotes, escalates or rolls back. Windows are on a virtual clock of ``--window`` seconds, so
a run takes the time of its training and exports, not of its windows.

Printed per scenario: the running model's and the candidate's AUROC on fresh post-drift data
(20,000 rows of the scenario: the drifted devices' population), the decision, and the time
from drift onset to a promotion or an escalation (windows x window). The decision is right
when the loop promotes a candidate that is better on the fresh data, and escalates or keeps
one that is not better by ``--material`` AUROC (a gain too small to be worth a rollout).

    .venv/bin/python -m bench.loop [--family rf] [--devices 20] [--window 60]
        [--scenarios price_increase,network_outage,competitor_offer,new_segment]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgefleet.central.broker import MosquittoBroker
from edgefleet.central.data.generator import TARGET, generate
from edgefleet.central.data.loader import (
    data_sha256,
    encode_features,
    load_training_table,
    write_table,
)
from edgefleet.central.export import export_bundle
from edgefleet.central.keys import generate_keys
from edgefleet.central.monitor.alerts import AlertRules
from edgefleet.central.monitor.benefit import auroc
from edgefleet.central.monitor.loop import RetrainLoop
from edgefleet.central.monitor.store import MonitorStore
from edgefleet.central.publish import publish, state_file_for
from edgefleet.central.registry import Registry
from edgefleet.central.trainer import train
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.report import Report
from edgefleet.edge.rollout import target_for
from edgefleet.edge.signing import load_private_key
from edgefleet.edge.sketch_builder import SketchBuilder
from edgefleet.edge.topics import Topics

SCENARIOS = ("price_increase", "network_outage", "competitor_offer", "new_segment")
TERMINAL = ("promoted", "escalated", "rolled_back")


@dataclass
class Outcome:
    scenario: str
    decision: str
    running_auroc: float
    candidate_auroc: float | None
    window: str | None
    seconds_to_decision: float | None
    right: bool
    messages: list[str]


@dataclass
class VirtualClock:
    now: float

    def __call__(self) -> float:
        return self.now


class Fleet:
    """Devices that score pools of customers with the model the rollout state gives them."""

    def __init__(self, args: argparse.Namespace, scenario: str, loop: RetrainLoop) -> None:
        self.args = args
        self.loop = loop
        self.topics = Topics(loop.fleet)
        self.devices = [f"dev-{i:03d}" for i in range(args.devices)]
        self.drifting = set(self.devices[: round(args.devices * args.drift_share)])
        self.pools = {
            "none": generate(20000, seed=args.seed + 101).frame,
            scenario: generate(20000, seed=args.seed + 202, scenario=scenario).frame,
        }
        self.scenario = scenario
        self.sequence = 0
        self.rng = np.random.default_rng(args.seed)
        self._pipelines: dict[str, Any] = {}

    def reports(self, start: float, end: float, drifted: bool) -> list[tuple[str, bytes]]:
        state = self.loop.rollout()
        self.sequence += 1
        items = []
        for device in self.devices:
            ref, cohort = target_for(state, device)
            assert ref is not None
            pool = self.pools[self.scenario if drifted and device in self.drifting else "none"]
            manifest = self.loop.manifest_of(ref)
            rows = pool.sample(self.args.records, random_state=int(self.rng.integers(1 << 31)))
            body = self._window(manifest, rows, start, end)
            report = Report.from_body(
                body,
                fleet=self.loop.fleet,
                device_id=device,
                sequence=self.sequence,
                cohort=cohort,
                device_group=f"group-{0 if device in self.drifting else 1}",
            )
            items.append((self.topics.report(device), report.encode()))
        return items

    def _window(self, manifest: Manifest, rows: pd.DataFrame, start: float, end: float) -> Any:
        clock = VirtualClock(start)
        builder = SketchBuilder.from_manifest(manifest, clock=clock)
        inputs = encode_features(rows[list(manifest.schema.names)], manifest.schema)
        scores = self._pipeline(manifest).predict_proba(inputs)[:, 1]
        builder.add(inputs, scores, 0.001)
        labelled = self.rng.random(len(rows)) < self.args.label_share
        labels = (rows[TARGET] == "Yes").to_numpy().astype(int)
        builder.add_outcomes(scores[labelled], labels[labelled])
        clock.now = end
        return builder.roll()

    def _pipeline(self, manifest: Manifest) -> Any:
        if manifest.version not in self._pipelines:
            version = self.loop.registry.get(manifest.version, manifest.name)
            self._pipelines[manifest.version] = version.load_pipeline()
        return self._pipelines[manifest.version]


def run_scenario(
    args: argparse.Namespace,
    scenario: str,
    broker: MosquittoBroker,
    reference: pd.DataFrame,
    say: Callable[[str], None],
) -> Outcome:
    work = Path(tempfile.mkdtemp(prefix=f"edgefleet-bench-loop-{scenario}-"))
    home = work / "home"
    write_table(reference, work / "reference.csv")
    table = load_training_table(reference, TARGET)
    model = train(table, args.family, seed=args.seed)
    version = Registry(home).register(model, data_sha256=data_sha256(reference))
    private, _, _ = generate_keys(home / "keys")
    key = load_private_key(private)
    bundle = export_bundle(version, ["onnx"], home / "bundles" / "churn-1.0.0", key).bundle
    fleet = f"bench-{scenario.replace('_', '-')}-{int(time.time())}"
    publish(bundle, fleet, broker.address, key, state_file=state_file_for(home, fleet))
    clock = VirtualClock(time.time())
    store = MonitorStore(f"sqlite:///{work / 'monitor.db'}")
    loop = RetrainLoop(
        fleet,
        home,
        store,
        broker.address,
        key,
        work / "labelled",
        reference_source=work / "reference.csv",
        rules=AlertRules(min_labels=args.min_labels),
        formats=["onnx"],
        canary_percent=args.canary,
        canary_windows=2,
        min_canary_reports=3,
        window_seconds=args.window,
        seed=args.seed,
        clock=clock,
    )
    devices = Fleet(args, scenario, loop)
    messages: list[str] = []
    decision, decided_at, onset_at = "kept", None, None
    for index in range(args.max_windows):
        start = clock.now
        clock.now += args.window
        drifted = index >= args.onset
        if drifted and onset_at is None:
            onset_at = start
            _export_newest(args, scenario, work / "labelled")
        # Reports end a second before the step reads them, as they arrive in real life.
        store.ingest_many(devices.reports(start, clock.now - 1.0, drifted))
        result = loop.step()
        messages.append(f"window {index}: {result.action}: {result.message[:140]}")
        say(f"    {scenario} {messages[-1]}")
        if result.action in TERMINAL:
            decision, decided_at = result.action, clock.now
            break
        if drifted and result.action in ("held", "none") and index >= args.onset + 6:
            break  # no alert (or held) for six drifted windows: the model is kept
    return _outcome(args, scenario, loop, decision, onset_at, decided_at, messages)


def _export_newest(args: argparse.Namespace, scenario: str, folder: Path) -> None:
    drifted = round(8000 * args.drift_share)
    write_table(
        generate(drifted, seed=args.seed + 7, scenario=scenario).frame, folder / "drifted.csv"
    )
    write_table(generate(8000 - drifted, seed=args.seed + 8).frame, folder / "other.csv")


def _outcome(
    args: argparse.Namespace,
    scenario: str,
    loop: RetrainLoop,
    decision: str,
    onset_at: float | None,
    decided_at: float | None,
    messages: list[str],
) -> Outcome:
    fresh = generate(20000, seed=args.seed + 999, scenario=scenario).frame
    versions = {v.version: v for v in loop.registry.versions() if v.name == "churn"}
    running = _auroc_of(versions["1.0.0"], fresh)
    candidate = _auroc_of(versions["1.1.0"], fresh) if "1.1.0" in versions else None
    retrained = [d for d in loop.store.decisions(loop.fleet) if d.action == "retrained"]
    window = retrained[0].evidence["window"]["chosen"] if retrained else None
    gain = None if candidate is None else candidate - running
    if decision == "promoted":
        right = gain is not None and gain > 0
    else:
        right = gain is None or gain < args.material
    seconds = None if decided_at is None or onset_at is None else decided_at - onset_at
    return Outcome(scenario, decision, running, candidate, window, seconds, right, messages)


def _auroc_of(version: Any, frame: pd.DataFrame) -> float:
    schema = version.load_card().schema
    inputs = encode_features(frame[list(schema.names)], schema)
    scores = version.load_pipeline().predict_proba(inputs)[:, 1]
    return auroc((frame[TARGET] == "Yes").to_numpy().astype(int), scores)


def print_table(outcomes: list[Outcome], args: argparse.Namespace) -> None:
    print(
        f"\nloop decisions ({args.family}, {args.devices} devices, {args.drift_share:.0%} "
        f"drifted, window {args.window:g} s, AUROC on 20,000 fresh post-drift rows)"
    )
    print(
        f"{'scenario':18} {'running':>8} {'candidate':>9} {'gain':>8} {'window':>9} "
        f"{'decision':>10} {'onset->decision':>16} {'right':>6}"
    )
    for o in outcomes:
        cand = "-" if o.candidate_auroc is None else f"{o.candidate_auroc:.4f}"
        gain = "-" if o.candidate_auroc is None else f"{o.candidate_auroc - o.running_auroc:+.4f}"
        took = "-" if o.seconds_to_decision is None else f"{o.seconds_to_decision:.0f} s"
        print(
            f"{o.scenario:18} {o.running_auroc:8.4f} {cand:>9} {gain:>8} {o.window or '-':>9} "
            f"{o.decision:>10} {took:>16} {'yes' if o.right else 'NO':>6}"
        )
    right = sum(o.right for o in outcomes)
    print(f"right decisions: {right}/{len(outcomes)} (target: all)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="rf")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--records", type=int, default=200, help="records per device window")
    parser.add_argument("--label-share", type=float, default=0.5)
    parser.add_argument("--drift-share", type=float, default=0.5)
    parser.add_argument("--canary", type=int, default=30)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--onset", type=int, default=2)
    parser.add_argument("--max-windows", type=int, default=30)
    parser.add_argument("--min-labels", type=int, default=1000)
    parser.add_argument("--material", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    say: Callable[[str], None] = (lambda _: None) if args.quiet else print
    reference = generate(args.rows, seed=args.seed).frame
    outcomes = []
    with MosquittoBroker(Path(tempfile.mkdtemp(prefix="edgefleet-bench-broker-"))) as broker:
        for scenario in args.scenarios.split(","):
            started = time.perf_counter()
            say(f"- {scenario}")
            outcomes.append(run_scenario(args, scenario, broker, reference, say))
            say(f"  {scenario}: {time.perf_counter() - started:.0f} s of work")
    print_table(outcomes, args)
    return 0 if all(o.right for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
