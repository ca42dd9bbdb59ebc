"""The closed loop: alert, retrain, compare, canary, then promote or roll back on evidence.

:class:`RetrainLoop` holds the parameters; each step is a method, and every step that
changes something records a :class:`~edgefleet.central.monitor.store.DecisionRecord` with
the numbers it was taken on (``edgefleet decisions``):

==============  =================================================================================
action          when, and its evidence
==============  =================================================================================
check           the running model was measured (on demand, or because an alert asks for a new
                model): the alerts and the fleet's measures
retrained       a candidate was trained on the newest labelled data with the running version's
                family and parameters, and registered: rows, source, holdout metrics
rejected        the candidate is worse than the running model on held-out recent labelled data
                (AUROC or average precision lower by more than ``tolerance``): both numbers
accepted        it is not: both numbers
export_failed   a format failed its parity check (or could not be converted): the error
canary          exported in every format with parity and published as the canary for
                ``canary_percent`` % of the devices: sizes, parity, rollout sequence
promoted        the canary cohort was at least as good as the stable one on enough evidence:
                both cohorts' measures and the comparisons
rolled_back     the canary was worse (or never produced enough evidence): the same numbers
==============  =================================================================================

Canary evaluation (:meth:`RetrainLoop.evaluate_canary`, :func:`judge_canary`) compares the
canary and stable cohorts over the reports since the canary was published, each model
against its own reference profile:

- errors: worse when the canary's error rate is above ``rules.max_error_rate`` beyond noise
  (Wilson lower bound), or above the stable cohort's by more than ``error_margin`` with
  the intervals apart;
- score shift: worse when the canary's live scores drift from its own holdout scores (the
  score-drift rule) by ``drift_margin`` more, in JS distance, than the stable model's do;
- input drift: worse when the canary's largest feature drift exceeds the stable model's
  by ``drift_margin`` and crosses the feature-drift rule (the candidate was trained on data
  unlike what the fleet sees);
- AUROC where labels came back (at least ``rules.min_labels`` per cohort): worse when the
  canary's is lower by more than ``auroc_margin`` *and* by more than twice the standard
  error of the difference (Hanley and McNeil), so that a few hundred labels do not roll
  back a good model by chance.

Any "worse" rolls back at once. Promotion needs ``canary_windows`` windows since the
canary started, ``min_canary_reports`` canary reports, ``rules.feature_min_count`` scored
records (and, with ``require_labels``, the AUROC comparison). A canary still short of
evidence after ``max_canary_windows`` windows is rolled back: a canary that does not report
cannot be shown to be good.

The data source (``data_source``) is one of:

- a folder: the newest ``.csv`` / ``.parquet`` files (by modification time) are read until
  ``max_rows`` rows; of the oldest file read, only its last rows are kept;
- a single ``.csv`` / ``.parquet`` file;
- ``"package.module:function"``: the function is imported and called with no arguments and
  returns a pandas DataFrame (the same columns as the training table, target included);
- a Python callable returning such a DataFrame.
"""

from __future__ import annotations

import importlib
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split

from edgefleet.central.data.loader import (
    SUFFIXES,
    TrainingTable,
    data_sha256,
    encode_features,
    load_training_table,
    read_table,
)
from edgefleet.central.export import export_bundle
from edgefleet.central.monitor.alerts import RETRAIN_RULES, AlertRules, evaluate_all
from edgefleet.central.monitor.drift import coarsen, js_distance
from edgefleet.central.monitor.measures import Measures, measure, scopes
from edgefleet.central.monitor.rollups import MINUTE
from edgefleet.central.monitor.store import AlertRecord, DecisionRecord, MonitorStore
from edgefleet.central.publish import (
    promote,
    publish,
    rollback,
    rollout_status,
    state_file_for,
)
from edgefleet.central.registry import ModelVersion, Registry
from edgefleet.central.trainer import train
from edgefleet.converters.registry import DEFAULT_FORMATS
from edgefleet.edge.bundle import MANIFEST_FILE
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.mqtt import BrokerAddress
from edgefleet.edge.report import Aggregate
from edgefleet.edge.rollout import DEFAULT_LIFETIME, ModelRef, RolloutState
from edgefleet.edge.signing import TrustedKey
from edgefleet.edge.topics import DEFAULT_PREFIX
from edgefleet.errors import DataError, EdgefleetError, InputError

DataSource = str | Path | Callable[[], pd.DataFrame]
Progress = Callable[[str], None]
Verdict = Literal["worse", "good", "insufficient"]

_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_FAILURES = ("rejected", "rolled_back", "export_failed")


# ------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class LabelledData:
    """The newest labelled rows of a source and where they came from."""

    frame: pd.DataFrame
    source: str
    files: tuple[str, ...] = ()


def read_labelled(source: DataSource, *, max_rows: int = 50_000) -> LabelledData:
    """The newest ``max_rows`` labelled rows of ``source`` (see the module docstring)."""
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise InputError(f"max_rows must be a whole number >= 1, not {max_rows!r}")
    if callable(source):
        name = getattr(source, "__qualname__", repr(source))
        return LabelledData(_newest(_frame_of(source(), name), max_rows), f"callable {name}")
    text = str(source)
    path = Path(source)
    if isinstance(source, str) and not path.exists() and _CALLABLE.fullmatch(source):
        module_name, function_name = source.split(":", 1)
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as error:
            raise InputError(
                f"data source {source}: cannot import {module_name}: {error}"
            ) from None
        for part in function_name.split("."):
            target = getattr(target, part, None)
        if not callable(target):
            raise InputError(f"data source {source}: {function_name} is not a function there")
        return LabelledData(_newest(_frame_of(target(), source), max_rows), source)
    if path.is_file():
        return LabelledData(_newest(read_table(path), max_rows), text, (text,))
    if not path.is_dir():
        raise InputError(
            f"data source {text}: no such folder or file, and not a 'module:function' either"
        )
    files = sorted(
        (
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
        ),
        key=lambda p: (p.stat().st_mtime, p.name),
        reverse=True,
    )
    if not files:
        raise DataError(f"{path}: no .csv or .parquet files to train on")
    frames: list[pd.DataFrame] = []
    rows = 0
    for file in files:
        frames.append(read_table(file))
        rows += len(frames[-1])
        if rows >= max_rows:
            break
    # Oldest first, so that cutting to max_rows drops the oldest rows.
    frame = _newest(pd.concat(frames[::-1], ignore_index=True), max_rows)
    used = tuple(str(f) for f in files[: len(frames)])
    return LabelledData(frame, text, used)


def _newest(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    # Rows are taken to be in time order: the last ones are the newest.
    return frame.tail(rows).reset_index(drop=True)


def _frame_of(value: Any, name: str) -> pd.DataFrame:
    if not isinstance(value, pd.DataFrame):
        raise InputError(f"data source {name} returned {type(value).__name__}, not a DataFrame")
    if value.empty:
        raise DataError(f"data source {name} returned no rows")
    return value.reset_index(drop=True)


# ------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class CheckResult:
    """The measures of the running model per scope and the alerts they raise.
    ``stored`` are the alerts that were new (not already open) and were saved."""

    model_version: str
    since: float | None
    until: float | None
    measures: tuple[tuple[str, Measures], ...]
    alerts: tuple[AlertRecord, ...]
    stored: tuple[AlertRecord, ...]

    @property
    def fleet_measures(self) -> Measures | None:
        return next((m for scope, m in self.measures if scope == "fleet"), None)

    def triggers(self, levels: Sequence[str]) -> tuple[AlertRecord, ...]:
        """The alerts a new model could answer, at the given scope levels."""
        return tuple(
            a for a in self.alerts if a.rule in RETRAIN_RULES and a.scope.split(":")[0] in levels
        )


@dataclass(frozen=True)
class Comparison:
    """Candidate and running model on the same held-out recent labelled rows."""

    rows: int
    positives: int
    candidate_auroc: float
    candidate_average_precision: float
    running_auroc: float
    running_average_precision: float
    tolerance: float

    @property
    def accepted(self) -> bool:
        return (
            self.candidate_auroc >= self.running_auroc - self.tolerance
            and self.candidate_average_precision >= self.running_average_precision - self.tolerance
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "positives": self.positives,
            "candidate": {
                "auroc": self.candidate_auroc,
                "average_precision": self.candidate_average_precision,
            },
            "running": {
                "auroc": self.running_auroc,
                "average_precision": self.running_average_precision,
            },
            "tolerance": self.tolerance,
        }


@dataclass(frozen=True)
class Candidate:
    version: ModelVersion
    running: ModelVersion
    comparison: Comparison


@dataclass(frozen=True)
class CanaryVerdict:
    """What :func:`judge_canary` concluded, why, and on which numbers."""

    verdict: Verdict
    reasons: tuple[str, ...]
    evidence: Mapping[str, Any]


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`RetrainLoop.step` (or :meth:`RetrainLoop.run`) did: ``action`` is the
    last decision taken (``"none"``, ``"wait"`` or ``"cooldown"`` when none was)."""

    action: str
    model_version: str | None
    message: str
    alerts: tuple[AlertRecord, ...] = ()


# ------------------------------------------------------------------------------ judging


def auroc_standard_error(auroc: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUROC from its class counts.

    >>> round(auroc_standard_error(0.85, 100, 300), 4)
    0.0254
    """
    if positives < 1 or negatives < 1:
        return math.inf
    a = auroc
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    variance = (a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a)) / (
        positives * negatives
    )
    return math.sqrt(max(variance, 0.0))


def judge_canary(
    canary: Measures | None,
    stable: Measures | None,
    *,
    rules: AlertRules = AlertRules(),  # noqa: B008 - frozen, so one shared default is safe
    min_reports: int = 5,
    auroc_margin: float = 0.02,
    error_margin: float = 0.005,
    drift_margin: float = 0.05,
    require_labels: bool = False,
) -> CanaryVerdict:
    """Is the canary cohort worse than the stable one, good, or not known yet?

    Each model is measured against its own reference profile (see the module docstring
    for the rules). ``stable`` may be None (every device in the canary): the canary is then
    judged against the absolute rules alone.
    """
    evidence: dict[str, Any] = {
        "canary": None if canary is None else canary.summary(),
        "stable": None if stable is None else stable.summary(),
        "rules": {
            "min_reports": min_reports,
            "min_scored": rules.feature_min_count,
            "min_labels": rules.min_labels,
            "auroc_margin": auroc_margin,
            "error_margin": error_margin,
            "drift_margin": drift_margin,
            "require_labels": require_labels,
        },
    }
    if canary is None:
        return CanaryVerdict("insufficient", ("no canary reports yet",), evidence)
    worse: list[str] = []
    errors = canary.errors
    if errors.denominator >= rules.error_min_records:
        if errors.low > rules.max_error_rate:
            worse.append(
                f"canary error rate {errors.value:.2%} is above {rules.max_error_rate:.2%} "
                f"(95 % lower bound {errors.low:.2%})"
            )
        elif (
            stable is not None
            and errors.low > stable.errors.high
            and errors.value - stable.errors.value > error_margin
        ):
            worse.append(
                f"canary error rate {errors.value:.2%} above stable {stable.errors.value:.2%}"
            )
    score = canary.score
    stable_score_js = 0.0 if stable is None or stable.score is None else _finite(stable.score.js)
    if score is not None and score.current_n >= rules.score_min_count:
        evidence["score_js"] = {"canary": score.js, "stable": stable_score_js}
        drifted = score.js >= rules.score_js or score.psi >= rules.score_psi
        if drifted and score.js > stable_score_js + drift_margin:
            worse.append(
                f"canary scores drift from its holdout (JS {score.js:.3f}) more than stable's "
                f"({stable_score_js:.3f}) by over {drift_margin}"
            )
    canary_js = canary.max_feature_js()
    stable_js = 0.0 if stable is None else stable.max_feature_js()
    evidence["max_feature_js"] = {"canary": canary_js, "stable": stable_js}
    over = [
        f.feature
        for f in canary.features
        if min(f.reference_n, f.current_n) >= rules.feature_min_count
        and (f.js >= rules.feature_js or f.psi >= rules.feature_psi)
    ]
    if over and canary_js > stable_js + drift_margin:
        worse.append(
            f"canary inputs drift from its training data more (max JS {canary_js:.3f}, "
            f"{', '.join(over)}) than stable's ({stable_js:.3f})"
        )
    labels_compared = False
    c_perf, s_perf = canary.performance, None if stable is None else stable.performance
    if (
        c_perf is not None
        and s_perf is not None
        and min(c_perf.labelled, s_perf.labelled) >= rules.min_labels
    ):
        labels_compared = True
        difference = s_perf.auroc - c_perf.auroc
        noise = math.hypot(
            auroc_standard_error(
                c_perf.auroc, c_perf.positives, c_perf.labelled - c_perf.positives
            ),
            auroc_standard_error(
                s_perf.auroc, s_perf.positives, s_perf.labelled - s_perf.positives
            ),
        )
        evidence["auroc"] = {
            "canary": c_perf.auroc,
            "stable": s_perf.auroc,
            "difference": difference,
            "standard_error": noise,
            "canary_labels": c_perf.labelled,
            "stable_labels": s_perf.labelled,
        }
        if difference > auroc_margin and difference > 2 * noise:
            worse.append(
                f"canary AUROC {c_perf.auroc:.3f} below stable {s_perf.auroc:.3f} by "
                f"{difference:.3f} (> {auroc_margin} and > 2 x standard error {noise:.3f})"
            )
    if worse:
        return CanaryVerdict("worse", tuple(worse), evidence)
    short: list[str] = []
    if canary.reports < min_reports:
        short.append(f"{canary.reports} canary reports of {min_reports}")
    if canary.scored < rules.feature_min_count:
        short.append(f"{canary.scored} canary records scored of {rules.feature_min_count}")
    if require_labels and not labels_compared:
        short.append(f"fewer than {rules.min_labels} labels in a cohort")
    if short:
        return CanaryVerdict("insufficient", tuple(short), evidence)
    reasons = ["no worse on errors, score drift and input drift"]
    if labels_compared:
        reasons.append("AUROC not significantly lower")
    return CanaryVerdict("good", tuple(reasons), evidence)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


# ------------------------------------------------------------------------------ the loop


class RetrainLoop:
    """The closed loop for one fleet (see the module docstring).

    Parameters
    ----------
    fleet, home, store, broker_address, private_key
        The fleet, the home folder (registry, bundles, rollout state file), the monitor
        store its reports are in, the broker and the publisher's signing key.
    data_source
        Where the newest labelled data comes from (module docstring).
    canary_percent
        Share of devices the candidate goes to first.
    canary_windows, max_canary_windows
        Windows to watch the canary before it may be promoted; after the second, a canary
        still short of evidence is rolled back.
    min_canary_reports
        Canary reports needed before promotion.
    window_seconds
        Length of a monitoring window: checks look at reports whose window ended in the
        last ``window_seconds``.
    rules
        Alert rules; their drift thresholds and minimum counts also govern the canary.
    formats
        Formats to export (default: all); each must pass its parity check.
    max_rows
        Newest labelled rows to read from the source.
    compare_source, compare_share
        Labelled data to compare candidate and running model on: a separate source, or by
        default a stratified ``compare_share`` of the newest rows held out of training.
    tolerance
        How much lower the candidate's AUROC and average precision may be than the running
        model's on that data.
    auroc_margin, error_margin, drift_margin, require_labels
        Canary judgement (:func:`judge_canary`).
    cooldown_windows
        After a rejected candidate, a rollback or a failed export, alerts do not start
        another retrain for this many windows.
    retrain_levels
        Scope levels whose alerts start a retrain (a single device's drift does not, by
        default).
    whole_minutes
        Check windows of whole minutes (when ``window_seconds`` is a whole number of
        minutes): their measures are read from rollups alone, the cost of a fleet of any
        size; the newest, partial minute is checked in the next window.
    """

    def __init__(
        self,
        fleet: str,
        home: str | Path,
        store: MonitorStore,
        broker_address: BrokerAddress,
        private_key: Ed25519PrivateKey,
        data_source: DataSource,
        *,
        canary_percent: int = 20,
        canary_windows: int = 3,
        max_canary_windows: int = 12,
        min_canary_reports: int = 5,
        window_seconds: float = 60.0,
        rules: AlertRules = AlertRules(),  # noqa: B008 - frozen, so one shared default is safe
        formats: Sequence[str] | None = None,
        max_rows: int = 50_000,
        compare_source: DataSource | None = None,
        compare_share: float = 0.25,
        tolerance: float = 0.01,
        auroc_margin: float = 0.02,
        error_margin: float = 0.005,
        drift_margin: float = 0.05,
        require_labels: bool = False,
        cooldown_windows: int = 10,
        retrain_levels: Sequence[str] = ("fleet", "cohort", "group"),
        seed: int = 0,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
        progress: Progress = lambda _: None,
        lifetime: timedelta = DEFAULT_LIFETIME,
        whole_minutes: bool = False,
    ) -> None:
        if type(canary_percent) is not int or not 1 <= canary_percent <= 100:
            raise InputError(f"canary_percent must be 1 to 100, not {canary_percent!r}")
        if not 1 <= canary_windows <= max_canary_windows:
            raise InputError("need 1 <= canary_windows <= max_canary_windows")
        if not (math.isfinite(window_seconds) and window_seconds > 0):
            raise InputError(f"window_seconds must be > 0, not {window_seconds!r}")
        if not 0 < compare_share < 1:
            raise InputError(f"compare_share must be between 0 and 1, not {compare_share!r}")
        self.fleet = fleet
        self.home = Path(home)
        self.store = store
        self.broker_address = broker_address
        self.private_key = private_key
        self.data_source = data_source
        self.canary_percent = canary_percent
        self.canary_windows = canary_windows
        self.max_canary_windows = max_canary_windows
        self.min_canary_reports = min_canary_reports
        self.window_seconds = float(window_seconds)
        self.rules = rules
        self.formats = tuple(formats) if formats else DEFAULT_FORMATS
        self.max_rows = max_rows
        self.compare_source = compare_source
        self.compare_share = compare_share
        self.tolerance = tolerance
        self.auroc_margin = auroc_margin
        self.error_margin = error_margin
        self.drift_margin = drift_margin
        self.require_labels = require_labels
        self.cooldown_windows = cooldown_windows
        self.whole_minutes = whole_minutes
        self.retrain_levels = tuple(retrain_levels)
        self.seed = seed
        self.prefix = prefix
        self.lifetime = lifetime
        """How long the rollout states this loop signs stay valid."""
        self.clock = clock
        self.progress = progress
        self.registry = Registry(self.home)
        self._manifests: dict[tuple[str, str], Manifest] = {}

    # -- what runs where --------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return state_file_for(self.home, self.fleet)

    def rollout(self) -> RolloutState:
        """The fleet's verified rollout state; :class:`InputError` if none or no stable."""
        trusted = [TrustedKey.from_public_key(self.private_key.public_key())]
        state = rollout_status(self.fleet, self.broker_address, trusted, prefix=self.prefix)
        if state is None or state.stable is None:
            raise InputError(
                f"fleet {self.fleet} runs no stable model: publish one first "
                "(edgefleet publish VERSION --fleet ...)"
            )
        return state

    def version_of(self, ref: ModelRef) -> ModelVersion:
        return self.registry.get(ref.version, ref.name)

    def manifest_of(self, ref: ModelRef | ModelVersion) -> Manifest:
        """The manifest devices run for ``ref``: the exported bundle's, else one built from
        the registry (same reference profile and metrics, which is all measuring needs)."""
        key = (ref.name, ref.version)
        if key not in self._manifests:
            bundle = self.home / "bundles" / f"{ref.name}-{ref.version}" / MANIFEST_FILE
            if bundle.is_file():
                self._manifests[key] = Manifest.from_bytes(bundle.read_bytes())
            else:
                version = ref if isinstance(ref, ModelVersion) else self.version_of(ref)
                self._manifests[key] = version.manifest()
        return self._manifests[key]

    def measure(self, aggregate: Aggregate, ref: ModelRef | ModelVersion) -> Measures:
        return measure(aggregate, self.manifest_of(ref), detector=self.rules.feature_detector())

    # -- (a) check ---------------------------------------------------------------------------

    def last_window(self, now: float) -> tuple[float, float]:
        """``(since, until)`` of the window checked at ``now``: of whole minutes with
        ``whole_minutes`` when the window is a whole number of minutes, so that its
        measures are read from rollups alone (docs/architecture.md §7b)."""
        until = now
        minutes = self.window_seconds >= MINUTE and self.window_seconds % MINUTE == 0
        if self.whole_minutes and minutes:
            until = math.floor(now / MINUTE) * MINUTE
        return until - self.window_seconds, until

    def check(
        self, *, since: float | None = None, until: float | None = None, store_alerts: bool = True
    ) -> CheckResult:
        """Measure the stable model at every scope of ``rules.levels`` over reports whose
        window ended in ``[since, until)``, and store the alerts not already open."""
        state = self.rollout()
        assert state.stable is not None  # rollout() guarantees it
        stable = state.stable
        measured = [
            (scope, self.measure(aggregate, stable))
            for scope, aggregate in scopes(
                self.store, self.fleet, stable.version, since, until, levels=self.rules.levels
            )
        ]
        alerts = evaluate_all(measured, self.rules, now=self.clock())
        stored: list[AlertRecord] = []
        if store_alerts and alerts:
            open_keys = {_alert_key(a) for a in self.store.alerts(self.fleet, open_only=True)}
            for alert in alerts:
                if _alert_key(alert) not in open_keys:
                    identifier = self.store.add_alert(alert)
                    stored.append(_with_id(alert, identifier))
                    open_keys.add(_alert_key(alert))
        return CheckResult(
            model_version=stable.version,
            since=since,
            until=until,
            measures=tuple(measured),
            alerts=tuple(alerts),
            stored=tuple(stored),
        )

    # -- (b, c) retrain and compare ----------------------------------------------------------

    def retrain(self) -> Candidate:
        """Train a candidate like the running version on the newest labelled data, register
        it, and compare it with the running version (records ``retrained`` and then
        ``accepted`` or ``rejected``)."""
        state = self.rollout()
        assert state.stable is not None
        running = self.version_of(state.stable)
        card = running.load_card()
        data = read_labelled(self.data_source, max_rows=self.max_rows)
        table = load_training_table(data.frame, running.target, schema=card.schema)
        if self.compare_source is None:
            train_rows, compare_rows = train_test_split(
                np.arange(table.n_rows),
                test_size=self.compare_share,
                random_state=self.seed,
                stratify=table.labels,
            )
            training = _subset(table, train_rows)
            compared = _subset(table, compare_rows)
            compare_from = f"{self.compare_share:.0%} of the newest rows, held out of training"
        else:
            other = read_labelled(self.compare_source, max_rows=self.max_rows)
            training = table
            compared = load_training_table(other.frame, running.target, schema=card.schema)
            compare_from = other.source
        self.progress(
            f"retraining {running.family} on {training.n_rows:,} rows of {data.source} "
            f"(running {running.label})"
        )
        model = train(training, running.family, seed=self.seed, params=dict(running.params))
        candidate = self.registry.register(
            model, name=running.name, data_sha256=data_sha256(training.features)
        )
        self._decide(
            "retrained",
            candidate.version,
            f"trained {candidate.label} ({running.family}) on {training.n_rows:,} rows",
            {
                "source": data.source,
                "files": list(data.files),
                "rows": training.n_rows,
                "positives": int(training.labels.sum()),
                "family": running.family,
                "params": dict(running.params),
                "based_on": running.version,
                "holdout_metrics": dict(candidate.metrics),
                "data_sha256": candidate.data_sha256,
            },
        )
        comparison = self.compare(candidate, running, compared)
        action = "accepted" if comparison.accepted else "rejected"
        self._decide(
            action,
            candidate.version,
            f"{candidate.label} vs running {running.version} on {comparison.rows:,} recent "
            f"labelled rows: AUROC {comparison.candidate_auroc:.4f} vs "
            f"{comparison.running_auroc:.4f}, AP {comparison.candidate_average_precision:.4f} "
            f"vs {comparison.running_average_precision:.4f} (tolerance {self.tolerance})",
            {
                **comparison.to_dict(),
                "compared_on": compare_from,
                "running_version": running.version,
            },
        )
        return Candidate(candidate, running, comparison)

    def compare(
        self, candidate: ModelVersion, running: ModelVersion, table: TrainingTable
    ) -> Comparison:
        """Exact AUROC and AP of both models on ``table`` (raw scores: no binning here)."""
        if len(set(table.labels.tolist())) < 2:
            raise DataError("the comparison data hold only one class: cannot compare models")
        inputs = encode_features(table.features, table.schema)
        labels = table.labels.astype(int)
        scores = {
            "candidate": candidate.load_pipeline().predict_proba(inputs)[:, 1],
            "running": running.load_pipeline().predict_proba(inputs)[:, 1],
        }
        return Comparison(
            rows=len(labels),
            positives=int(labels.sum()),
            candidate_auroc=float(roc_auc_score(labels, scores["candidate"])),
            candidate_average_precision=float(average_precision_score(labels, scores["candidate"])),
            running_auroc=float(roc_auc_score(labels, scores["running"])),
            running_average_precision=float(average_precision_score(labels, scores["running"])),
            tolerance=self.tolerance,
        )

    # -- (d) export and canary ---------------------------------------------------------------

    def release(self, candidate: ModelVersion) -> RolloutState | None:
        """Export every format with parity and publish as the canary (records ``canary``,
        or ``export_failed`` and returns None)."""
        out = self.home / "bundles" / f"{candidate.name}-{candidate.version}"
        try:
            result = export_bundle(
                candidate,
                self.formats,
                out,
                self.private_key,
                overwrite=True,
                progress=self.progress,
            )
        except EdgefleetError as error:
            self._decide(
                "export_failed",
                candidate.version,
                f"{candidate.label} was not published: {error}",
                {"formats": list(self.formats), "error": str(error)},
            )
            return None
        self._manifests[(candidate.name, candidate.version)] = result.manifest
        published = publish(
            result.bundle,
            self.fleet,
            self.broker_address,
            self.private_key,
            canary_percent=self.canary_percent,
            prefix=self.prefix,
            state_file=self.state_file,
            progress=self.progress,
            lifetime=self.lifetime,
        )
        state = published.state
        self._decide(
            "canary",
            candidate.version,
            f"{candidate.label} published as canary to {self.canary_percent}% of {self.fleet}",
            {
                "percent": self.canary_percent,
                "bundle": str(result.bundle),
                "formats": {
                    f.format: {"bytes": f.bytes, "max_abs_diff": f.parity.max_abs_diff}
                    for f in result.formats
                },
                "tolerance": result.manifest.tolerance,
                "bytes_sent": published.bytes_sent,
                "rollout_id": state.rollout_id,
                "rollout_sequence": state.sequence,
                "stable": None if state.stable is None else state.stable.version,
            },
        )
        return state

    def run(self, *, force: bool = True) -> StepResult:
        """On demand: check, then (always with ``force``, else only on an alert a model can
        answer) retrain, compare, export and publish the canary."""
        state = self.rollout()
        if state.canary is not None:
            raise InputError(
                f"fleet {self.fleet} has a canary out already ({state.canary.label}): "
                "let 'edgefleet watch' evaluate it, or promote or roll it back first"
            )
        now = self.clock()
        since, until = self.last_window(now)
        result = self.check(since=since, until=until)
        triggers = result.triggers(self.retrain_levels)
        if not force and not triggers:
            return StepResult(
                "none", result.model_version, "no alert asks for a new model", result.alerts
            )
        return self._retrain_and_release(result, triggers, "on demand" if force else "alert")

    def _retrain_and_release(
        self, result: CheckResult, triggers: Sequence[AlertRecord], why: str
    ) -> StepResult:
        fleet_measures = result.fleet_measures
        self._decide(
            "check",
            result.model_version,
            f"retrain {why}: {len(triggers)} alert(s) a new model can answer"
            if triggers
            else f"retrain {why}",
            {
                "window": [result.since, result.until],
                "alerts": [_alert_evidence(a) for a in triggers[:50]],
                "alerts_total": len(result.alerts),
                "fleet": None if fleet_measures is None else fleet_measures.summary(),
            },
        )
        candidate = self.retrain()
        version = candidate.version.version
        if not candidate.comparison.accepted:
            message = "the candidate is worse than the running model"
            return StepResult("rejected", version, message, result.alerts)
        if self.release(candidate.version) is None:
            return StepResult("export_failed", version, "the export failed", result.alerts)
        return StepResult(
            "canary",
            candidate.version.version,
            f"{candidate.version.label} is the canary on {self.canary_percent}% of devices",
            result.alerts,
        )

    # -- (e) canary --------------------------------------------------------------------------

    def canary_started(self, state: RolloutState) -> float:
        """When the current canary went out: its ``canary`` decision, else the state's
        issue time (a canary published by hand)."""
        assert state.canary is not None
        for decision in reversed(self.store.decisions(self.fleet)):
            if decision.action == "canary" and decision.model_version == state.canary.version:
                return decision.created
        return datetime.fromisoformat(state.issued).timestamp()

    def evaluate_canary(self) -> StepResult:
        """Compare the canary and stable cohorts since the canary started; promote, roll
        back, or wait (see the module docstring)."""
        state = self.rollout()
        if state.canary is None:
            return StepResult("none", None, "no canary is out")
        canary_ref, stable_ref = state.canary, state.stable
        assert stable_ref is not None
        started = self.canary_started(state)
        now = self.clock()
        windows = (now - started) / self.window_seconds
        canary_agg = self.store.aggregate(
            self.fleet, model_version=canary_ref.version, since=started
        )
        stable_agg = self.store.aggregate(
            self.fleet, model_version=stable_ref.version, since=started
        )
        canary = None if canary_agg is None else self.measure(canary_agg, canary_ref)
        stable = None if stable_agg is None else self.measure(stable_agg, stable_ref)
        verdict = judge_canary(
            canary,
            stable,
            rules=self.rules,
            min_reports=self.min_canary_reports,
            auroc_margin=self.auroc_margin,
            error_margin=self.error_margin,
            drift_margin=self.drift_margin,
            require_labels=self.require_labels,
        )
        evidence = {
            **verdict.evidence,
            "reasons": list(verdict.reasons),
            "since": started,
            "windows": windows,
            "score_shift_js": _score_shift(canary_agg, stable_agg),
            "canary_version": canary_ref.version,
            "stable_version": stable_ref.version,
        }
        if verdict.verdict == "worse":
            return self._roll_back(canary_ref, "; ".join(verdict.reasons), evidence)
        if verdict.verdict == "good" and windows >= self.canary_windows:
            return self._promote(canary_ref, stable_ref, "; ".join(verdict.reasons), evidence)
        if windows >= self.max_canary_windows:
            return self._roll_back(
                canary_ref,
                f"not enough evidence after {windows:.1f} windows: " + "; ".join(verdict.reasons),
                evidence,
            )
        return StepResult(
            "wait",
            canary_ref.version,
            f"canary {canary_ref.version}: {verdict.verdict} after {windows:.1f} of "
            f"{self.canary_windows} windows ({'; '.join(verdict.reasons)})",
        )

    def _promote(
        self, canary: ModelRef, stable: ModelRef, reason: str, evidence: Mapping[str, Any]
    ) -> StepResult:
        promote(
            self.fleet,
            self.broker_address,
            self.private_key,
            prefix=self.prefix,
            state_file=self.state_file,
            progress=self.progress,
            lifetime=self.lifetime,
        )
        self._decide("promoted", canary.version, reason, evidence)
        self.store.close_alerts_for(self.fleet, stable.version)
        return StepResult("promoted", canary.version, f"{canary.label} promoted: {reason}")

    def _roll_back(self, canary: ModelRef, reason: str, evidence: Mapping[str, Any]) -> StepResult:
        rollback(
            self.fleet,
            self.broker_address,
            self.private_key,
            prefix=self.prefix,
            state_file=self.state_file,
            progress=self.progress,
            lifetime=self.lifetime,
        )
        self._decide("rolled_back", canary.version, reason, evidence)
        return StepResult("rolled_back", canary.version, f"{canary.label} rolled back: {reason}")

    # -- watch -------------------------------------------------------------------------------

    def step(self) -> StepResult:
        """One monitoring window: evaluate the canary if one is out; otherwise check the
        stable model over the last window and, on an alert a new model can answer (and
        outside the cooldown), retrain and publish a canary."""
        state = self.rollout()
        if state.canary is not None:
            return self.evaluate_canary()
        now = self.clock()
        since, until = self.last_window(now)
        result = self.check(since=since, until=until)
        triggers = result.triggers(self.retrain_levels)
        if not triggers:
            return StepResult("none", result.model_version, _no_alert(result), result.alerts)
        cooldown = self.cooldown_windows * self.window_seconds
        recent = [
            d
            for d in self.store.decisions(self.fleet)
            if d.action in _FAILURES and now - d.created < cooldown
        ]
        if recent:
            last = recent[-1]
            return StepResult(
                "cooldown",
                result.model_version,
                f"{len(triggers)} alert(s), but {last.action} {now - last.created:.0f} s ago: "
                f"no retrain within {cooldown:.0f} s of it",
                result.alerts,
            )
        return self._retrain_and_release(result, triggers, "on alert")

    # -- records -----------------------------------------------------------------------------

    def _decide(
        self, action: str, model_version: str, reason: str, evidence: Mapping[str, Any]
    ) -> DecisionRecord:
        record = DecisionRecord(
            id=None,
            fleet=self.fleet,
            created=self.clock(),
            action=action,
            model_version=model_version,
            reason=reason,
            evidence=_json_safe(evidence),
        )
        identifier = self.store.add_decision(record)
        self.progress(f"{action} {model_version}: {reason}")
        return DecisionRecord(
            id=identifier,
            fleet=record.fleet,
            created=record.created,
            action=record.action,
            model_version=record.model_version,
            reason=record.reason,
            evidence=record.evidence,
        )


def _subset(table: TrainingTable, rows: Any) -> TrainingTable:
    return TrainingTable(
        features=table.features.iloc[rows].reset_index(drop=True),
        labels=table.labels[rows],
        schema=table.schema,
    )


def _score_shift(canary: Aggregate | None, stable: Aggregate | None) -> float | None:
    """JS distance between the canary's and the stable cohort's score histograms (in the
    stable scores' 10 quantile groups): how differently the two models score the same
    population. Evidence only: a better model is allowed to score differently."""
    if canary is None or stable is None or canary.scored == 0 or stable.scored == 0:
        return None
    merged_stable, merged_canary = coarsen(stable.scores.counts.counts, canary.scores.counts.counts)
    return js_distance(merged_stable, merged_canary)


def _alert_key(alert: AlertRecord) -> tuple[str, str, str, Any]:
    return (alert.rule, alert.scope, alert.subject, alert.evidence.get("model_version"))


def _with_id(alert: AlertRecord, identifier: int) -> AlertRecord:
    return AlertRecord(
        id=identifier,
        fleet=alert.fleet,
        created=alert.created,
        rule=alert.rule,
        scope=alert.scope,
        subject=alert.subject,
        value=alert.value,
        threshold=alert.threshold,
        evidence=alert.evidence,
        status=alert.status,
    )


def _alert_evidence(alert: AlertRecord) -> dict[str, Any]:
    return {
        "id": alert.id,
        "rule": alert.rule,
        "scope": alert.scope,
        "subject": alert.subject,
        "value": alert.value,
        "threshold": alert.threshold,
    }


def _no_alert(result: CheckResult) -> str:
    fleet = result.fleet_measures
    if fleet is None:
        return f"no reports of {result.model_version} in the window"
    extra = f", {len(result.alerts)} other alert(s)" if result.alerts else ""
    return (
        f"{result.model_version}: {fleet.reports} reports, {fleet.scored:,} scored, "
        f"max feature JS {fleet.max_feature_js():.3f}: nothing a new model can answer{extra}"
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
