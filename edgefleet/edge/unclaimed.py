"""Messages that reach a manual-ack MQTT client before any of its subscriptions matches them.

A resumed persistent session delivers its queue right after CONNACK, before the owner's
``subscribe`` call has registered a callback. Acknowledging such a message would tell the
broker to forget a message nobody read (a stream consumer lost 12 of 3,000 events that way).
They are held, unacknowledged, until a subscription claims them; past the bound they stay
unacknowledged and the broker sends them again on the next connection
(docs/architecture.md §8).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

DEFAULT_LIMIT = 10_000

Held = TypeVar("Held")


class Unclaimed(Generic[Held]):
    """A bounded, thread-safe list of messages no subscription has claimed yet."""

    def __init__(self, limit: int = DEFAULT_LIMIT):
        self.limit = limit
        self._held: list[tuple[str, Held]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def hold(self, topic: str, message: Held) -> bool:
        """Keep ``message``; False when the bound is reached (the caller leaves it unacked)."""
        with self._lock:
            if len(self._held) >= self.limit:
                return False
            self._held.append((topic, message))
            return True

    def claim(self, matches: Callable[[str], bool]) -> list[Held]:
        """Remove and return, in arrival order, the held messages whose topic ``matches``."""
        with self._lock:
            taken = [m for t, m in self._held if matches(t)]
            self._held = [(t, m) for t, m in self._held if not matches(t)]
        return taken

    def clear(self) -> None:
        """Forget everything: on a new connection the broker re-sends what was not acked."""
        with self._lock:
            self._held.clear()
