"""The end-to-end acknowledgement a monitor sends a device once its reports are stored.

A broker's PUBACK only says the broker has the message, in memory; a broker that dies
before writing it to disk loses it. So a device keeps each report in its outbox until a
monitor has *committed* it to the report store and said so on the device's own topic
``{prefix}/{fleet}/devices/{id}/ack`` (QoS 1)::

    {"v": 1, "device_id": "pos-17", "ranges": [[1, 40], [42, 42]]}

``ranges`` are the inclusive sequence ranges this monitor's last commit found in the store
for the device: the reports it stored and those it found stored already (a re-send, or a
report another monitor stored). Explicit ranges, not a "highest contiguous" watermark,
because a device's sequences have holes by design: reports dropped from a full outbox are
never sent, and a watermark would stall at the first hole and make the device re-send
everything after it forever. Every ack is idempotent, so a lost ack heals itself: the
device re-sends, the store finds a duplicate, and the duplicate is acknowledged.

Guarantee: at-least-once delivery (the device re-sends until acknowledged) plus an
idempotent store (unique ``(fleet, device, sequence)``): each report is counted exactly
once, whatever the broker loses. See docs/architecture.md, "Nothing lost".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edgefleet.edge.sketch import MAX_COUNT
from edgefleet.edge.topics import check_identifier
from edgefleet.edge.wirejson import exact_keys, json_type, loads_strict
from edgefleet.errors import InputError

__all__ = ["ACK_VERSION", "MAX_ACK_BYTES", "MAX_ACK_RANGES", "Ack"]

ACK_VERSION = 1
MAX_ACK_RANGES = 4096
"""Ranges in one ack; a commit that found more for one device sends several acks."""
MAX_ACK_BYTES = 128 * 1024
_FIELDS = ("v", "device_id", "ranges")


@dataclass(frozen=True)
class Ack:
    device_id: str
    ranges: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        check_identifier(self.device_id, "ack field 'device_id'")
        if not 1 <= len(self.ranges) <= MAX_ACK_RANGES:
            raise InputError(f"an ack holds 1 to {MAX_ACK_RANGES} ranges, not {len(self.ranges)}")
        for pair in self.ranges:
            _check_range(pair)

    @classmethod
    def from_sequences(cls, device_id: str, sequences: Iterable[int]) -> list[Ack]:
        """The fewest acks that cover ``sequences`` (ranges merged, at most
        :data:`MAX_ACK_RANGES` each); an empty list for no sequences."""
        ranges = _ranges(sorted(set(sequences)))
        return [
            cls(device_id, tuple(ranges[i : i + MAX_ACK_RANGES]))
            for i in range(0, len(ranges), MAX_ACK_RANGES)
        ]

    @property
    def count(self) -> int:
        return sum(high - low + 1 for low, high in self.ranges)

    def covers(self, sequence: int) -> bool:
        return any(low <= sequence <= high for low, high in self.ranges)

    def encode(self) -> bytes:
        body = {"v": ACK_VERSION, "device_id": self.device_id, "ranges": self.ranges}
        return json.dumps(body, separators=(",", ":")).encode("ascii")

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Ack:
        """Parse and validate an ack from the network; :class:`InputError` says why not."""
        raw = loads_strict(payload, max_bytes=MAX_ACK_BYTES, what="ack")
        if not isinstance(raw, dict):
            raise InputError(f"an ack is a JSON object, not {json_type(raw)}")
        exact_keys(raw, _FIELDS, "ack")
        if type(raw["v"]) is not int or raw["v"] != ACK_VERSION:
            raise InputError(f"ack version {raw['v']!r} is not {ACK_VERSION}")
        ranges = raw["ranges"]
        if not isinstance(ranges, list) or not all(isinstance(r, list) for r in ranges):
            raise InputError("ack field 'ranges' must be a list of [first, last] pairs")
        return cls(raw["device_id"], tuple(_pair(r) for r in ranges))


def _pair(raw: list[Any]) -> tuple[int, int]:
    if len(raw) != 2:
        raise InputError(f"an ack range is [first, last], not {len(raw)} values")
    return raw[0], raw[1]


def _check_range(pair: tuple[Any, Any]) -> None:
    low, high = pair
    for value in (low, high):
        if type(value) is not int or not 0 <= value <= MAX_COUNT:
            raise InputError(f"an ack sequence is an integer from 0, not {value!r}")
    if low > high:
        raise InputError(f"an ack range runs upwards: [{low}, {high}]")


def _ranges(ordered: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for value in ordered:
        if ranges and value == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], value)
        else:
            ranges.append((value, value))
    return ranges
