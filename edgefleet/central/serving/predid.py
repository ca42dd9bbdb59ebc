"""Prediction ids that carry their own score: any worker process can take the label of a
prediction another worker made, with no shared memory between them.

An id is ``base64url(created, score, pid, counter, version) + HMAC-SHA256 tag`` under a
secret the service draws at start: a client cannot forge one (nor change its score), and
after a restart the old ids are refused like a device forgets its predictions. Labels are
counted once per id (:class:`OutcomeLedger`, in the supervising process).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import os
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from hashlib import sha256

from edgefleet.errors import InputError

_HEAD = struct.Struct("<dfIQ")
_TAG = 12
PREDICTION_TTL = 7 * 24 * 3600.0
"""Seconds a prediction id accepts its label."""


@dataclass(frozen=True)
class PredictionRef:
    created: float
    score: float
    version: str
    key: bytes
    """The id's bytes without the tag: what the ledger remembers."""


class PredictionIds:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise InputError("the prediction id secret needs at least 16 bytes")
        self._secret = secret
        self._pid = os.getpid() & 0xFFFFFFFF
        self._counter = itertools.count()

    def make(self, scores: list[float], version: str) -> list[str]:
        now = time.time()
        tail = version.encode()
        ids = []
        for score in scores:
            body = _HEAD.pack(now, score, self._pid, next(self._counter)) + tail
            tag = hmac.new(self._secret, body, sha256).digest()[:_TAG]
            ids.append(base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode())
        return ids

    def read(self, identifier: object, *, now: float | None = None) -> PredictionRef:
        """The prediction behind ``identifier``; :class:`InputError` for anything this
        service did not issue, or issued longer than :data:`PREDICTION_TTL` ago."""
        unknown = InputError(f"no recent prediction has id {str(identifier)[:80]!r}")
        if not isinstance(identifier, str) or not 0 < len(identifier) <= 200:
            raise unknown
        try:
            raw = base64.urlsafe_b64decode(identifier + "=" * (-len(identifier) % 4))
        except (binascii.Error, ValueError):
            raise unknown from None
        body, tag = raw[:-_TAG], raw[-_TAG:]
        if len(body) <= _HEAD.size or not hmac.compare_digest(
            tag, hmac.new(self._secret, body, sha256).digest()[:_TAG]
        ):
            raise unknown
        created, score, _, _ = _HEAD.unpack_from(body)
        if (now or time.time()) - created > PREDICTION_TTL:
            raise InputError(f"prediction {identifier[:20]}... is older than 7 days")
        return PredictionRef(created, float(score), body[_HEAD.size :].decode(), body)


class OutcomeLedger:
    """The ids whose label was counted, so a label posted twice (a client's retry, or to
    another worker) counts once. Bounded: when full, the oldest entries go and every id
    created up to the newest one dropped is refused from then on, so no id can count twice."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._floor = 0.0

    def first_time(self, ref: PredictionRef) -> bool:
        if ref.created <= self._floor or ref.key in self._seen:
            return False
        self._seen[ref.key] = ref.created
        while len(self._seen) > self.capacity:
            _, created = self._seen.popitem(last=False)
            self._floor = max(self._floor, created)
        return True
