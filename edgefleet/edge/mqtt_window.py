"""The publish side's backpressure: a :class:`PublishHandle` per QoS 1 message handed to
paho, and the :class:`PublishWindow` of at most ``max_pending`` unacknowledged ones
(docs/architecture.md §8: paho itself only fails silently at 65,535)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Protocol

import paho.mqtt.client as paho

from edgefleet.edge.mqtt_messages import after
from edgefleet.errors import BackpressureError, BrokerError


class HandleOwner(Protocol):
    """What a handle asks of the client that made it."""

    @property
    def display(self) -> str: ...

    def take_failure(self, mid: int) -> str | None: ...

    def forbid_in_network_thread(self, what: str) -> None: ...


class PublishHandle:
    """A message handed to the client. :meth:`wait` returns once the broker acknowledged it
    (QoS 1) or it was written to the socket (QoS 0), and raises :class:`BrokerError` if the
    broker refused it, the connection lost it (QoS 0), or ``timeout`` passed."""

    def __init__(self, owner: HandleOwner, topic: str, qos: int, info: paho.MQTTMessageInfo):
        self._owner = owner
        self.topic = topic
        self.qos = qos
        self._info = info
        self._failure: str | None = None

    @property
    def mid(self) -> int:
        return self._info.mid

    @property
    def done(self) -> bool:
        """Acknowledged (or, for QoS 0, written or lost); never blocks."""
        try:
            return self._info.is_published()
        except (RuntimeError, ValueError):
            # paho raises when rc says the message failed: it is settled, as a failure.
            return True

    def settle(self) -> None:
        failure = self._owner.take_failure(self.mid)
        if failure is not None:
            self._failure = failure

    def wait(self, timeout: float | None = 30.0) -> None:
        self._owner.forbid_in_network_thread("wait for the broker to acknowledge a message")
        # paho raises when the message settled with a failing rc: reported below.
        with contextlib.suppress(RuntimeError, ValueError):
            self._info.wait_for_publish(timeout)
        where = f"the MQTT broker at {self._owner.display}"
        if not self.done:
            raise BrokerError(
                f"{where} did not acknowledge the message on {self.topic}{after(timeout)}"
            )
        if self._info.rc == paho.MQTT_ERR_CONN_LOST:
            raise BrokerError(f"the QoS 0 message on {self.topic} was lost with the connection")
        self.settle()
        if self._failure is not None:
            raise BrokerError(f"{where} refused the message on {self.topic}: {self._failure}")


class PublishWindow:
    """At most ``limit`` QoS 1 messages waiting for the broker's acknowledgement: a publish
    reserves a place first (waiting for room), then files its handle."""

    def __init__(self, limit: int):
        self.limit = limit
        self._changed = threading.Condition()
        self._handles: deque[PublishHandle] = deque()
        self._reserved = 0

    def reserve(self, broker: str, topic: str, timeout: float, *, may_wait: bool) -> None:
        """A place for the message on ``topic``, waiting up to ``timeout`` s for room (not at
        all when ``may_wait`` is False: the network thread, which brings the room, must not
        wait); :class:`BackpressureError` when there is none."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._unacknowledged() + self._reserved >= self.limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not may_wait:
                    raise BackpressureError(
                        f"{self.limit} messages to {broker} are still waiting for the broker's "
                        f"acknowledgement{after(timeout)}; the message on {topic} was not "
                        "sent. The broker is slow or unreachable"
                    )
                # Polled as well as notified: paho marks a message published only after
                # the callback that notifies us has returned.
                self._changed.wait(min(remaining, 0.02))
            self._reserved += 1

    def release(self, handle: PublishHandle | None) -> None:
        """Give the reserved place back, or fill it with the handle of the message sent."""
        with self._changed:
            self._reserved = max(0, self._reserved - 1)
            if handle is not None:
                self._handles.append(handle)
            self._changed.notify_all()

    def notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def pending(self) -> int:
        """Messages not yet acknowledged by the broker."""
        with self._changed:
            self._unacknowledged()
            return sum(1 for handle in self._handles if not handle.done)

    def wait_for_change(self, seconds: float) -> None:
        with self._changed:
            self._changed.wait(seconds)

    def clear(self) -> None:
        with self._changed:
            self._handles.clear()

    def _unacknowledged(self) -> int:
        """Messages in the window, after dropping the acknowledged ones at its head (the
        broker acknowledges in order, so the head is where they are)."""
        while self._handles and self._handles[0].done:
            self._handles.popleft().settle()
        return len(self._handles)
