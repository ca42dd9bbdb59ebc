"""Sending the device's outbox (docs/architecture.md §8): in order, at QoS 1, and a
report leaves the outbox only when a monitor acknowledges that it is *stored*.

:class:`OutboxSender` runs on the agent's sender thread. It publishes what the outbox
says is due, marks it sent with a jittered, doubling re-send time (a report not
acknowledged within ``ack_timeout`` goes again, up to ``ack_timeout_max``), removes a
message without a sequence (a status) on PUBACK, and applies the monitors' acks that the
network thread queued (:attr:`acks`). Any broker error pauses sending until the next
connection (:attr:`ready`); nothing leaves the outbox on an error.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque

from edgefleet.edge.mqtt import MqttClient, PublishHandle
from edgefleet.edge.outbox import Outbox, OutboxItem
from edgefleet.errors import BrokerError

logger = logging.getLogger("edgefleet.agent")

MAX_QUEUED_ACKS = 10_000
"""Acks held between the network thread and the sender (older ones are re-sent for)."""


class OutboxSender:
    """The sender thread's work (module docstring)."""

    def __init__(
        self,
        outbox: Outbox,
        client: MqttClient,
        stop: threading.Event,
        *,
        device_id: str,
        ack_timeout: float,
        ack_timeout_max: float,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.stop = stop
        self.device_id = device_id
        self.ack_timeout = ack_timeout
        self.ack_timeout_max = ack_timeout_max
        self.ready = threading.Event()
        """Set when there may be something to send: a new report, a connection, an ack."""
        self.acks: deque[tuple[tuple[int, int], ...]] = deque(maxlen=MAX_QUEUED_ACKS)
        """Acks received on the network thread, applied to the outbox by the sender."""

    def run(self) -> None:
        """Publish what the outbox says is due, in order; apply the monitors' acks."""
        while not self.stop.is_set():
            next_due = self.outbox.next_due()
            self.ready.wait(1.0 if next_due is None else min(1.0, next_due))
            self.ready.clear()
            self.apply_acks()
            while not self.stop.is_set() and self.client.is_connected:
                items = self.outbox.due(50)
                if not items or not self._send(items):
                    break
                self.apply_acks()

    def apply_acks(self) -> None:
        ranges: list[tuple[int, int]] = []
        while self.acks:
            ranges.extend(self.acks.popleft())
        if ranges:
            self.outbox.ack_sequences(ranges)

    def _send(self, items: list[OutboxItem]) -> bool:
        """Hand ``items`` to the broker and mark them sent; False when sending must pause.
        Reports wait for a monitor's ack; a message without a sequence goes on PUBACK."""
        handles = []
        error: BrokerError | None = None
        try:
            for item in items:
                handles.append((item, self.client.publish(item.topic, item.payload, qos=1)))
        except BrokerError as failure:
            error = failure
        if handles:
            self.outbox.mark_sent([item for item, _ in handles], self.retry_after)
        try:
            self._remove_on_puback([(i.id, h) for i, h in handles if i.sequence is None])
        except BrokerError as failure:
            error = error or failure
        if error is not None:
            logger.info("%s: sending paused: %s", self.device_id, error)
            self.stop.wait(0.5)
        return error is None

    def _remove_on_puback(self, handles: list[tuple[int, PublishHandle]]) -> None:
        acknowledged: list[int] = []
        try:
            for identifier, handle in handles:
                handle.wait(timeout=30)
                acknowledged.append(identifier)
        finally:
            self.outbox.ack_many(acknowledged)

    def retry_after(self, attempts: int) -> float:
        """Seconds until a report sent ``attempts`` times goes again: doubling, capped,
        with jitter, so that devices that lost one broker together do not all re-send in
        the same second when it comes back."""
        base = min(self.ack_timeout_max, self.ack_timeout * 2.0 ** (attempts - 1))
        return base * random.uniform(0.8, 1.2)
