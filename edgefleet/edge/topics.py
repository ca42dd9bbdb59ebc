"""MQTT topic names of a fleet (docs/architecture.md §5), spoken by devices and the central side.

::

    {prefix}/{fleet}/rollout                 retained, signed rollout state
    {prefix}/{fleet}/models/{sha256}         retained manifest, signature or artifact bytes
    {prefix}/{fleet}/devices/{id}/report     QoS 1 report aggregates
    {prefix}/{fleet}/devices/{id}/status     retained status; the last will says "offline"
    {prefix}/{fleet}/devices/{id}/ack        QoS 1, written by monitors, read by that device
    {prefix}/{fleet}/markers/{id}/...        the device's private read_retained markers

Every name that goes into a topic is validated here, once: a fleet or device name holding
``+``, ``#`` or ``/`` would turn a topic into a wildcard or shift its levels, so that a
device could publish as another one or a subscription could match more than intended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgefleet.errors import InputError

DEFAULT_PREFIX = "edgefleet"
MAX_NAME_LENGTH = 64
"""Longest fleet name or prefix; short enough that every topic stays far below MQTT's
65,535 byte limit and readable in a broker's log."""

# Fleets, devices and device groups appear in topics, file names, SQL and HTML alike: one
# narrow rule for all of them, starting with a letter or digit so "." and ".." never pass.
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Control characters and the MQTT wildcards/level separator never belong in a name.
_FORBIDDEN = re.compile(r"[+#/\x00-\x1f\x7f]")


def check_identifier(value: object, field: str) -> str:
    """``value`` if it is 1 to 64 characters of ``[A-Za-z0-9_.-]`` starting with a letter or
    digit (a fleet, device or group name); :class:`InputError` naming ``field`` otherwise."""
    if not isinstance(value, str):
        raise InputError(f"{field} must be text, not {type(value).__name__}")
    if not _IDENTIFIER.fullmatch(value):
        raise InputError(
            f"{field} must be 1 to 64 characters of A-Z a-z 0-9 _ . - starting with a letter "
            f"or digit, not {value[:40]!r}{'...' if len(value) > 40 else ''}"
        )
    return value


def validate_device_id(device_id: str) -> str:
    return check_identifier(device_id, "device id")


def validate_name(kind: str, value: str) -> str:
    """A fleet name or topic prefix: non-empty, at most :data:`MAX_NAME_LENGTH`
    characters, without MQTT wildcards, ``/``, control characters or a leading ``$``
    (brokers reserve ``$`` topics, and wildcard subscriptions never match them)."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{kind} must be a non-empty string")
    if len(value) > MAX_NAME_LENGTH:
        raise InputError(f"{kind} {value[:20]!r}... is longer than {MAX_NAME_LENGTH} characters")
    bad = _FORBIDDEN.search(value)
    if bad:
        raise InputError(
            f"{kind} {value!r} contains {bad.group()!r}: MQTT wildcards ('+', '#'), '/' "
            "and control characters are not allowed"
        )
    if value.startswith("$"):
        raise InputError(f"{kind} {value!r} starts with '$', which brokers reserve")
    return value


def validate_sha256(digest: str) -> str:
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise InputError(f"{digest!r} is not a sha256 (64 lowercase hex digits)")
    return digest


@dataclass(frozen=True)
class Topics:
    """The topics of one fleet. ``Topics("shop")`` -> ``edgefleet/shop/...``."""

    fleet: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_identifier(self.fleet, "fleet name")
        validate_name("topic prefix", self.prefix)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.fleet}"

    @property
    def rollout(self) -> str:
        return f"{self.base}/rollout"

    def model(self, sha256: str) -> str:
        """Where the bytes whose sha256 is ``sha256`` are retained (content-addressed:
        the same bytes always land on the same topic, so publishing twice is harmless)."""
        return f"{self.base}/models/{validate_sha256(sha256)}"

    @property
    def all_models(self) -> str:
        return f"{self.base}/models/+"

    def report(self, device_id: str) -> str:
        return f"{self.base}/devices/{validate_device_id(device_id)}/report"

    def status(self, device_id: str) -> str:
        return f"{self.base}/devices/{validate_device_id(device_id)}/status"

    def ack(self, device_id: str) -> str:
        """Where monitors tell a device which of its reports are stored (QoS 1)."""
        return f"{self.base}/devices/{validate_device_id(device_id)}/ack"

    def markers(self, device_id: str) -> str:
        """Where the device's :meth:`MqttClient.read_retained` puts its markers: a topic
        space of its own, the only one besides report and status the access list lets it
        write. Not under ``devices/{id}/``: with Mosquitto 2.0.11, subscribing and
        unsubscribing a topic there made ``tests/fleet/test_faults.py`` lose reports across
        a broker SIGKILL and restart (2 to 5 of 1,200, every run)."""
        return f"{self.base}/markers/{validate_device_id(device_id)}"

    @property
    def all_reports(self) -> str:
        return f"{self.base}/devices/+/report"

    @property
    def all_status(self) -> str:
        return f"{self.base}/devices/+/status"

    @property
    def all_acks(self) -> str:
        return f"{self.base}/devices/+/ack"

    def device_id_from(self, topic: str) -> str:
        """The device id of a report or status topic of this fleet; :class:`InputError`
        for any other topic (a message on a foreign topic is never attributed)."""
        head = f"{self.base}/devices/"
        if topic.startswith(head):
            device_id, _, kind = topic[len(head) :].partition("/")
            if kind in ("report", "status") and _IDENTIFIER.fullmatch(device_id):
                return device_id
        raise InputError(f"{topic!r} is not a device report or status topic of {self.base}")

    def sha256_from(self, topic: str) -> str:
        """The content hash of a ``models/{sha256}`` topic of this fleet."""
        head = f"{self.base}/models/"
        digest = topic[len(head) :] if topic.startswith(head) else ""
        if not _SHA256.fullmatch(digest):
            raise InputError(f"{topic!r} is not a model topic of {self.base}")
        return digest
