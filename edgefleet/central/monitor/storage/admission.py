"""Whether a message is a report the store may keep (the CPU-bound half of ingest, no
database: the monitor may run it in a worker process), and the quarantine row of one that is not."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.central.monitor.fastpath import fast_decode as _fast_decode
from edgefleet.central.monitor.merging import (
    check_mergeable_counts,
)
from edgefleet.central.monitor.rollups import BatchRollups, PartialRollup, RollupKey
from edgefleet.central.monitor.storage.records import KnownVersion
from edgefleet.central.monitor.validation import (
    Layout,
    VersionProfile,
    layout_of,
)
from edgefleet.edge.report import Report
from edgefleet.edge.topics import validate_device_id, validate_name
from edgefleet.errors import InputError

EXCERPT_BYTES = 256
"""Bytes of a refused payload kept in the quarantine table, escaped to printable text."""
MAX_REASON = 500
MAX_TOPIC = 256
MAX_VERSION = 64


@dataclass(frozen=True)
class PreparedBatch:
    """A batch of messages validated by :func:`prepare`: the valid reports as
    ``(topic, row, layout)`` (the layout for the check against their version) and the
    quarantine rows of the others. Plain data, so that it crosses a process boundary
    cheaply."""

    received: float
    valid: list[tuple[str, dict[str, Any], Layout]]
    refused: list[dict[str, Any]]
    partials: dict[RollupKey, PartialRollup] = field(default_factory=dict)
    """The valid reports summed per minute and hour rollup, as if every one were stored:
    the store appends them as they are when it stored all, and sums again the ones it
    stored otherwise (a duplicate, a report of an unknown version)."""


def prepare(
    items: Sequence[tuple[str, bytes]],
    *,
    fleet: str | None = None,
    prefix: str | None = None,
    rollups: bool = True,
) -> PreparedBatch:
    """Validate ``(topic, payload)`` messages (everything but the registry's say), and sum
    the valid ones per minute rollup: the CPU-bound half of
    :meth:`MonitorStore.ingest_many`, needing no database."""
    received = time.time()
    valid: list[tuple[str, dict[str, Any], Layout]] = []
    refused: list[dict[str, Any]] = []
    layouts: dict[Layout, Layout] = {}
    summed = BatchRollups()
    for topic, payload in items:
        try:
            row, layout, raw = _validate(topic, payload, fleet, prefix)
        except InputError as error:
            refused.append(quarantine_row(topic, payload, str(error), received, fleet))
            continue
        except Exception as error:  # a decoder bug must not stop ingestion either
            reason = f"{type(error).__name__} while decoding: {error}"
            refused.append(quarantine_row(topic, payload, reason, received, fleet))
            continue
        row["received"] = received
        # One object per distinct layout: pickled once per batch on the way from a worker.
        layout = layouts.setdefault(layout, layout)
        valid.append((topic, row, layout))
        if rollups:
            summed.add(raw, layout, (row["fleet"], row["device_id"], row["sequence"]))
    return PreparedBatch(received, valid, refused, summed.result())


def version_refusal(
    row: dict[str, Any], layout: Layout, known_version: KnownVersion | None, received: float
) -> str | None:
    """Why a valid report does not fit the version it claims, or None if it does."""
    if known_version is None:
        return None
    verdict = known_version(row["model_name"], row["model_version"])
    if not verdict:
        return (
            f"model {row['model_name']} {row['model_version']} is not a known version (not "
            "in the registry): train or register it, and the device's re-sends are stored"
        )
    if isinstance(verdict, VersionProfile):
        try:
            verdict.check(layout, row["window_end"], received)
        except InputError as error:
            return str(error)
    return None


# -- validation ------------------------------------------------------------------------------


def _validate(
    topic: str, payload: bytes, fleet: str | None, prefix: str | None
) -> tuple[dict[str, Any], Layout, dict[str, Any]]:
    """The row, feature layout and parsed JSON of a valid report, or :class:`InputError`
    saying why it is not one."""
    topic_fleet, topic_device = _parse_topic(topic, fleet, prefix)
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise InputError(f"a report payload is bytes, not {type(payload).__name__}")
    raw = _fast_decode(payload)
    if raw is None:
        report = Report.decode(payload)  # raises the exact reason, or accepts
        raw = report.to_dict()
    if raw["device_id"] != topic_device:
        raise InputError(
            f"the report of device {raw['device_id']!r} came on the topic of device "
            f"{topic_device!r}: a device may only report as itself"
        )
    if raw["fleet"] != topic_fleet:
        raise InputError(
            f"the report of fleet {raw['fleet']!r} came on a topic of fleet {topic_fleet!r}"
        )
    if len(raw["model_version"]) > MAX_VERSION:
        # parse_version takes digits without end; the column does not.
        raise InputError(f"report field 'model_version' is longer than {MAX_VERSION} characters")
    check_mergeable_counts(raw)
    row = {
        "fleet": raw["fleet"],
        "device_id": raw["device_id"],
        "sequence": raw["sequence"],
        "model_name": raw["model_name"],
        "model_version": raw["model_version"],
        "cohort": raw["cohort"],
        "device_group": raw["device_group"],
        "window_start": float(raw["window_start"]),
        "window_end": float(raw["window_end"]),
        "scored": raw["scored"],
        "failed": raw["failed"],
        "dropped_reports": raw["dropped_reports"],
        # The bytes that were validated, not a re-encoding: the exact report, for free.
        "body": bytes(payload).decode("utf-8"),
    }
    return row, layout_of(raw), raw


def _parse_topic(topic: str, fleet: str | None, prefix: str | None) -> tuple[str, str]:
    parts = topic.split("/") if isinstance(topic, str) else []
    shape = "{prefix}/{fleet}/devices/{device}/report"
    if len(parts) != 5 or parts[2] != "devices" or parts[4] != "report":
        raise InputError(f"the topic {_excerpt(topic, 80)!r} is not a report topic ({shape})")
    if prefix is not None and parts[0] != prefix:
        raise InputError(f"the topic {_excerpt(topic, 80)!r} does not start with {prefix!r}")
    if fleet is not None and parts[1] != fleet:
        raise InputError(f"the topic {_excerpt(topic, 80)!r} is not of fleet {fleet!r}")
    validate_name("fleet name", parts[1])
    return parts[1], validate_device_id(parts[3])


# -- quarantine rows -------------------------------------------------------------------------


def _excerpt(value: Any, limit: int) -> str:
    """Printable text of at most about ``limit`` characters: control characters (NUL
    included, which PostgreSQL text refuses) and invalid UTF-8 escaped as ``\\xNN``."""
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value[:limit]).decode("utf-8", errors="backslashreplace")
    else:
        text = str(value)[:limit]
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def quarantine_row(
    topic: Any, payload: Any, reason: str, received: float, fleet: str | None
) -> dict[str, Any]:
    if not isinstance(payload, bytes | bytearray | memoryview):
        payload = str(payload).encode("utf-8", errors="replace")
    parts = topic.split("/") if isinstance(topic, str) else []
    topic_fleet = parts[1] if len(parts) > 1 else ""
    device = parts[3] if len(parts) == 5 else None
    try:
        topic_fleet = validate_name("fleet", topic_fleet)
    except InputError:
        topic_fleet = fleet or "?"
    try:
        device = validate_device_id(device) if device is not None else None
    except InputError:
        device = None
    return {
        "fleet": fleet or topic_fleet,
        "topic": _excerpt(topic, MAX_TOPIC),
        "device_id": device,
        "received": received,
        "reason": _excerpt(reason, MAX_REASON),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "excerpt": _excerpt(payload, EXCERPT_BYTES),
    }
