"""The closed loop: alert, retrain, judge the benefit, canary, then promote or roll back on
evidence; escalate to a person what retraining cannot fix.

:class:`RetrainLoop` holds the parameters; each step is a small named method, and every step
that changes something records a :class:`~edgefleet.central.monitor.store.DecisionRecord`
with the numbers it was taken on (``edgefleet decisions``):

==============  =================================================================================
action          when, and its evidence
==============  =================================================================================
check           the running model was measured (on demand, or because an alert asks for a new
                model): the alerts and the fleet's measures
retrained       a candidate was trained with the running version's family and parameters (a
                multi-class, regression or brought model: a clone of its own pipeline;
                :mod:`~edgefleet.central.monitor.refit`) on the window that validated best
                (newest rows, the reference data, or both with recency weights;
                :mod:`~edgefleet.central.monitor.windows`) and registered: rows, window,
                validation scores, holdout metrics
accepted        on held-out newest labelled rows, the candidate is better than the running model
                with confidence (paired bootstrap interval of the metric the loop names), or
                it fixes a calibration alert (:mod:`~edgefleet.central.monitor.benefit`)
rejected        it is not: "retraining does not help", with the interval
escalated       an alert for a person was opened; no retrain for this drift until the labelled
                data changes (:mod:`~edgefleet.central.monitor.escalation`)
export_failed   a format failed its parity check (or could not be converted): the error
canary          exported in every format with parity and published as the canary for
                ``canary_percent`` % of the devices: sizes, parity, rollout sequence
promoted        the canary cohort was at least as good as the stable one on enough evidence:
                both cohorts' measures and the comparisons
rolled_back     the canary was worse (or never produced enough evidence): the same numbers
==============  =================================================================================

Canary evaluation (:meth:`RetrainLoop.evaluate_canary`,
:func:`~edgefleet.central.monitor.canary.judge_canary`) compares the canary and stable
cohorts over the reports since the canary was published, each model against its own
reference profile: errors, score shift, input drift and AUROC where labels came back (the
rules are in :mod:`edgefleet.central.monitor.canary`). Any "worse" rolls back at once.
Promotion needs ``canary_windows`` windows since the canary started, ``min_canary_reports``
canary reports, ``rules.feature_min_count`` scored records (and, with ``require_labels``,
the AUROC comparison). A canary still short of evidence after ``max_canary_windows``
windows is rolled back: a canary that does not report cannot be shown to be good.

The data sources are described in :mod:`edgefleet.central.monitor.sources`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.central.export import ExportResult, export_bundle
from edgefleet.central.monitor.alerts import AlertRules, evaluate_all
from edgefleet.central.monitor.benefit import METRICS, Metric
from edgefleet.central.monitor.canary import (
    CanaryVerdict,
    Verdict,
    auroc_standard_error,
    judge_canary,
)
from edgefleet.central.monitor.canary_stage import CanaryStage
from edgefleet.central.monitor.escalation import escalate, held_back
from edgefleet.central.monitor.measures import Measures, measure, scopes
from edgefleet.central.monitor.retraining import (
    Candidate,
    Comparison,
    Retrainer,
    RetrainSettings,
)
from edgefleet.central.monitor.rollups import MINUTE
from edgefleet.central.monitor.shadow_stage import ShadowStage
from edgefleet.central.monitor.sources import (
    DataSource,
    LabelledData,
    read_labelled,
)
from edgefleet.central.monitor.steps import (
    CheckResult,
    StepResult,
    alert_evidence,
    alert_key,
    json_safe,
    no_alert,
    with_id,
)
from edgefleet.central.monitor.store import AlertRecord, DecisionRecord, MonitorStore
from edgefleet.central.publish import (
    PublishResult,
    publish,
    rollout_status,
    state_file_for,
)
from edgefleet.central.registry import ModelVersion, Registry
from edgefleet.central.shadowing import publish_shadow
from edgefleet.converters.registry import DEFAULT_FORMATS
from edgefleet.edge.aggregate import Aggregate
from edgefleet.edge.bundle import MANIFEST_FILE
from edgefleet.edge.manifest import Manifest
from edgefleet.edge.mqtt import BrokerAddress
from edgefleet.edge.rollout import DEFAULT_LIFETIME, ModelRef, RolloutState
from edgefleet.edge.signing import TrustedKey
from edgefleet.edge.topics import DEFAULT_PREFIX
from edgefleet.errors import EdgefleetError, InputError

__all__ = [
    "CanaryVerdict",
    "Candidate",
    "CheckResult",
    "Comparison",
    "DataSource",
    "LabelledData",
    "RetrainLoop",
    "StepResult",
    "Verdict",
    "auroc_standard_error",
    "judge_canary",
    "read_labelled",
]

Progress = Callable[[str], None]


# ------------------------------------------------------------------------------ the loop


class RetrainLoop:
    """The closed loop for one fleet (see the module docstring).

    Parameters
    ----------
    fleet, home, store, broker_address, private_key
        The fleet, the home folder (registry, bundles, rollout state file), the monitor
        store its reports are in, the broker and the publisher's signing key.
    data_source
        Where the newest labelled data comes from (:mod:`~edgefleet.central.monitor.sources`).
    reference_source
        The running model's training data (or data like it), for the ``reference`` and
        ``both`` training windows; None: the candidate learns from the newest rows alone.
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
    metric, min_gain, confidence, resamples
        The candidate ships only if its gain on ``metric`` (``auroc`` or ``log_loss``; a
        multi-class or regression model's judging metric instead) over the running model
        has a ``confidence`` bootstrap interval (``resamples`` paired resamples) whose lower
        bound is above ``min_gain``, or if it fixes a calibration alert
        (:mod:`~edgefleet.central.monitor.benefit`).
    recency
        In the ``both`` window, the share of the total weight the newest rows carry.
    auroc_margin, error_margin, drift_margin, require_labels
        Canary judgement (:func:`judge_canary`).
    cooldown_windows
        After a rollback or a failed export, alerts do not start another retrain for this
        many windows. After a rejected candidate, they do not until the data changes.
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
        reference_source: DataSource | None = None,
        metric: Metric = "auroc",
        min_gain: float = 0.0,
        confidence: float = 0.95,
        resamples: int = 1000,
        recency: float = 0.5,
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
        shadow_percent: int = 0,
        shadow_windows: int = 1,
        max_shadow_windows: int = 12,
        min_shadow_labelled: int = 200,
        whole_minutes: bool = False,
    ) -> None:
        if type(canary_percent) is not int or not 1 <= canary_percent <= 100:
            raise InputError(f"canary_percent must be 1 to 100, not {canary_percent!r}")
        if type(shadow_percent) is not int or not 0 <= shadow_percent <= 100:
            raise InputError(f"shadow_percent must be 0 to 100, not {shadow_percent!r}")
        if not 0 < shadow_windows <= max_shadow_windows:
            raise InputError("need 0 < shadow_windows <= max_shadow_windows")
        if not 1 <= canary_windows <= max_canary_windows:
            raise InputError("need 1 <= canary_windows <= max_canary_windows")
        if not (math.isfinite(window_seconds) and window_seconds > 0):
            raise InputError(f"window_seconds must be > 0, not {window_seconds!r}")
        if not 0 < compare_share < 1:
            raise InputError(f"compare_share must be between 0 and 1, not {compare_share!r}")
        if not (math.isfinite(min_gain) and -1 < min_gain < 1):
            raise InputError(f"min_gain must be between -1 and 1, not {min_gain!r}")
        if metric not in METRICS:
            raise InputError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
        if not 0.5 <= confidence < 1:
            raise InputError(f"confidence must be at least 0.5 and below 1, not {confidence!r}")
        if type(resamples) is not int or resamples < 100:
            raise InputError(f"resamples must be a whole number >= 100, not {resamples!r}")
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
        self.reference_source = reference_source
        self.metric: Metric = metric
        self.min_gain = min_gain
        self.confidence = confidence
        self.resamples = resamples
        self.recency = recency
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
        self.shadow_percent = shadow_percent
        """Above 0: a candidate is first the challenger of this share of the devices."""
        self.shadow_windows = shadow_windows
        self.max_shadow_windows = max_shadow_windows
        self.min_shadow_labelled = min_shadow_labelled
        self.shadow = ShadowStage(self)
        self.canary = CanaryStage(self)
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
            open_keys = {alert_key(a) for a in self.store.alerts(self.fleet, open_only=True)}
            for alert in alerts:
                if alert_key(alert) not in open_keys:
                    identifier = self.store.add_alert(alert)
                    stored.append(with_id(alert, identifier))
                    open_keys.add(alert_key(alert))
        return CheckResult(
            model_version=stable.version,
            since=since,
            until=until,
            measures=tuple(measured),
            alerts=tuple(alerts),
            stored=tuple(stored),
        )

    # -- (b, c) retrain and judge the benefit (retraining.py) -----------------------------

    def retrain(self, *, calibration_alert: bool = False) -> Candidate:
        """Train a candidate like the running version on the window that validates best,
        register it, and judge its benefit (:class:`~edgefleet.central.monitor.retraining.
        Retrainer`; records ``retrained`` and then ``accepted`` or ``rejected``).
        ``calibration_alert``: a calibration alert asks for the new model, so fixing
        calibration is a benefit too."""
        settings = RetrainSettings(
            data_source=self.data_source,
            reference_source=self.reference_source,
            compare_source=self.compare_source,
            compare_share=self.compare_share,
            max_rows=self.max_rows,
            metric=self.metric,
            min_gain=self.min_gain,
            confidence=self.confidence,
            resamples=self.resamples,
            recency=self.recency,
            calibration_gap=self.rules.calibration_gap,
            seed=self.seed,
        )
        retrainer = Retrainer(settings, self.registry, self.decide, self.progress)
        return retrainer.retrain(self.running_version(), calibration_alert=calibration_alert)

    def running_version(self) -> ModelVersion:
        state = self.rollout()
        assert state.stable is not None
        return self.version_of(state.stable)

    # -- (d) export and canary ---------------------------------------------------------------

    def release(self, candidate: ModelVersion) -> RolloutState | None:
        """Export every format with parity and publish as the canary (records ``canary``,
        or ``export_failed`` and returns None)."""
        result = self._export(candidate)
        if result is None:
            return None
        self._manifests[(candidate.name, candidate.version)] = result.manifest
        if self.shadow_percent:
            shadowed = publish_shadow(
                result.bundle,
                self.fleet,
                self.broker_address,
                self.private_key,
                shadow_percent=self.shadow_percent,
                prefix=self.prefix,
                state_file=self.state_file,
                progress=self.progress,
                lifetime=self.lifetime,
            )
            self._record_release("shadow", candidate, result, shadowed)
            return shadowed.state
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
        self._record_release("canary", candidate, result, published)
        return published.state

    def _export(self, candidate: ModelVersion) -> ExportResult | None:
        out = self.home / "bundles" / f"{candidate.name}-{candidate.version}"
        try:
            return export_bundle(
                candidate,
                self.formats,
                out,
                self.private_key,
                overwrite=True,
                progress=self.progress,
            )
        except EdgefleetError as error:
            self.decide(
                "export_failed",
                candidate.version,
                f"{candidate.label} was not published: {error}",
                {"formats": list(self.formats), "error": str(error)},
            )
            return None

    def _record_release(
        self,
        action: str,
        candidate: ModelVersion,
        result: ExportResult,
        published: PublishResult,
    ) -> None:
        state = published.state
        percent = self.shadow_percent if action == "shadow" else self.canary_percent
        self.decide(
            action,
            candidate.version,
            f"{candidate.label} published as {action} to {percent}% of {self.fleet}",
            {
                "percent": percent,
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

    def run(self, *, force: bool = True) -> StepResult:
        """On demand: check, then (always with ``force``, else only on an alert a model can
        answer) retrain, compare, export and publish the canary."""
        state = self.rollout()
        trial = state.canary or state.challenger
        if trial is not None:
            raise InputError(
                f"fleet {self.fleet} has a candidate out already ({trial.label}): "
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
        self._record_check(result, triggers, why)
        calibration = any(a.rule == "calibration_gap" for a in triggers)
        candidate = self.retrain(calibration_alert=calibration)
        if not candidate.comparison.accepted:
            return escalate(self, candidate, triggers, result.alerts)
        version = candidate.version.version
        if self.release(candidate.version) is None:
            return StepResult("export_failed", version, "the export failed", result.alerts)
        stage = "shadow" if self.shadow_percent else "canary"
        percent = self.shadow_percent or self.canary_percent
        return StepResult(
            stage,
            version,
            f"{candidate.version.label} is the {stage} on {percent}% of devices",
            result.alerts,
        )

    def _record_check(self, result: CheckResult, triggers: Sequence[AlertRecord], why: str) -> None:
        fleet_measures = result.fleet_measures
        self.decide(
            "check",
            result.model_version,
            f"retrain {why}: {len(triggers)} alert(s) a new model can answer"
            if triggers
            else f"retrain {why}",
            {
                "window": [result.since, result.until],
                "alerts": [alert_evidence(a) for a in triggers[:50]],
                "alerts_total": len(result.alerts),
                "fleet": None if fleet_measures is None else fleet_measures.summary(),
            },
        )

    # -- (c') escalate what retraining cannot fix (escalation.py) ---------------------------

    # -- (e) canary (canary_stage.py) -------------------------------------------------------

    def canary_started(self, state: RolloutState) -> float:
        return self.canary.started(state)

    def evaluate_canary(self) -> StepResult:
        """Compare the canary and stable cohorts since the canary started; promote, roll
        back, or wait (:class:`~edgefleet.central.monitor.canary_stage.CanaryStage`)."""
        return self.canary.evaluate()

    # -- watch -------------------------------------------------------------------------------

    def step(self) -> StepResult:
        """One monitoring window: judge the challenger or the canary if one is out;
        otherwise check the stable model over the last window and, on an alert a new model
        can answer (unless held back: :func:`~.escalation.held_back`), retrain, judge, and
        publish a challenger or canary, or escalate."""
        state = self.rollout()
        if state.challenger is not None:
            return self.shadow.evaluate()
        if state.canary is not None:
            return self.evaluate_canary()
        now = self.clock()
        since, until = self.last_window(now)
        result = self.check(since=since, until=until)
        triggers = result.triggers(self.retrain_levels)
        if not triggers:
            return StepResult("none", result.model_version, no_alert(result), result.alerts)
        held = held_back(self, result, triggers, now)
        if held is not None:
            return held
        return self._retrain_and_release(result, triggers, "on alert")

    # -- records -----------------------------------------------------------------------------

    def decide(
        self, action: str, model_version: str, reason: str, evidence: Mapping[str, Any]
    ) -> DecisionRecord:
        record = DecisionRecord(
            id=None,
            fleet=self.fleet,
            created=self.clock(),
            action=action,
            model_version=model_version,
            reason=reason,
            evidence=json_safe(evidence),
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
