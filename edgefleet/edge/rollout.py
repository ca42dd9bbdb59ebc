"""The signed rollout state of a fleet: which model is stable, which is the canary and for
what share of the devices (docs/architecture.md §5).

The central side publishes one :class:`RolloutState` retained on ``{prefix}/{fleet}/rollout``;
a device that connects, even after months away, gets the newest state at once and works
out its own target with :func:`target_for`, without any per-device message.

Wire format: one JSON envelope ::

    {"state": "<the state as JSON text>", "signature": {"algorithm", "key_id", "signature"}}

The state travels as a *string* so that the signature covers exactly the bytes the
publisher signed: re-serialising a parsed object would make verification depend on two
JSON encoders agreeing byte for byte. :func:`verify_rollout` checks the size, the envelope,
the signature and only then parses the state, so untrusted bytes are parsed as little as
possible.

What a device must still do with a verified state, because a replayed old state is validly
signed too (TUF's rollback and freeze attacks):

- refuse a state whose ``sequence`` (the fleet's serial) is below the highest it accepted,
  and ignore the same one re-delivered (:func:`check_sequence`); it persists that serial;
- refuse an expired state (:func:`check_fresh`): a device that never saw the fleet has no
  serial to compare, so expiry is what stops an old state replayed to it. The publisher
  re-signs before expiry (``edgefleet rollout refresh``, or ``edgefleet watch`` on its own);
- refuse to move to a lower version unless ``rollback`` is set (:func:`check_version`).

Clocks: a device allows :data:`CLOCK_SKEW` (5 minutes) between its clock and the
publisher's, so a device a little behind or ahead does not refuse a fresh state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.edge.manifest import FORMATS, parse_version
from edgefleet.edge.signing import TrustedKey, sign, verify
from edgefleet.edge.topics import check_identifier, validate_device_id, validate_sha256
from edgefleet.errors import (
    DowngradeError,
    InputError,
    RolloutError,
    SignatureError,
    StaleRolloutError,
)

ROLLOUT_FORMAT = 1
MAX_ROLLOUT_BYTES = 65536
"""A rollout state is a few hundred bytes; anything near this size is not one, and a
device should not spend memory parsing it."""

DEFAULT_LIFETIME = timedelta(days=7)
"""How long a signed state stays valid unless the publisher says otherwise: long enough that a
publisher away for a weekend does not strand its fleet, short enough that a replayed old
state is refused within a week."""
CLOCK_SKEW = timedelta(minutes=5)
"""How far a device's clock may be from the publisher's before expiry is judged wrongly."""
REFRESH_FRACTION = 1 / 3
"""A state is re-signed when less than this share of its lifetime remains."""

Cohort = Literal["stable", "canary"]


@dataclass(frozen=True)
class ModelRef:
    """One published model version, by the content hashes a device fetches it with:
    ``models/{manifest_sha256}``, ``models/{signature_sha256}`` (manifest.sig) and one
    ``models/{sha256}`` per artifact format."""

    name: str
    version: str
    manifest_sha256: str
    artifacts: Mapping[str, str]
    signature_sha256: str

    def __post_init__(self) -> None:
        try:
            if not isinstance(self.name, str) or not self.name:
                raise InputError("model name must be a non-empty string")
            parse_version(self.version)
            validate_sha256(self.manifest_sha256)
            validate_sha256(self.signature_sha256)
            if not isinstance(self.artifacts, Mapping) or not self.artifacts:
                raise InputError("a model needs at least one artifact")
            for fmt, digest in self.artifacts.items():
                if fmt not in FORMATS:
                    raise InputError(f"artifact format {fmt!r} is not one of {FORMATS}")
                validate_sha256(digest)
        except InputError as error:
            raise RolloutError(f"invalid model reference: {error}") from None
        # A read-only copy: the caller's dict may change later, a message must not.
        object.__setattr__(
            self, "artifacts", MappingProxyType(dict(sorted(self.artifacts.items())))
        )

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        return parse_version(self.version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "manifest_sha256": self.manifest_sha256,
            "signature_sha256": self.signature_sha256,
            "artifacts": dict(self.artifacts),
        }

    @classmethod
    def from_dict(cls, raw: Any) -> ModelRef:
        if not isinstance(raw, dict):
            raise RolloutError("a model reference must be a JSON object")
        try:
            artifacts = raw["artifacts"]
            if not isinstance(artifacts, dict):
                raise RolloutError("'artifacts' must map formats to sha256s")
            return cls(
                name=_string(raw, "name"),
                version=_string(raw, "version"),
                manifest_sha256=_string(raw, "manifest_sha256"),
                signature_sha256=_string(raw, "signature_sha256"),
                artifacts={str(k): v for k, v in artifacts.items()},
            )
        except KeyError as missing:
            raise RolloutError(f"a model reference lacks the field {missing}") from None


@dataclass(frozen=True)
class RolloutState:
    """What a fleet should run. ``sequence`` is the fleet's serial: it grows with every
    state the publisher signs (a change or a refresh), and a device refuses a state below
    the highest it accepted. ``expires`` (ISO 8601, with a zone) is when the signature
    stops counting: a device refuses a state past it, so an old state replayed to a new
    device is refused too. ``rollout_id`` names the current canary experiment and seeds
    canary membership, so raising ``canary_percent`` under the same id only adds devices;
    ``rollback`` is the signed permission for devices to move to a lower version."""

    fleet: str
    rollout_id: str
    sequence: int
    stable: ModelRef | None
    canary: ModelRef | None
    canary_percent: int
    rollback: bool
    issued: str
    expires: str
    format_version: int = field(default=ROLLOUT_FORMAT)
    challenger: ModelRef | None = None
    """A model the shadow cohort scores beside the one it runs, never acting on its answers
    (docs/architecture.md §17). Signed and fetched like the others; written in the signed
    bytes only when set, so a state without one reads and verifies as before."""
    shadow_percent: int = 0
    """Share of the devices in the shadow cohort (:func:`in_shadow`)."""

    def __post_init__(self) -> None:
        try:
            check_identifier(self.fleet, "fleet name")
            validate_device_id(self.rollout_id)
        except InputError as error:
            raise RolloutError(f"invalid rollout state: {error}") from None
        # bool is an int subclass: True must not pass as sequence 1.
        if type(self.sequence) is not int or self.sequence < 0:
            raise RolloutError(f"rollout sequence must be an integer >= 0, not {self.sequence!r}")
        if type(self.canary_percent) is not int or not 0 <= self.canary_percent <= 100:
            raise RolloutError(
                f"canary percent must be an integer from 0 to 100, not {self.canary_percent!r}"
            )
        if self.canary is None and self.canary_percent != 0:
            raise RolloutError("a canary percent without a canary model")
        if type(self.shadow_percent) is not int or not 0 <= self.shadow_percent <= 100:
            raise RolloutError(
                f"shadow percent must be an integer from 0 to 100, not {self.shadow_percent!r}"
            )
        if (self.challenger is None) != (self.shadow_percent == 0):
            raise RolloutError("a challenger needs a shadow percent above 0, and only it")
        if type(self.rollback) is not bool:
            raise RolloutError("'rollback' must be true or false")
        if self.format_version != ROLLOUT_FORMAT:
            raise RolloutError(
                f"rollout format {self.format_version!r}; this edgefleet reads "
                f"{ROLLOUT_FORMAT}: upgrade edgefleet on this device"
            )
        if _time(self.expires, "expires") <= _time(self.issued, "issued"):
            raise RolloutError(f"the state expires ({self.expires}) before it is issued")

    @property
    def issued_at(self) -> datetime:
        return _time(self.issued, "issued")

    @property
    def expires_at(self) -> datetime:
        return _time(self.expires, "expires")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": self.format_version,
            "fleet": self.fleet,
            "rollout_id": self.rollout_id,
            "sequence": self.sequence,
            "stable": None if self.stable is None else self.stable.to_dict(),
            "canary": None if self.canary is None else self.canary.to_dict(),
            "canary_percent": self.canary_percent,
            "rollback": self.rollback,
            "issued": self.issued,
            "expires": self.expires,
        }
        if self.challenger is not None:
            data["challenger"] = self.challenger.to_dict()
            data["shadow_percent"] = self.shadow_percent
        return data

    def to_bytes(self) -> bytes:
        """Compact, key-sorted, ASCII JSON: the bytes that are signed."""
        text = json.dumps(
            self.to_dict(),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )
        return text.encode("ascii")

    @classmethod
    def from_dict(cls, raw: Any) -> RolloutState:
        if not isinstance(raw, dict):
            raise RolloutError("the rollout state must be a JSON object")
        try:
            stable, canary = raw["stable"], raw["canary"]
            challenger = raw.get("challenger")
            return cls(
                format_version=raw["format"],
                fleet=_string(raw, "fleet"),
                rollout_id=_string(raw, "rollout_id"),
                sequence=raw["sequence"],
                stable=None if stable is None else ModelRef.from_dict(stable),
                canary=None if canary is None else ModelRef.from_dict(canary),
                canary_percent=raw["canary_percent"],
                rollback=raw["rollback"],
                issued=_string(raw, "issued"),
                expires=_string(raw, "expires"),
                challenger=None if challenger is None else ModelRef.from_dict(challenger),
                shadow_percent=raw.get("shadow_percent", 0),
            )
        except KeyError as missing:
            raise RolloutError(f"the rollout state lacks the field {missing}") from None


def _time(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise RolloutError(f"{name!r} {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise RolloutError(f"{name!r} {value!r} lacks a time zone")
    return parsed


def _string(raw: dict[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise RolloutError(f"{key!r} must be a string, not {type(value).__name__}")
    return value


def sign_rollout(state: RolloutState, private_key: Ed25519PrivateKey) -> bytes:
    """The signed envelope of ``state``, ready to publish retained."""
    state_bytes = state.to_bytes()
    envelope = {
        "state": state_bytes.decode("ascii"),
        "signature": json.loads(sign(state_bytes, private_key)),
    }
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode("ascii")


def verify_rollout(
    payload: bytes,
    trusted_keys: Sequence[TrustedKey],
    *,
    max_bytes: int = MAX_ROLLOUT_BYTES,
    fleet: str | None = None,
) -> RolloutState:
    """The rollout state in ``payload`` if a trusted key signed it; otherwise
    :class:`SignatureError` (unsigned, wrong key, changed bytes) or :class:`RolloutError`
    (empty, oversize, malformed, or for a fleet other than ``fleet`` when given: a state
    signed for one fleet must not steer another that trusts the same key)."""
    if not payload:
        raise RolloutError("the rollout message is empty (the retained state was cleared)")
    if len(payload) > max_bytes:
        raise RolloutError(
            f"the rollout message has {len(payload):,} bytes, more than the limit of "
            f"{max_bytes:,} bytes for a rollout state: not a rollout state"
        )
    try:
        envelope = json.loads(payload)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8 and bad JSON; RecursionError a deeply nested array.
        raise RolloutError("the rollout message is not JSON: not a rollout state") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("state"), str):
        raise RolloutError("the rollout message lacks its 'state' text: not a rollout state")
    signature = envelope.get("signature")
    if not isinstance(signature, dict):
        raise SignatureError("the rollout message is unsigned: it has no 'signature'")
    try:
        state_bytes = envelope["state"].encode("ascii")
    except UnicodeEncodeError:
        # Signed states are ASCII; other text cannot match any signature.
        raise SignatureError("the rollout state text is not what was signed") from None
    verify(state_bytes, json.dumps(signature).encode("utf-8"), trusted_keys)
    try:
        raw = json.loads(state_bytes)
    except (ValueError, RecursionError):
        raise RolloutError("the signed rollout state is not JSON") from None
    state = RolloutState.from_dict(raw)
    if fleet is not None and state.fleet != fleet:
        raise RolloutError(
            f"the rollout state is for fleet {state.fleet!r}, not {fleet!r}: a message "
            "published on the wrong topic, or a replay from another fleet"
        )
    return state


def in_canary(device_id: str, rollout_id: str, percent: int) -> bool:
    """Whether ``device_id`` is in the canary of ``rollout_id`` at ``percent`` %.

    ``int.from_bytes(sha256(f"{rollout_id}:{device_id}").digest()[:8], "big") % 100 <
    percent``: deterministic, so the central side knows who is where without asking;
    uniform enough that ``percent`` % of a large fleet is in (64 bits mod 100 has a bias
    below 1e-17); and monotonic in ``percent`` for one rollout, so raising the percentage
    only adds devices. A new ``rollout_id`` draws a new sample, so the same devices do not
    take every canary's risk.

    >>> in_canary("pump-17", "r1", 0), in_canary("pump-17", "r1", 100)
    (False, True)
    """
    if type(percent) is not int or not 0 <= percent <= 100:
        raise InputError(f"canary percent must be an integer from 0 to 100, not {percent!r}")
    digest = hashlib.sha256(f"{rollout_id}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def target_for(state: RolloutState, device_id: str) -> tuple[ModelRef | None, Cohort]:
    """The model ``device_id`` should run under ``state`` and its cohort. A device outside
    the canary follows ``stable``, which may be None (nothing published yet)."""
    validate_device_id(device_id)
    if state.canary is not None and in_canary(device_id, state.rollout_id, state.canary_percent):
        return state.canary, "canary"
    return state.stable, "stable"


def in_shadow(device_id: str, rollout_id: str, percent: int) -> bool:
    """Whether ``device_id`` is in the shadow cohort: the canary's rule (:func:`in_canary`)
    under its own seed, so the shadow sample is not the canary's."""
    return in_canary(device_id, f"{rollout_id}.shadow", percent)


def challenger_for(state: RolloutState, device_id: str) -> ModelRef | None:
    """The challenger ``device_id`` scores in shadow under ``state``, or None. Only devices
    that follow ``stable`` shadow: a canary device already tries a new model."""
    if state.challenger is None or state.stable is None:
        return None
    if target_for(state, device_id)[1] != "stable":
        return None
    if not in_shadow(device_id, state.rollout_id, state.shadow_percent):
        return None
    return state.challenger


def check_sequence(state: RolloutState, highest: int | None) -> bool:
    """True if ``state`` is newer than the highest serial accepted, False if it is the
    same one again (a retained message re-delivered on reconnect); :class:`StaleRolloutError`
    if it is older: a replayed, validly signed old state must not roll a device back."""
    if highest is None or state.sequence > highest:
        return True
    if state.sequence == highest:
        return False
    raise StaleRolloutError(
        f"stale rollout state: sequence {state.sequence}, but {highest} was already "
        "accepted (a replayed or out-of-date message)"
    )


def is_expired(state: RolloutState, now: datetime, *, skew: timedelta = CLOCK_SKEW) -> bool:
    """Whether ``state`` expired at ``now``, allowing ``skew`` for the clocks' difference."""
    return now > state.expires_at + skew


def check_fresh(state: RolloutState, now: datetime, *, skew: timedelta = CLOCK_SKEW) -> None:
    """:class:`StaleRolloutError` if ``state`` expired at ``now`` (``skew`` allowed): a
    genuine old state replayed, or a publisher that stopped re-signing."""
    if is_expired(state, now, skew=skew):
        raise StaleRolloutError(
            f"rollout state {state.sequence} expired at {state.expires} (this device's "
            f"clock: {now.isoformat(timespec='seconds')}): a replayed old state, or the "
            f"publisher stopped re-signing; 'edgefleet rollout refresh --fleet "
            f"{state.fleet}' publishes a fresh one"
        )


def needs_refresh(state: RolloutState, now: datetime, fraction: float = REFRESH_FRACTION) -> bool:
    """Whether less than ``fraction`` of the lifetime of ``state`` remains at ``now``
    (time for the publisher to re-sign it)."""
    lifetime = state.expires_at - state.issued_at
    return state.expires_at - now < lifetime * fraction


def check_version(state: RolloutState, target: ModelRef, running_version: str | None) -> None:
    """:class:`DowngradeError` if ``target`` is lower than ``running_version`` and the
    state does not carry the signed rollback permission."""
    if running_version is None or state.rollback:
        return
    if target.version_tuple < parse_version(running_version):
        raise DowngradeError(
            f"the rollout asks for {target.label}, lower than the running {running_version}, "
            "without a signed rollback: refused (publish it with 'edgefleet rollout "
            "rollback' to allow it)"
        )
