"""Prediction ids that carry their own score: any worker process can take the label of a
prediction another worker made, with no shared memory between them.

An id is ``base64url(created, score, pid, counter, version) + HMAC-SHA256 tag`` under a
secret the service draws at start: a client cannot forge one (nor change its score), and
after a restart the old ids are refused like a device forgets its predictions. The score is
P(positive) of a binary model, a regressor's value; a multi-class model's id carries every
class's probability as well (``0x00, K, K float32`` before the version, which never starts
with a NUL byte), what its outcome is counted with (edge/agent/counting.py). Labels are
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
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.errors import InputError

_HEAD = struct.Struct("<dfIQ")
_TAG = 12
_MAX_ID = 600
"""Characters of the longest id: a 64-class model's (about 450) and its version."""
PREDICTION_TTL = 7 * 24 * 3600.0
"""Seconds a prediction id accepts its label."""


@dataclass(frozen=True)
class PredictionRef:
    created: float
    score: float
    version: str
    key: bytes
    """The id's bytes without the tag: what the ledger remembers."""
    outputs: tuple[float, ...] | None = None
    """Every class's probability (a multi-class model's prediction)."""

    @property
    def remembered(self) -> float | tuple[float, ...]:
        """What the edge agent counts an outcome of this prediction with."""
        return self.score if self.outputs is None else self.outputs


class PredictionIds:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise InputError("the prediction id secret needs at least 16 bytes")
        self._secret = secret
        self._pid = os.getpid() & 0xFFFFFFFF
        self._counter = itertools.count()

    def make(
        self, scores: list[float], version: str, outputs: npt.NDArray[Any] | None = None
    ) -> list[str]:
        """One id per score; ``outputs`` (``[N, K]``, a multi-class model's probabilities)
        are carried too."""
        now = time.time()
        tail = version.encode()
        ids = []
        for i, score in enumerate(scores):
            extra = b"" if outputs is None else _pack_outputs(outputs[i])
            body = _HEAD.pack(now, score, self._pid, next(self._counter)) + extra + tail
            tag = hmac.new(self._secret, body, sha256).digest()[:_TAG]
            ids.append(base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode())
        return ids

    def read(self, identifier: object, *, now: float | None = None) -> PredictionRef:
        """The prediction behind ``identifier``; :class:`InputError` for anything this
        service did not issue, or issued longer than :data:`PREDICTION_TTL` ago."""
        unknown = InputError(f"no recent prediction has id {str(identifier)[:80]!r}")
        if not isinstance(identifier, str) or not 0 < len(identifier) <= _MAX_ID:
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
        outputs, tail = _unpack_outputs(body[_HEAD.size :])
        return PredictionRef(created, float(score), tail.decode(), body, outputs)


def _pack_outputs(row: npt.NDArray[Any]) -> bytes:
    return bytes((0, len(row))) + np.asarray(row, dtype="<f4").tobytes()


def _unpack_outputs(rest: bytes) -> tuple[tuple[float, ...] | None, bytes]:
    """The class probabilities and the version's bytes after the head (the tag is checked:
    these bytes are the service's own)."""
    if rest[:1] != b"\x00":
        return None, rest
    width = 4 * rest[1]
    return tuple(float(p) for p in np.frombuffer(rest[2 : 2 + width], "<f4")), rest[2 + width :]


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
