"""The scoring service as a fleet member: one edge :class:`Agent` in the supervising
process follows the fleet's signed rollout, installs each model through the device's update
lifecycle (download, verify, self-test, activate, commit), and reports through its outbox
with end-to-end acks, so the monitor watches the service like any device.

The workers score; the agent never does. A model the agent activates is sent to every
worker, which verifies it again from the agent's store and swaps it in between batches.
Each worker's report counts (sketches) come back every second and are merged into the
agent's open window; labels posted back by prediction id are counted once (the ledger) and
only for the version that made the prediction, as on a device.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from edgefleet.central.serving.predid import OutcomeLedger, PredictionRef
from edgefleet.edge.agent.agent import Agent
from edgefleet.edge.agent.answers import Outcome
from edgefleet.edge.agent.installer import ActiveModel
from edgefleet.edge.sketch import ReportBody

logger = logging.getLogger("edgefleet.serving")


class FleetMember:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.ledger = OutcomeLedger()
        self._lock = threading.Lock()
        self._current: tuple[Any, ...] | None = None
        self.refusals: list[str] = []
        self.labels_counted = 0

    def model_message(self, model: ActiveModel) -> tuple[Any, ...]:
        return (
            "model",
            str(self.agent.config.state_dir),
            model.manifest_sha256,
            model.scorer.format,
        )

    def follow(self, broadcast: Any) -> None:
        """Send every model the agent activates to the workers (``broadcast``)."""

        def activated(model: ActiveModel) -> None:
            message = self.model_message(model)
            with self._lock:
                self._current = message
            broadcast(message)

        self.agent.add_activation_listener(activated)

    def welcome(self) -> tuple[Any, ...] | None:
        with self._lock:
            return self._current

    def on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "counts":
            self._counts(message[1])
        elif kind == "outcome":
            self._outcome(message[1], message[2])
        elif kind == "refused":
            self.refusals.append(f"{message[1][:12]}: {message[2]}")
            logger.warning("a worker refused model %s: %s", message[1][:12], message[2])

    def _counts(self, body: ReportBody) -> None:
        self.agent.merge_counts(body)

    def _outcome(self, ref: PredictionRef, label: Outcome) -> None:
        with self._lock:
            first = self.ledger.first_time(ref)
        if first:
            self.agent.record_outcome(ref.remembered, ref.version, label)
            self.labels_counted += 1
