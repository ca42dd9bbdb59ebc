"""Reading the message retained on a topic, or learning that there is none.

MQTT has no "nothing retained" answer, so after subscribing we publish a marker on a private
topic we also subscribe to: the broker sends a subscriber's messages in order (Mosquitto
queues the retained message when it handles the SUBSCRIBE), so when the marker arrives, a
retained message would have arrived before it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from edgefleet.errors import BrokerError


class _Waitable(Protocol):
    def wait(self, timeout: float | None = ...) -> None: ...


class RetainedReader(Protocol):
    """The client calls this needs (an :class:`edgefleet.edge.mqtt.MqttClient`)."""

    marker_base: str | None

    @property
    def display(self) -> str: ...

    def subscribe(
        self,
        topic_filter: str,
        callback: Callable[[str, bytes, bool], None],
        *,
        qos: int = ...,
        timeout: float = ...,
    ) -> None: ...

    def publish(self, topic: str, payload: bytes, *, qos: int = ...) -> _Waitable: ...

    def unsubscribe(self, topic_filter: str) -> None: ...


def read_retained(client: RetainedReader, topic: str, timeout: float) -> bytes | None:
    """The message retained on ``topic``, or None; the caller checked that ``topic`` is not
    subscribed already and that this is not the network thread."""
    marker = f"{client.marker_base or f'{topic}/.marker'}/{uuid.uuid4().hex}"
    values: list[bytes] = []
    arrived = threading.Event()

    def on_value(_: str, payload: bytes, retained: bool) -> None:
        if retained and payload:
            values.append(payload)

    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    try:
        client.subscribe(topic, on_value, timeout=timeout)
        client.subscribe(marker, lambda *_: arrived.set(), timeout=left())
        client.publish(marker, b"", qos=1).wait(left())
        if not arrived.wait(left()):
            raise BrokerError(
                f"the MQTT broker at {client.display} did not return the retained message "
                f"of {topic} within {timeout:g} s"
            )
    finally:
        client.unsubscribe(marker)
        client.unsubscribe(topic)
    return values[-1] if values else None
