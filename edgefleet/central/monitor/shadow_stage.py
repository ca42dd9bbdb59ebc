"""The loop's first stage for a candidate: shadow on the devices, then canary
(docs/architecture.md §17).

With ``shadow_percent`` set, :class:`~edgefleet.central.monitor.loop.RetrainLoop` publishes
an accepted candidate as the fleet's challenger instead of its canary. Every window
:meth:`ShadowStage.evaluate` merges the stable version's reports since the shadow test
began, takes the challenger's paired histograms from them and judges
(:func:`~edgefleet.central.monitor.shadow.compare_shadow`):

==============  =================================================================================
action          when, and its evidence
==============  =================================================================================
shadow          the candidate was published as the challenger of ``shadow_percent`` % of the
                devices (answers not used): sizes, parity, rollout sequence
canary          after ``shadow_windows`` windows the challenger is better on the same records:
                it becomes the canary (the canary stage follows as before)
rejected,       after ``shadow_windows`` windows it is not better: dropped, an escalation
escalated       alert for a person, no retrain until the labelled data changes
shadow_dropped  still short of paired labelled records after ``max_shadow_windows``: dropped,
                with the cooldown of a rollback
==============  =================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgefleet.central.monitor.shadow import (
    ShadowComparison,
    compare_shadow,
    shadow_escalation_alert,
    shadow_started,
)
from edgefleet.central.monitor.sources import fingerprint, read_labelled
from edgefleet.central.monitor.steps import StepResult
from edgefleet.central.shadowing import end_shadow, shadow_to_canary
from edgefleet.edge.rollout import ModelRef, RolloutState

if TYPE_CHECKING:
    from edgefleet.central.monitor.loop import RetrainLoop


class ShadowStage:
    """The shadow stage of one loop (module docstring)."""

    def __init__(self, loop: RetrainLoop) -> None:
        self.loop = loop

    def started(self, state: RolloutState) -> float:
        return shadow_started(self.loop.store.decisions(self.loop.fleet), state)

    def compare(self, state: RolloutState, since: float) -> ShadowComparison:
        """Stable against challenger on the shadow devices' reports since ``since``."""
        loop = self.loop
        assert state.stable is not None
        assert state.challenger is not None
        aggregate = loop.store.aggregate(
            loop.fleet, model_version=state.stable.version, since=since
        )
        sketch = None if aggregate is None else aggregate.shadow_of(state.challenger.version)
        return compare_shadow(
            sketch,
            state.stable.version,
            state.challenger.version,
            min_labelled=loop.min_shadow_labelled,
            min_gain=loop.min_gain,
            confidence=loop.confidence,
        )

    def evaluate(self) -> StepResult:
        """Judge the challenger; move it to canary, reject it, drop it, or wait."""
        loop = self.loop
        state = loop.rollout()
        challenger = state.challenger
        assert challenger is not None
        started = self.started(state)
        windows = (loop.clock() - started) / loop.window_seconds
        comparison = self.compare(state, started)
        evidence = {"shadow": comparison.to_dict(), "windows": windows, "since": started}
        if comparison.verdict != "wait" and windows >= loop.shadow_windows:
            if comparison.verdict == "better":
                return self._to_canary(challenger, comparison, evidence)
            return self._reject(challenger, comparison, evidence)
        if windows >= loop.max_shadow_windows:
            return self._drop(challenger, comparison, evidence, windows)
        return StepResult(
            "wait",
            challenger.version,
            f"shadow {challenger.version}: {comparison.verdict} after {windows:.1f} of "
            f"{loop.shadow_windows} windows ({comparison.reason})",
        )

    def _settings(self) -> dict[str, Any]:
        loop = self.loop
        return {
            "prefix": loop.prefix,
            "state_file": loop.state_file,
            "progress": loop.progress,
            "lifetime": loop.lifetime,
        }

    def _to_canary(
        self, challenger: ModelRef, comparison: ShadowComparison, evidence: Mapping[str, Any]
    ) -> StepResult:
        loop = self.loop
        state = shadow_to_canary(
            loop.fleet,
            loop.broker_address,
            loop.private_key,
            canary_percent=loop.canary_percent,
            **self._settings(),
        )
        reason = (
            f"{challenger.label} better in shadow ({comparison.reason}): now the canary on "
            f"{loop.canary_percent}% of {loop.fleet}"
        )
        loop.decide(
            "canary",
            challenger.version,
            reason,
            {**evidence, "percent": loop.canary_percent, "rollout_sequence": state.sequence},
        )
        return StepResult("canary", challenger.version, reason)

    def _end(self) -> None:
        loop = self.loop
        end_shadow(loop.fleet, loop.broker_address, loop.private_key, **self._settings())

    def _reject(
        self, challenger: ModelRef, comparison: ShadowComparison, evidence: Mapping[str, Any]
    ) -> StepResult:
        loop = self.loop
        self._end()
        running = comparison.champion_version
        loop.decide(
            "rejected", challenger.version, f"not better in shadow: {comparison.reason}", evidence
        )
        data = fingerprint(read_labelled(loop.data_source, max_rows=loop.max_rows))
        alert = shadow_escalation_alert(loop.fleet, loop.clock(), comparison, data)
        alert_id = loop.store.add_alert(alert)
        message = (
            f"the retrained {challenger.version} does not beat {running} in shadow (alert "
            f"#{alert_id} for a person; no retrain until the labelled data changes): "
            f"{comparison.reason}"
        )
        loop.decide(
            "escalated",
            running,
            message,
            {
                **evidence,
                "alert_id": alert_id,
                "running_version": running,
                "candidate_version": challenger.version,
                "data_fingerprint": data,
            },
        )
        return StepResult("escalated", running, message)

    def _drop(
        self,
        challenger: ModelRef,
        comparison: ShadowComparison,
        evidence: Mapping[str, Any],
        windows: float,
    ) -> StepResult:
        self._end()
        reason = f"not enough shadow evidence after {windows:.1f} windows: {comparison.reason}"
        self.loop.decide("shadow_dropped", challenger.version, reason, evidence)
        return StepResult(
            "shadow_dropped", challenger.version, f"{challenger.label} dropped: {reason}"
        )
