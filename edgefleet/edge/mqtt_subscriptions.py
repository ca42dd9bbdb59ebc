"""The subscriptions of one :class:`edgefleet.edge.mqtt.MqttClient` and the broker's answers
to them (SUBACKs): thread-safe, since the network thread routes messages and re-subscribes
after a reconnect while callers subscribe from their own threads."""

from __future__ import annotations

import logging
import threading
import time

from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.edge.mqtt_messages import Subscription
from edgefleet.errors import BrokerError

logger = logging.getLogger("edgefleet.mqtt")


class SubscriptionTable:
    def __init__(self) -> None:
        self._entries: dict[str, Subscription] = {}
        self._changed = threading.Condition()
        self._subacks: dict[int, list[ReasonCode]] = {}
        # SUBACKs nobody waits for (re-subscriptions): only their failures are logged.
        self._background: set[int] = set()

    def add(self, entry: Subscription) -> None:
        """Add ``entry``, replacing any subscription of the same filter."""
        with self._changed:
            self._entries[entry.topic_filter] = entry

    def forget(self, topic_filter: str) -> None:
        with self._changed:
            self._entries.pop(topic_filter, None)

    def __contains__(self, topic_filter: str) -> bool:
        with self._changed:
            return topic_filter in self._entries

    def all(self) -> list[Subscription]:
        with self._changed:
            return list(self._entries.values())

    def matching(self, topic: str) -> list[Subscription]:
        with self._changed:
            return [e for e in self._entries.values() if e.matches(topic)]

    def in_background(self, mid: int) -> None:
        """Nobody will wait for the SUBACK of ``mid``."""
        with self._changed:
            self._background.add(mid)

    def answered(self, mid: int, reasons: list[ReasonCode]) -> None:
        """The broker's SUBACK for ``mid`` (network thread)."""
        with self._changed:
            if mid not in self._background:
                self._subacks[mid] = reasons
                self._changed.notify_all()
                return
            self._background.discard(mid)
        for reason in reasons:
            if reason.is_failure:
                logger.error("re-subscription refused by the broker: %s", reason)

    def wait_answer(self, mid: int, what: str, timeout: float) -> list[ReasonCode]:
        """The SUBACK of ``mid``; :class:`BrokerError` naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while mid not in self._subacks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrokerError(f"{what} within {timeout:g} s")
                self._changed.wait(remaining)
            return self._subacks.pop(mid)
