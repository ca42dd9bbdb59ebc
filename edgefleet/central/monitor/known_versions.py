"""Which model versions the monitor stores reports of, answered fast from a cache of the
registry (docs/architecture.md §10)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["CachedVersions"]


class CachedVersions:
    """A ``known_version`` callback over a slow source (the registry): answers from a cached
    set, and reloads it when asked about a version it lacks, at most every
    ``refresh_seconds``, so a version registered after the monitor started is learnt."""

    def __init__(
        self, load: Callable[[], set[tuple[str, str]]], *, refresh_seconds: float = 10.0
    ) -> None:
        self._load = load
        self._refresh_seconds = refresh_seconds
        self._known = load()
        self._loaded = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, model_name: str, model_version: str) -> bool:
        key = (model_name, model_version)
        if key in self._known:
            return True
        with self._lock:
            if time.monotonic() - self._loaded >= self._refresh_seconds:
                self._known = self._load()
                self._loaded = time.monotonic()
        return key in self._known
