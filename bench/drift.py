"""Drift detection from the reports' sketches, against Evidently on the raw rows.

For each drift scenario of the generator, a stream of device reports: ``--window`` reports
of no-drift data, then ``--after`` reports of the scenario. Each report is what an agent
sends: a SketchBuilder window of ``--rows`` records over the model's reference profile,
with the labels that came back (``--label-share``). After every report the monitor merges
the last ``--window`` reports, measures them against the manifest and evaluates the
default alert rules, as ``edgefleet watch`` does each window. Detection delay: reports
after the onset until the first alert (1 = the first drifted report already raised it).
A long no-drift run (``--no-drift-reports``) counts false alarms: windows with any alert.

Evidently (the optional ``bench`` extra, not a runtime dependency): for the same windows,
``DataDriftTable`` on the raw rows (the window's records against the training rows the
reference profile was built from), column by column with its default tests; the agreement
rate is the share of (window, feature) verdicts where it and the monitor agree. Bytes
shipped: every report's payload against the CSV of the raw rows behind it.

Targets: every scenario detected, no false alarm in the no-drift run, at least 90 %
agreement with Evidently.

    .venv/bin/python -m bench.drift [--family rf] [--rows 500] [--window 4]
        [--no-drift-reports 200] [--skip-evidently]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from edgefleet.central.data.generator import SCENARIOS, TARGET, generate
from edgefleet.central.data.loader import encode_features, load_training_table
from edgefleet.central.monitor.alerts import AlertRules, evaluate
from edgefleet.central.monitor.measures import measure
from edgefleet.central.trainer import TrainedModel, train
from edgefleet.edge.aggregate import merge_all
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.report import Report
from edgefleet.edge.schema import NumericFeature
from edgefleet.edge.sketch_builder import SketchBuilder

TARGET_AGREEMENT = 0.90

EvidentlyVerdicts = Callable[[pd.DataFrame], dict[str, bool]]


@dataclass(frozen=True)
class Setup:
    model: TrainedModel
    manifest: Manifest
    reference_rows: pd.DataFrame
    """The training rows the reference profile counts (features only): Evidently's
    reference, so both sides compare with the same data."""


@dataclass
class Window:
    end: int
    alerts: list[str]
    ours: dict[str, bool]
    theirs: dict[str, bool] | None


@dataclass
class Run:
    scenario: str
    onset: int | None
    reports: int
    windows: list[Window] = field(default_factory=list)
    report_bytes: int = 0
    csv_bytes: int = 0

    @property
    def first_alert(self) -> Window | None:
        if self.onset is None:
            return None
        return next((w for w in self.windows if w.end >= self.onset and w.alerts), None)

    @property
    def delay(self) -> int | None:
        first = self.first_alert
        return None if first is None or self.onset is None else first.end - self.onset + 1

    @property
    def false_alarms(self) -> int:
        onset = self.reports if self.onset is None else self.onset
        return sum(1 for w in self.windows if w.end < onset and w.alerts)

    @property
    def clean_windows(self) -> int:
        onset = self.reports if self.onset is None else self.onset
        return sum(1 for w in self.windows if w.end < onset)


def prepare(family: str, rows: int, seed: int) -> Setup:
    data = generate(rows, seed=seed)
    table = load_training_table(data.frame, TARGET, schema=data.schema)
    model = train(table, family, seed=seed)
    # The trainer's own split (same call, same seed): its training rows are the reference.
    train_rows, _ = train_test_split(
        np.arange(table.n_rows), test_size=0.25, random_state=seed, stratify=table.labels
    )
    manifest = Manifest(
        name="churn",
        version="1.0.0",
        created="bench",
        model_family=family,
        target=TARGET,
        data_sha256="0" * 64,
        schema=model.schema,
        metrics=dict(model.metrics),
        reference=model.reference,
        golden=model.golden,
        artifacts=(),
    )
    features = data.frame.iloc[train_rows].drop(columns=[TARGET]).reset_index(drop=True)
    return Setup(model, manifest, features)


def evidently_verdicts(reference: pd.DataFrame, setup: Setup) -> EvidentlyVerdicts | str:
    """A function giving Evidently's per-column drift verdicts for a current frame, or the
    reason Evidently cannot run here."""
    try:
        # Evidently 0.7 imports a helper pandas 3 removed; it only uses it for type checks
        # in data-integrity tests, which this bench never runs. Restore it if absent.
        common: Any = importlib.import_module("pandas.core.dtypes.common")
        if not hasattr(common, "infer_dtype_from_object"):
            common.infer_dtype_from_object = lambda dtype: pd.api.types.pandas_dtype(dtype).type
        report_module: Any = importlib.import_module("evidently.legacy.report")
        metrics_module: Any = importlib.import_module("evidently.legacy.metrics")
        mapping_module: Any = importlib.import_module("evidently.legacy.pipeline.column_mapping")
    except ImportError as error:
        return f"evidently is not importable ({error}): pip install 'edgefleet[bench]'"
    schema = setup.manifest.schema
    numeric = [f.name for f in schema.features if isinstance(f, NumericFeature)]
    categorical = [f.name for f in schema.features if not isinstance(f, NumericFeature)]
    mapping = mapping_module.ColumnMapping(
        numerical_features=numeric, categorical_features=categorical
    )

    def verdicts(current: pd.DataFrame) -> dict[str, bool]:
        report = report_module.Report(metrics=[metrics_module.DataDriftTable()])
        report.run(reference_data=reference, current_data=current, column_mapping=mapping)
        columns = report.as_dict()["metrics"][0]["result"]["drift_by_columns"]
        return {name: bool(column["drift_detected"]) for name, column in columns.items()}

    return verdicts


def run_stream(
    setup: Setup,
    scenario: str,
    *,
    before: int,
    after: int,
    rows: int,
    window: int,
    label_share: float,
    rules: AlertRules,
    seed: int,
    evidently: EvidentlyVerdicts | None,
) -> Run:
    """``before`` no-drift reports, then ``after`` of ``scenario`` (none: all no-drift)."""
    total = before + after
    onset = None if scenario == "none" else before
    run = Run(scenario, onset, total)
    rng = np.random.default_rng(seed)
    schema, pipeline = setup.manifest.schema, setup.model.pipeline
    clock = iter(float(1_700_000_000 + 60 * k) for k in range(2 * total + 2))
    builder = SketchBuilder.from_manifest(setup.manifest, clock=lambda: next(clock))
    reports: list[Report] = []
    frames: list[pd.DataFrame] = []
    detector = rules.feature_detector()
    for k in range(total):
        drifted = onset is not None and k >= onset
        # A distinct seed per report and stream: every report is fresh customers.
        frame = generate(
            rows,
            seed=seed * 100_000 + SCENARIOS_INDEX[scenario] * 10_000 + k,
            scenario=scenario if drifted else "none",
        ).frame
        inputs = encode_features(frame[list(schema.names)], schema)
        scores = pipeline.predict_proba(inputs)[:, 1]
        builder.add(inputs, scores, 0.001)
        labelled = rng.random(rows) < label_share
        labels = (frame[TARGET] == "Yes").to_numpy().astype(int)
        builder.add_outcomes(scores[labelled], labels[labelled])
        report = Report.from_body(
            builder.roll(),
            fleet="bench",
            device_id=f"device-{k % 8}",
            sequence=k + 1,
            cohort="stable",
            device_group="default",
        )
        run.report_bytes += len(report.encode())
        run.csv_bytes += len(frame.to_csv(index=False).encode())
        reports.append(report)
        frames.append(frame.drop(columns=[TARGET]))
        if k + 1 < window:
            continue
        measures = measure(merge_all(reports[-window:]), setup.manifest, detector=detector)
        alerts = evaluate(measures, "fleet", rules)
        theirs = None
        if evidently is not None:
            theirs = evidently(pd.concat(frames[-window:], ignore_index=True))
        run.windows.append(
            Window(
                end=k,
                alerts=[_label(a.rule, a.subject, a.value) for a in alerts],
                ours={f.feature: f.drifted for f in measures.features},
                theirs=theirs,
            )
        )
    return run


SCENARIOS_INDEX = {name: i for i, name in enumerate(SCENARIOS)}


def _label(rule: str, subject: str, value: float) -> str:
    return f"{rule} {subject} ({value:.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="rf", help="model family (default rf)")
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=500, help="records per report")
    parser.add_argument("--window", type=int, default=4, help="reports per alert window")
    parser.add_argument("--after", type=int, default=16, help="reports after the onset")
    parser.add_argument("--no-drift-reports", type=int, default=200)
    parser.add_argument("--label-share", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-evidently", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    setup = prepare(args.family, args.train_rows, args.seed)
    rules = AlertRules()
    evidently: EvidentlyVerdicts | None = None
    evidently_note = "skipped (--skip-evidently)"
    if not args.skip_evidently:
        found = evidently_verdicts(setup.reference_rows, setup)
        if isinstance(found, str):
            evidently_note = found
        else:
            evidently, evidently_note = found, ""
    print(
        f"drift bench: {args.family} trained on {args.train_rows:,} rows (seed {args.seed}); "
        f"reports of {args.rows} records, labels for {args.label_share:.0%} of them; alerts "
        f"on the last {args.window} reports ({args.window * args.rows:,} records) with the "
        "default rules"
    )
    runs: list[Run] = []
    for scenario in SCENARIOS:
        if scenario == "none":
            continue
        runs.append(
            run_stream(
                setup,
                scenario,
                before=args.window,
                after=args.after,
                rows=args.rows,
                window=args.window,
                label_share=args.label_share,
                rules=rules,
                seed=args.seed,
                evidently=evidently,
            )
        )
    quiet = run_stream(
        setup,
        "none",
        before=args.no_drift_reports,
        after=0,
        rows=args.rows,
        window=args.window,
        label_share=args.label_share,
        rules=rules,
        seed=args.seed,
        evidently=evidently,
    )
    runs.append(quiet)

    print()
    print(f"{'scenario':18} {'onset':>5} {'alert at':>8} {'delay':>5}  first alert")
    for run in runs[:-1]:
        first = run.first_alert
        print(
            f"{run.scenario:18} {run.onset:>5} "
            f"{'-' if first is None else first.end:>8} {run.delay or '-':>5}  "
            f"{'NOT DETECTED' if first is None else ', '.join(first.alerts[:3])}"
        )
    print(
        f"{'none':18} {'-':>5} {'-':>8} {'-':>5}  false alarms: {quiet.false_alarms} of "
        f"{quiet.clean_windows} windows ({quiet.reports} reports)"
    )
    before = sum(r.false_alarms for r in runs[:-1])
    print(f"(false alarms before the onset in the scenario streams: {before})")
    alerted = Counter(a.split(" (")[0] for w in quiet.windows for a in w.alerts)
    if alerted:
        print(f"no-drift alerts: {dict(alerted)}")

    agreement = None
    if evidently is not None:
        pairs = [
            (name, ours, w.theirs[name])
            for run in runs
            for w in run.windows
            if w.theirs is not None
            for name, ours in w.ours.items()
        ]
        agree = sum(1 for _, ours, theirs in pairs if ours == theirs)
        agreement = agree / len(pairs)
        windows = [w for run in runs for w in run.windows if w.theirs is not None]
        any_agree = sum(
            1 for w in windows if any(w.ours.values()) == any((w.theirs or {}).values())
        )
        flagged = [(ours, theirs) for _, ours, theirs in pairs if ours or theirs]
        both = sum(1 for ours, theirs in flagged if ours and theirs)
        disagreements = Counter(name for name, ours, theirs in pairs if ours != theirs)
        print()
        print(
            f"Evidently DataDriftTable on the same raw rows: {agreement:.1%} agreement over "
            f"{len(pairs):,} feature verdicts ({len(windows)} windows); per window (any feature "
            f"drifted) {any_agree / len(windows):.1%}"
        )
        print(
            f"  of the {len(flagged)} verdicts where either side saw drift, both did in "
            f"{both} ({both / max(1, len(flagged)):.1%}); the monitor alone in "
            f"{sum(1 for ours, theirs in flagged if ours and not theirs)}, Evidently alone in "
            f"{sum(1 for ours, theirs in flagged if theirs and not ours)}"
        )
        if disagreements:
            listed = ", ".join(f"{name} {count}" for name, count in disagreements.most_common())
            print(f"  disagreements by feature: {listed}")
    else:
        print()
        print(f"Evidently: {evidently_note}; that column is left out")

    report_bytes = sum(r.report_bytes for r in runs)
    csv_bytes = sum(r.csv_bytes for r in runs)
    reports = sum(r.reports for r in runs)
    print(
        f"bytes shipped: {reports} reports {report_bytes / 1e6:.2f} MB "
        f"({report_bytes / reports / 1e3:.1f} KB each) vs the raw rows as CSV "
        f"{csv_bytes / 1e6:.2f} MB: {csv_bytes / report_bytes:.1f}x less"
    )
    print(f"finished in {time.perf_counter() - started:.0f} s")

    results = [
        ("every scenario detected", all(r.delay is not None for r in runs[:-1])),
        ("no false alarm in the no-drift run", quiet.false_alarms == 0),
    ]
    if agreement is not None:
        results.append(
            (f"agreement with Evidently >= {TARGET_AGREEMENT:.0%}", agreement >= TARGET_AGREEMENT)
        )
    print()
    for label, ok in results:
        print(f"{'PASS' if ok else 'FAIL'} ({label})")
    if agreement is None:
        print("(agreement with Evidently not measured: see above)")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
