"""The loop's canary stage: the canary cohort judged against the stable one on their reports
since the canary went out, then promoted, rolled back or watched another window
(:func:`~edgefleet.central.monitor.canary.judge_canary` holds the rules; the module
docstring of :mod:`~edgefleet.central.monitor.loop` the timing)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from edgefleet.central.monitor.canary import CanaryVerdict, judge_canary
from edgefleet.central.monitor.drift import coarsen, js_distance
from edgefleet.central.monitor.steps import StepResult
from edgefleet.central.publish import promote, rollback
from edgefleet.edge.aggregate import Aggregate
from edgefleet.edge.rollout import ModelRef, RolloutState

if TYPE_CHECKING:
    from edgefleet.central.monitor.loop import RetrainLoop


class CanaryStage:
    """The canary stage of one loop."""

    def __init__(self, loop: RetrainLoop) -> None:
        self.loop = loop

    def started(self, state: RolloutState) -> float:
        """When the current canary went out: its ``canary`` decision, else the state's
        issue time (a canary published by hand)."""
        assert state.canary is not None
        for decision in reversed(self.loop.store.decisions(self.loop.fleet)):
            if decision.action == "canary" and decision.model_version == state.canary.version:
                return decision.created
        return datetime.fromisoformat(state.issued).timestamp()

    def evaluate(self) -> StepResult:
        """Compare the canary and stable cohorts since the canary started; promote, roll
        back, or wait."""
        loop = self.loop
        state = loop.rollout()
        if state.canary is None:
            return StepResult("none", None, "no canary is out")
        started = self.started(state)
        windows = (loop.clock() - started) / loop.window_seconds
        verdict, evidence = self._judge_cohorts(state, started)
        return self._act_on_verdict(state, verdict, {**evidence, "windows": windows}, windows)

    def _judge_cohorts(
        self, state: RolloutState, started: float
    ) -> tuple[CanaryVerdict, dict[str, Any]]:
        """Each cohort measured against its own model's reference since ``started``."""
        loop = self.loop
        canary_ref, stable_ref = state.canary, state.stable
        assert canary_ref is not None
        assert stable_ref is not None
        canary_agg = loop.store.aggregate(
            loop.fleet, model_version=canary_ref.version, since=started
        )
        stable_agg = loop.store.aggregate(
            loop.fleet, model_version=stable_ref.version, since=started
        )
        verdict = judge_canary(
            None if canary_agg is None else loop.measure(canary_agg, canary_ref),
            None if stable_agg is None else loop.measure(stable_agg, stable_ref),
            rules=loop.rules,
            min_reports=loop.min_canary_reports,
            auroc_margin=loop.auroc_margin,
            error_margin=loop.error_margin,
            drift_margin=loop.drift_margin,
            require_labels=loop.require_labels,
        )
        evidence = {
            **verdict.evidence,
            "reasons": list(verdict.reasons),
            "since": started,
            "score_shift_js": score_shift(canary_agg, stable_agg),
            "canary_version": canary_ref.version,
            "stable_version": stable_ref.version,
        }
        return verdict, evidence

    def _act_on_verdict(
        self,
        state: RolloutState,
        verdict: CanaryVerdict,
        evidence: Mapping[str, Any],
        windows: float,
    ) -> StepResult:
        loop = self.loop
        canary_ref, stable_ref = state.canary, state.stable
        assert canary_ref is not None
        assert stable_ref is not None
        reasons = "; ".join(verdict.reasons)
        if verdict.verdict == "worse":
            return self._roll_back(canary_ref, reasons, evidence)
        if verdict.verdict == "good" and windows >= loop.canary_windows:
            return self._promote(canary_ref, stable_ref, reasons, evidence)
        if windows >= loop.max_canary_windows:
            why = f"not enough evidence after {windows:.1f} windows: {reasons}"
            return self._roll_back(canary_ref, why, evidence)
        return StepResult(
            "wait",
            canary_ref.version,
            f"canary {canary_ref.version}: {verdict.verdict} after {windows:.1f} of "
            f"{loop.canary_windows} windows ({reasons})",
        )

    def _settings(self) -> dict[str, Any]:
        loop = self.loop
        return {
            "prefix": loop.prefix,
            "state_file": loop.state_file,
            "progress": loop.progress,
            "lifetime": loop.lifetime,
        }

    def _promote(
        self, canary: ModelRef, stable: ModelRef, reason: str, evidence: Mapping[str, Any]
    ) -> StepResult:
        loop = self.loop
        promote(loop.fleet, loop.broker_address, loop.private_key, **self._settings())
        loop.decide("promoted", canary.version, reason, evidence)
        loop.store.close_alerts_for(loop.fleet, stable.version)
        return StepResult("promoted", canary.version, f"{canary.label} promoted: {reason}")

    def _roll_back(self, canary: ModelRef, reason: str, evidence: Mapping[str, Any]) -> StepResult:
        loop = self.loop
        rollback(loop.fleet, loop.broker_address, loop.private_key, **self._settings())
        loop.decide("rolled_back", canary.version, reason, evidence)
        return StepResult("rolled_back", canary.version, f"{canary.label} rolled back: {reason}")


def score_shift(canary: Aggregate | None, stable: Aggregate | None) -> float | None:
    """JS distance between the canary's and the stable cohort's score histograms (in the
    stable scores' 10 quantile groups): how differently the two models score the same
    population. Evidence only: a better model is allowed to score differently."""
    if canary is None or stable is None or canary.scored == 0 or stable.scored == 0:
        return None
    merged_stable, merged_canary = coarsen(stable.scores.counts.counts, canary.scores.counts.counts)
    return js_distance(merged_stable, merged_canary)
