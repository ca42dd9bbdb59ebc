"""Publish signed bundles to a fleet over MQTT and steer its rollout (docs/architecture.md §5).

``publish`` verifies the bundle (signature and every artifact) before it connects, so a
tampered bundle never reaches the broker. It then sends the manifest, its signature and
each artifact retained at QoS 1 on content-addressed topics (``models/{sha256}`` of the
bytes), waits until the broker has acknowledged all of them, and only then publishes the
new signed :class:`RolloutState` retained on ``rollout``: a device never sees a state that
points at bytes the broker does not hold yet.

Every change (publish, promote, rollback, refresh) takes the newest of two copies of the
state, the one retained on the broker and the one in the local state file
(``HOME/fleets/FLEET.json``), verifies its signature, and writes ``sequence + 1`` to both,
with a new expiry (``lifetime`` after now, :data:`~edgefleet.edge.rollout.DEFAULT_LIFETIME`
unless given). The state file is the publisher's own truth: a retained message that does not
verify (garbage, another key, another fleet) is replaced with a warning naming it, never a
reason to refuse, so nobody with write access to the broker can freeze the fleet. A lost
state file is recovered from the broker, and a broker that lost its database gets the newest
state back at the next change. :func:`refresh` re-signs the same content under a new serial
and expiry before devices would refuse it as expired. The state file also remembers every model
published to the fleet, which ``rollback --to VERSION`` needs (the broker keeps only the
current state), and every published file is kept content-addressed beside it
(``HOME/fleets/content/{sha256}``), so :mod:`edgefleet.central.keeper` can put the retained
state and models back on a broker that lost them.

Version rules: a new stable version must be higher than the current one (a lower one is a
rollback: ``rollback --to``), and a canary must be higher than stable. A canary republished
with another percentage keeps its ``rollout_id``, so raising the percentage only adds
devices. Dropping a canary is a rollback too: its devices go down to the stable version,
which the signed ``rollback`` flag allows.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.central.fleet_control import (
    FleetControl,
    Progress,
    model_ref,
    new_rollout_id,
    now_utc,
)
from edgefleet.central.fleet_state import (
    content_dir_for,
    model_key,
    read_state_file,
    state_file_for,
)
from edgefleet.edge.bundle import open_bundle
from edgefleet.edge.manifest import parse_version
from edgefleet.edge.mqtt import BrokerAddress, MqttClient
from edgefleet.edge.rollout import (
    DEFAULT_LIFETIME,
    ModelRef,
    RolloutState,
    is_expired,
    needs_refresh,
    verify_rollout,
)
from edgefleet.edge.signing import TrustedKey
from edgefleet.edge.topics import DEFAULT_PREFIX, Topics
from edgefleet.errors import EdgefleetError, InputError, RolloutError

# The state file and the fleet connection live in their own modules; commands import them
# from here as before.
__all__ = [
    "FleetControl",
    "Progress",
    "PublishResult",
    "content_dir_for",
    "describe_state",
    "model_key",
    "model_ref",
    "new_rollout_id",
    "promote",
    "publish",
    "read_state_file",
    "refresh",
    "refresh_if_due",
    "rollback",
    "rollout_status",
    "saved_state",
    "state_file_for",
]


@dataclass(frozen=True)
class PublishResult:
    model: ModelRef
    state: RolloutState
    bytes_sent: int
    topics: tuple[str, ...]


def describe_state(state: RolloutState | None) -> str:
    """A few lines for humans."""
    if state is None:
        return "no rollout state published"
    stable = state.stable.label if state.stable else "none"
    lines = [
        f"fleet {state.fleet}: sequence {state.sequence}, issued {state.issued}, "
        f"expires {state.expires}",
        f"  stable  {stable}",
    ]
    if state.canary is not None:
        lines.append(
            f"  canary  {state.canary.label} on {state.canary_percent}% of devices "
            f"(rollout {state.rollout_id})"
        )
    else:
        lines.append("  canary  none")
    if state.challenger is not None:
        lines.append(
            f"  shadow  {state.challenger.label} scored beside stable on "
            f"{state.shadow_percent}% of devices (answers not used)"
        )
    if state.rollback:
        lines.append("  rollback allowed: devices may move to a lower version")
    if is_expired(state, now_utc(), skew=timedelta(0)):
        lines.append(
            f"  EXPIRED: devices refuse this state; re-sign it with 'edgefleet rollout "
            f"refresh --fleet {state.fleet}'"
        )
    return "\n".join(lines)


def publish(
    bundle_dir: str | Path,
    fleet: str,
    broker: BrokerAddress,
    private_key: Ed25519PrivateKey,
    *,
    canary_percent: int | None = None,
    prefix: str = DEFAULT_PREFIX,
    state_file: Path | None = None,
    progress: Progress = lambda _: None,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> PublishResult:
    """Publish a bundle to ``fleet``: as the new stable model, or with ``canary_percent``
    as the canary for that share of the devices (stable stays)."""
    if canary_percent is not None and (
        type(canary_percent) is not int or not 1 <= canary_percent <= 100
    ):
        raise InputError(f"--canary must be a percentage from 1 to 100, not {canary_percent!r}")
    control = FleetControl(
        fleet,
        broker,
        private_key,
        prefix=prefix,
        state_file=state_file,
        progress=progress,
        lifetime=lifetime,
    )
    # Everything is checked before the first byte goes out: signature by our key, then
    # each artifact's size and sha256.
    bundle = open_bundle(bundle_dir, control.trusted)
    ref, contents = model_ref(bundle)
    progress(f"{ref.label}: signature and {len(ref.artifacts)} artifact(s) verified")
    with control.connected():
        current, models = control.current()
        stable = current.stable if current else None
        _check_order(ref, stable, canary=canary_percent is not None)
        sent, topics = control.send_contents(contents)
        models = {**models, model_key(ref): ref}
        if canary_percent is None:
            state = control.commit(
                current, models, stable=ref, canary=None, canary_percent=0, rollback=False
            )
        else:
            same_canary = (
                current is not None
                and current.canary is not None
                and current.canary.manifest_sha256 == ref.manifest_sha256
            )
            state = control.commit(
                current,
                models,
                stable=stable,
                canary=ref,
                canary_percent=canary_percent,
                rollback=False,
                rollout_id=None if same_canary else new_rollout_id(),
            )
    progress(f"rollout state {state.sequence} published on {control.topics.rollout}")
    return PublishResult(model=ref, state=state, bytes_sent=sent, topics=topics)


def _check_order(ref: ModelRef, stable: ModelRef | None, *, canary: bool) -> None:
    if stable is None:
        if canary:
            raise InputError(
                f"fleet has no stable model yet: publish {ref.label} without --canary first"
            )
        return
    if ref.version_tuple < stable.version_tuple:
        raise InputError(
            f"{ref.label} is lower than the stable {stable.label}: to go back, run "
            f"'edgefleet rollout rollback --to {ref.version}'"
        )
    if ref.version_tuple == stable.version_tuple and ref.manifest_sha256 != stable.manifest_sha256:
        raise InputError(
            f"{stable.label} is stable already, with another manifest: devices running it "
            "would not update. Export the model as a new version"
        )
    if canary and ref.version_tuple == stable.version_tuple:
        raise InputError(f"{ref.label} is the stable version; a canary must be higher")


def rollout_status(
    fleet: str,
    broker: BrokerAddress,
    trusted_keys: list[TrustedKey],
    *,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = 10.0,
) -> RolloutState | None:
    """The verified state retained for ``fleet``, or None if none was published."""
    topics = Topics(fleet, prefix)
    client = MqttClient(
        broker,
        f"edgefleet-status-{uuid.uuid4().hex[:12]}",
        clean_start=True,
        connect_timeout=timeout,
    )
    with client:
        payload = client.read_retained(topics.rollout, timeout)
    if payload is None:
        return None
    try:
        return verify_rollout(payload, trusted_keys, fleet=fleet)
    except EdgefleetError as error:
        raise RolloutError(
            f"{topics.rollout} holds {len(payload):,} bytes that are not a rollout state "
            f"signed by the trusted key ({error}); devices ignore it, and 'edgefleet rollout "
            f"refresh --fleet {fleet}' (or any publish, promote or rollback) replaces it"
        ) from None


def promote(
    fleet: str,
    broker: BrokerAddress,
    private_key: Ed25519PrivateKey,
    *,
    prefix: str = DEFAULT_PREFIX,
    state_file: Path | None = None,
    progress: Progress = lambda _: None,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> RolloutState:
    """The canary becomes stable on every device."""
    control = FleetControl(
        fleet,
        broker,
        private_key,
        prefix=prefix,
        state_file=state_file,
        progress=progress,
        lifetime=lifetime,
    )
    with control.connected():
        current, models = control.current()
        if current is None or current.canary is None:
            raise InputError(f"fleet {fleet} has no canary to promote")
        progress(f"promoting {current.canary.label} from {current.canary_percent}% to stable")
        return control.commit(
            current, models, stable=current.canary, canary=None, canary_percent=0, rollback=False
        )


def rollback(
    fleet: str,
    broker: BrokerAddress,
    private_key: Ed25519PrivateKey,
    *,
    to_version: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    state_file: Path | None = None,
    progress: Progress = lambda _: None,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> RolloutState:
    """Without ``to_version``: drop the canary, its devices return to stable. With it:
    stable becomes that (lower) version, published before to this fleet. Either way the
    state carries the signed permission to go down a version."""
    if to_version is not None:
        parse_version(to_version)
    control = FleetControl(
        fleet,
        broker,
        private_key,
        prefix=prefix,
        state_file=state_file,
        progress=progress,
        lifetime=lifetime,
    )
    with control.connected():
        current, models = control.current()
        if current is None:
            raise InputError(f"fleet {fleet} has no rollout state to roll back")
        if to_version is None:
            if current.canary is None:
                raise InputError(
                    f"fleet {fleet} has no canary; to re-point stable, pass --to VERSION"
                )
            progress(f"dropping canary {current.canary.label}; its devices return to stable")
            return control.commit(
                current,
                models,
                stable=current.stable,
                canary=None,
                canary_percent=0,
                rollback=True,
            )
        target = _find_version(models, to_version, current)
        stable = current.stable
        if stable is not None and target.version_tuple >= stable.version_tuple:
            raise InputError(
                f"{target.label} is not lower than the stable {stable.label}: publish or "
                "promote to go up; rollback goes down"
            )
        control.require_content(target)
        progress(f"re-pointing stable to {target.label} (signed rollback)")
        return control.commit(
            current, models, stable=target, canary=None, canary_percent=0, rollback=True
        )


def _find_version(models: Mapping[str, ModelRef], version: str, current: RolloutState) -> ModelRef:
    running = current.stable or current.canary
    matches = [
        ref
        for ref in models.values()
        if ref.version == version and (running is None or ref.name == running.name)
    ]
    if not matches:
        known = ", ".join(sorted({ref.version for ref in models.values()}, key=parse_version))
        raise InputError(
            f"version {version} was never published to this fleet from this home (known: "
            f"{known or 'none'}); publish its bundle first"
        )
    return matches[0]


def refresh(
    fleet: str,
    broker: BrokerAddress,
    private_key: Ed25519PrivateKey,
    *,
    prefix: str = DEFAULT_PREFIX,
    state_file: Path | None = None,
    progress: Progress = lambda _: None,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> RolloutState:
    """Re-sign the fleet's current state: the same models, canary and rollback flag under
    the next serial and a new expiry, so devices keep accepting it (and anything retained
    that does not verify is replaced)."""
    control = FleetControl(
        fleet,
        broker,
        private_key,
        prefix=prefix,
        state_file=state_file,
        progress=progress,
        lifetime=lifetime,
    )
    with control.connected():
        current, models = control.current()
        if current is None:
            raise InputError(
                f"fleet {fleet} has no rollout state to refresh: publish a model first "
                "(edgefleet publish VERSION --fleet ...)"
            )
        state = control.commit(
            current,
            models,
            stable=current.stable,
            canary=current.canary,
            canary_percent=current.canary_percent,
            rollback=current.rollback,
            rollout_id=current.rollout_id,
            challenger=current.challenger,
            shadow_percent=current.shadow_percent,
        )
    progress(f"rollout state {state.sequence} re-signed, valid until {state.expires}")
    return state


def saved_state(state_file: Path, trusted: Sequence[TrustedKey], fleet: str) -> RolloutState | None:
    """The verified state in ``state_file`` (None without one); expiry is not judged here."""
    saved = read_state_file(state_file, trusted, fleet)
    return None if saved is None else saved.state


def refresh_if_due(
    fleet: str,
    broker: BrokerAddress,
    private_key: Ed25519PrivateKey,
    *,
    state_file: Path,
    prefix: str = DEFAULT_PREFIX,
    progress: Progress = lambda _: None,
    lifetime: timedelta = DEFAULT_LIFETIME,
    now: datetime | None = None,
) -> RolloutState | None:
    """:func:`refresh` when the saved state is due at ``now``: less than a third of its
    lifetime left, or expired. Reads the state file first, so a check that finds nothing
    due does not connect. Returns the new state, or None when nothing was due."""
    trusted = [TrustedKey.from_public_key(private_key.public_key())]
    saved = saved_state(state_file, trusted, fleet)
    if saved is None or not needs_refresh(saved, now or now_utc()):
        return None
    progress(f"rollout state {saved.sequence} of {fleet} expires at {saved.expires}: re-signing")
    return refresh(
        fleet,
        broker,
        private_key,
        prefix=prefix,
        state_file=state_file,
        progress=progress,
        lifetime=lifetime,
    )
