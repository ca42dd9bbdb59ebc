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

import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.edge.agent.store import atomic_write
from edgefleet.edge.bundle import SIGNATURE_FILE, VerifiedBundle, open_bundle
from edgefleet.edge.manifest import parse_version
from edgefleet.edge.mqtt import BrokerAddress, MqttClient, PublishHandle
from edgefleet.edge.rollout import (
    DEFAULT_LIFETIME,
    ModelRef,
    RolloutState,
    is_expired,
    needs_refresh,
    sign_rollout,
    verify_rollout,
)
from edgefleet.edge.signing import TrustedKey
from edgefleet.edge.topics import DEFAULT_PREFIX, Topics
from edgefleet.errors import BrokerError, EdgefleetError, InputError, RolloutError

Progress = Callable[[str], None]
STATE_FORMAT = 1
# Per byte of payload on top of a fixed wait: a slow link still gets its big artifacts
# acknowledged, a dead one fails in reasonable time.
_ACK_SECONDS = 30.0
_ACK_SECONDS_PER_MB = 2.0


def state_file_for(home: Path, fleet: str) -> Path:
    """``HOME/fleets/FLEET.json``: the local copy of a fleet's rollout state."""
    Topics(fleet)  # validates the name before it becomes a file name
    return Path(home) / "fleets" / f"{fleet}.json"


@dataclass(frozen=True)
class SavedState:
    """What a state file holds: the signed envelope as published, its verified state
    (None before the first publish), and every model published to the fleet."""

    envelope: bytes
    state: RolloutState | None
    models: dict[str, ModelRef]


def read_state_file(
    state_file: Path, trusted: Sequence[TrustedKey], fleet: str
) -> SavedState | None:
    """The state file's content, verified (its expiry is not judged here); None when there
    is no file. :class:`RolloutError` for a file that is not ours or not intact."""
    try:
        raw = json.loads(state_file.read_text())
        if raw.get("format") != STATE_FORMAT:
            raise RolloutError(f"format {raw.get('format')!r} is not {STATE_FORMAT}")
        text = raw["rollout"]
        envelope = b"" if text is None else text.encode("ascii")
        state = verify_rollout(envelope, trusted, fleet=fleet) if envelope else None
        models = {key: ModelRef.from_dict(value) for key, value in raw["models"].items()}
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError, EdgefleetError) as error:
        raise RolloutError(
            f"the rollout state file {state_file} is unusable ({error}); move it away and "
            "the state is recovered from the broker"
        ) from None
    return SavedState(envelope, state, models)


def content_dir_for(state_file: Path) -> Path:
    """Where the files published beside ``state_file`` are kept, named by sha256."""
    return state_file.parent / "content"


@dataclass(frozen=True)
class PublishResult:
    model: ModelRef
    state: RolloutState
    bytes_sent: int
    topics: tuple[str, ...]


@dataclass(frozen=True)
class _Content:
    label: str
    data: bytes
    sha256: str


def model_ref(bundle: VerifiedBundle) -> tuple[ModelRef, list[_Content]]:
    """The reference of a verified bundle and the bytes to publish for it (deduplicated:
    two formats with identical bytes share one topic)."""
    signature = (bundle.root / SIGNATURE_FILE).read_bytes()
    contents = [
        _Content("manifest.json", bundle.manifest_bytes, _sha256(bundle.manifest_bytes)),
        _Content(SIGNATURE_FILE, signature, _sha256(signature)),
    ]
    for artifact in bundle.manifest.artifacts:
        # open_bundle checked every artifact against the manifest a moment ago.
        data = (bundle.root / artifact.path).read_bytes()
        contents.append(_Content(f"{artifact.format} {artifact.path}", data, artifact.sha256))
    ref = ModelRef(
        name=bundle.manifest.name,
        version=bundle.manifest.version,
        manifest_sha256=contents[0].sha256,
        signature_sha256=contents[1].sha256,
        artifacts={a.format: a.sha256 for a in bundle.manifest.artifacts},
    )
    unique = list({c.sha256: c for c in contents}.values())
    return ref, unique


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _check_lifetime(lifetime: timedelta) -> timedelta:
    if lifetime < timedelta(minutes=1):
        raise InputError(
            f"a rollout state must live at least a minute, not {lifetime}: devices refuse "
            "an expired state (use e.g. --lifetime 7d)"
        )
    return lifetime


class FleetControl:
    """A connection to one fleet's topics with the publisher's key; the functions below
    open one per command."""

    def __init__(
        self,
        fleet: str,
        broker: BrokerAddress,
        private_key: Ed25519PrivateKey,
        *,
        prefix: str = DEFAULT_PREFIX,
        state_file: Path | None = None,
        progress: Progress = lambda _: None,
        timeout: float = 10.0,
        lifetime: timedelta = DEFAULT_LIFETIME,
    ):
        self.topics = Topics(fleet, prefix)
        self.lifetime = _check_lifetime(lifetime)
        self.fleet = fleet
        self.broker = broker
        self.private_key = private_key
        self.trusted = [TrustedKey.from_public_key(private_key.public_key())]
        self.state_file = state_file
        self.progress = progress
        self.timeout = timeout
        self._client: MqttClient | None = None
        self.ignored: str | None = None
        """What the broker retained instead of a state of ours, when it did."""

    @contextmanager
    def connected(self) -> Iterator[FleetControl]:
        # A publisher only sends and reads retained state: no session to keep.
        client = MqttClient(
            self.broker,
            f"edgefleet-publish-{uuid.uuid4().hex[:12]}",
            clean_start=True,
            connect_timeout=self.timeout,
        )
        client.connect()
        self._client = client
        try:
            yield self
        finally:
            self._client = None
            client.disconnect()

    @property
    def client(self) -> MqttClient:
        if self._client is None:
            raise BrokerError("not connected: use 'with control.connected():'")
        return self._client

    # -- state --------------------------------------------------------------------------------

    def retained_state(self) -> RolloutState | None:
        """The state retained on the broker if our key signed it for this fleet; None
        otherwise, with a warning naming what is there (the next change replaces it)."""
        payload = self.client.read_retained(self.topics.rollout, self.timeout)
        if payload is None:
            return None
        try:
            state = verify_rollout(payload, self.trusted, fleet=self.fleet)
        except EdgefleetError as error:
            self.ignored = str(error)
            self.progress(
                f"warning: {self.topics.rollout} holds {len(payload):,} bytes that are not a "
                f"rollout state of ours ({error}); ignored, and replaced by this change"
            )
            return None
        if is_expired(state, _now(), skew=timedelta(0)):
            self.progress(
                f"warning: the rollout state {state.sequence} on {self.topics.rollout} expired "
                f"at {state.expires} (devices refuse it); replaced by this change"
            )
        return state

    def _local(self) -> tuple[RolloutState | None, dict[str, ModelRef]]:
        saved = (
            None
            if self.state_file is None
            else read_state_file(self.state_file, self.trusted, self.fleet)
        )
        return (None, {}) if saved is None else (saved.state, dict(saved.models))

    def current(self) -> tuple[RolloutState | None, dict[str, ModelRef]]:
        """The newest trusted state (broker or state file) and the known models."""
        retained = self.retained_state()
        local, models = self._local()
        for state in (retained, local):
            for ref in (state.stable, state.canary, state.challenger) if state else ():
                if ref is not None:
                    models.setdefault(model_key(ref), ref)
        if local is None and retained is None and self.ignored is not None:
            self.progress(
                f"warning: no state file for fleet {self.fleet} and nothing verifiable on the "
                "broker: starting again at sequence 1. Devices that accepted a higher "
                "sequence refuse it; restore HOME/fleets/FLEET.json from a backup if this "
                "fleet was published to before"
            )
        if local is not None and (retained is None or local.sequence > retained.sequence):
            old = "nothing" if retained is None else f"sequence {retained.sequence}"
            self.progress(
                f"the broker holds {old} for fleet {self.fleet}, the state file sequence "
                f"{local.sequence}: continuing from the state file (the broker lost its data?)"
            )
            return local, models
        return retained, models

    def commit(
        self,
        previous: RolloutState | None,
        models: Mapping[str, ModelRef],
        *,
        stable: ModelRef | None,
        canary: ModelRef | None,
        canary_percent: int,
        rollback: bool,
        rollout_id: str | None = None,
        challenger: ModelRef | None = None,
        shadow_percent: int = 0,
    ) -> RolloutState:
        """Sign and publish the next state (the next serial, a new expiry), retained; then
        write the state file. A state names a challenger only when the caller passes it:
        any other change (publish, promote, rollback) ends the shadow test."""
        issued = _now()
        state = RolloutState(
            fleet=self.fleet,
            rollout_id=rollout_id or (previous.rollout_id if previous else new_rollout_id()),
            sequence=(previous.sequence if previous else 0) + 1,
            stable=stable,
            canary=canary,
            canary_percent=canary_percent,
            rollback=rollback,
            issued=issued.isoformat(),
            expires=(issued + self.lifetime).isoformat(),
            challenger=challenger,
            shadow_percent=shadow_percent,
        )
        envelope = sign_rollout(state, self.private_key)
        self.client.publish(self.topics.rollout, envelope, retain=True).wait(_ACK_SECONDS)
        self._save(envelope, models, state)
        return state

    def _save(self, envelope: bytes, models: Mapping[str, ModelRef], state: RolloutState) -> None:
        if self.state_file is None:
            return
        known = dict(models)
        for ref in (state.stable, state.canary, state.challenger):
            if ref is not None:
                known.setdefault(model_key(ref), ref)
        document = {
            "format": STATE_FORMAT,
            "fleet": self.fleet,
            "rollout": envelope.decode("ascii"),
            "models": {key: ref.to_dict() for key, ref in sorted(known.items())},
        }
        atomic_write(self.state_file, json.dumps(document, indent=1).encode())

    # -- content ------------------------------------------------------------------------------

    def send_contents(self, contents: list[_Content]) -> tuple[int, tuple[str, ...]]:
        """Publish every content retained at QoS 1 and wait for all acknowledgements;
        keep a copy of each beside the state file for the keeper."""
        self._keep(contents)
        handles: list[tuple[_Content, PublishHandle]] = []
        total = sum(len(c.data) for c in contents)
        self.progress(f"sending {len(contents)} files, {total:,} bytes, to {self.broker.display}")
        for content in contents:
            topic = self.topics.model(content.sha256)
            handles.append((content, self.client.publish(topic, content.data, retain=True)))
        sent = 0
        for content, handle in handles:
            handle.wait(_ACK_SECONDS + _ACK_SECONDS_PER_MB * len(content.data) / 1e6)
            sent += len(content.data)
            self.progress(
                f"  {content.label:28} {len(content.data):>12,} bytes  "
                f"models/{content.sha256[:12]}  acknowledged ({sent:,}/{total:,})"
            )
        return sent, tuple(h.topic for _, h in handles)

    def _keep(self, contents: list[_Content]) -> None:
        if self.state_file is None:
            return
        folder = content_dir_for(self.state_file)
        for content in contents:
            if not (folder / content.sha256).is_file():
                atomic_write(folder / content.sha256, content.data)

    def require_content(self, ref: ModelRef) -> None:
        """Refuse to point the fleet at a model whose manifest the broker no longer holds."""
        payload = self.client.read_retained(self.topics.model(ref.manifest_sha256), self.timeout)
        if payload is None or _sha256(payload) != ref.manifest_sha256:
            raise InputError(
                f"the broker no longer holds the manifest of {ref.label}: publish its bundle "
                "again (edgefleet publish BUNDLE --fleet ...) before pointing the fleet at it"
            )


def model_key(ref: ModelRef) -> str:
    return f"{ref.name}@{ref.version}"


def new_rollout_id() -> str:
    return secrets.token_hex(6)


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
    if is_expired(state, _now(), skew=timedelta(0)):
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
    if saved is None or not needs_refresh(saved, now or _now()):
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
