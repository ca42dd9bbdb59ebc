"""Rollout writes from the dashboard: promote and roll back, each recorded as a decision."""

from __future__ import annotations

from typing import Any

from edgefleet.central.keys import PRIVATE_NAME
from edgefleet.central.monitor.store import (
    DecisionRecord,
)
from edgefleet.central.publish import promote, rollback, state_file_for
from edgefleet.edge.manifest import parse_version
from edgefleet.edge.rollout import RolloutState
from edgefleet.edge.signing import load_private_key
from edgefleet.web.documents.catalog import Catalog
from edgefleet.web.documents.common import ConflictError, RolloutView, cleaned
from edgefleet.web.documents.shapes import decision_document, publisher_warnings


class RolloutsArea(Catalog):
    """Promote and roll back."""

    # -- writes ------------------------------------------------------------------------------

    def _private_key(self) -> Any:
        path = self.home / "keys" / PRIVATE_NAME
        if not path.is_file():
            raise ConflictError(
                f"no publisher key at {path}: this dashboard cannot sign rollout changes"
            )
        return load_private_key(path)

    def _check_sequence(self, fleet: str, expect_sequence: int | None) -> RolloutView:
        view = self.read_rollout(fleet)
        if view.error is not None:
            raise ConflictError(view.error)
        current = view.state.sequence if view.state else None
        if expect_sequence is not None and current != expect_sequence:
            raise ConflictError(
                f"the rollout of fleet {fleet} changed since this page was loaded (sequence "
                f"{current}, the page showed {expect_sequence}): reload and check again"
            )
        return view

    def promote(self, fleet: str, *, expect_sequence: int | None, actor: str) -> dict[str, Any]:
        """The canary becomes stable on every device; recorded as a ``promoted`` decision."""
        with self._write_lock:
            view = self._check_sequence(fleet, expect_sequence)
            before = view.state
            if before is None or before.canary is None:
                raise ConflictError(f"fleet {fleet} has no canary to promote")
            lines: list[str] = []
            state = promote(
                fleet,
                self.broker,
                self._private_key(),
                prefix=self.prefix,
                state_file=state_file_for(self.home, fleet),
                progress=lines.append,
            )
            assert state.stable is not None
            # As the closed loop does: the alerts about the replaced model are answered.
            replaced = before.stable.version if before.stable else None
            closed = self.store.close_alerts_for(fleet, replaced)
            return self._record(
                fleet,
                "promoted",
                state.stable.version,
                f"{state.stable.label} promoted from {before.canary_percent}% canary to "
                f"stable by hand on the dashboard ({actor})",
                before,
                state,
                actor,
                closed_alerts=closed,
                warnings=publisher_warnings(lines),
            )

    def rollback(
        self,
        fleet: str,
        *,
        to_version: str | None,
        expect_sequence: int | None,
        actor: str,
    ) -> dict[str, Any]:
        """Drop the canary, or (``to_version``) re-point stable to a lower published
        version; recorded as a ``rolled_back`` decision."""
        if to_version is not None:
            parse_version(to_version)
        with self._write_lock:
            view = self._check_sequence(fleet, expect_sequence)
            before = view.state
            if before is None:
                raise ConflictError(f"fleet {fleet} has no rollout state to roll back")
            if to_version is None and before.canary is None:
                raise ConflictError(
                    f"fleet {fleet} has no canary; choose a lower version to roll back to"
                )
            dropped = before.canary
            lines: list[str] = []
            state = rollback(
                fleet,
                self.broker,
                self._private_key(),
                to_version=to_version,
                prefix=self.prefix,
                state_file=state_file_for(self.home, fleet),
                progress=lines.append,
            )
            assert state.stable is not None
            if to_version is None and dropped is not None:
                version = dropped.version
                reason = (
                    f"canary {dropped.label} dropped by hand on the dashboard ({actor}); its "
                    f"devices return to {state.stable.label}"
                )
            else:
                version = state.stable.version
                previous = before.stable.label if before.stable else "none"
                reason = (
                    f"stable re-pointed from {previous} to {state.stable.label} by hand on the "
                    f"dashboard ({actor}), signed rollback"
                )
            return self._record(
                fleet,
                "rolled_back",
                version,
                reason,
                before,
                state,
                actor,
                warnings=publisher_warnings(lines),
            )

    def _record(
        self,
        fleet: str,
        action: str,
        version: str,
        reason: str,
        before: RolloutState,
        after: RolloutState,
        actor: str,
        **extra: Any,
    ) -> dict[str, Any]:
        evidence = {
            **extra,
            "by": "dashboard",
            "client": actor,
            "before": {
                "sequence": before.sequence,
                "stable": None if before.stable is None else before.stable.version,
                "canary": None if before.canary is None else before.canary.version,
                "canary_percent": before.canary_percent,
            },
            "after": {
                "sequence": after.sequence,
                "stable": None if after.stable is None else after.stable.version,
                "canary": None if after.canary is None else after.canary.version,
                "rollback": after.rollback,
            },
        }
        record = DecisionRecord(
            id=None,
            fleet=fleet,
            created=self.clock(),
            action=action,
            model_version=version,
            reason=reason,
            evidence=evidence,
        )
        identifier = self.store.add_decision(record)
        stored = DecisionRecord(
            id=identifier,
            fleet=fleet,
            created=record.created,
            action=action,
            model_version=version,
            reason=reason,
            evidence=evidence,
        )
        return cleaned(
            {
                "decision": decision_document(stored),
                "rollout": self.rollout(fleet),
                "warnings": extra.get("warnings", []),
            }
        )
