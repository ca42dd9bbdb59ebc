"""The values :class:`edgefleet.edge.mqtt.MqttClient` hands out and keeps: messages as they
arrived, subscriptions, the will, and the size of the packet a publish makes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho


@dataclass(frozen=True)
class Message:
    """A message as it arrived, with what acknowledging it needs."""

    topic: str
    payload: bytes
    retained: bool
    qos: int
    mid: int
    generation: int
    """Which connection delivered it: an acknowledgement only means something on that one."""


@dataclass(frozen=True)
class Subscription:
    topic_filter: str
    qos: int
    callback: Callable[..., None]
    raw: bool

    def matches(self, topic: str) -> bool:
        pattern = self.topic_filter
        if pattern.startswith("$share/"):
            pattern = pattern.split("/", 2)[2] if pattern.count("/") >= 2 else ""
        return bool(pattern) and paho.topic_matches_sub(pattern, topic)


MessageCallback = Callable[[str, bytes, bool], None]
"""``callback(topic, payload, retained)``; ``retained`` is True for a message the broker
had stored and sends because of the subscription, False for a live one."""


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for us if we vanish without disconnecting."""

    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


def packet_size(topic: str, payload: bytes, qos: int) -> int:
    """Bytes of the PUBLISH packet paho builds (MQTT 5, no properties)."""
    remaining = 2 + len(topic.encode("utf-8")) + (2 if qos else 0) + 1 + len(payload)
    length_bytes = (
        1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
    )
    return 1 + length_bytes + remaining


def after(timeout: float | None) -> str:
    """ " within N s" for an error message, or nothing when there was no time limit."""
    return f" within {timeout:g} s" if timeout else ""
