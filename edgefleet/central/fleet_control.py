"""One connection to a fleet's topics with the publisher's key (:class:`FleetControl`): it
reads the newest trusted rollout state (broker or state file), signs and publishes the next
one, and sends a bundle's files retained on content-addressed topics
(docs/architecture.md §5). :mod:`edgefleet.central.publish` opens one per command."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.central.fleet_state import (
    STATE_FORMAT,
    content_dir_for,
    model_key,
    read_state_file,
)
from edgefleet.edge.agent.store import atomic_write
from edgefleet.edge.bundle import SIGNATURE_FILE, VerifiedBundle
from edgefleet.edge.mqtt import BrokerAddress, MqttClient, PublishHandle
from edgefleet.edge.rollout import (
    DEFAULT_LIFETIME,
    ModelRef,
    RolloutState,
    is_expired,
    sign_rollout,
    verify_rollout,
)
from edgefleet.edge.signing import TrustedKey
from edgefleet.edge.topics import DEFAULT_PREFIX, Topics
from edgefleet.errors import BrokerError, EdgefleetError, InputError

Progress = Callable[[str], None]
# Per byte of payload on top of a fixed wait: a slow link still gets its big artifacts
# acknowledged, a dead one fails in reasonable time.
ACK_SECONDS = 30.0
_ACK_SECONDS_PER_MB = 2.0


@dataclass(frozen=True)
class Content:
    label: str
    data: bytes
    sha256: str


def model_ref(bundle: VerifiedBundle) -> tuple[ModelRef, list[Content]]:
    """The reference of a verified bundle and the bytes to publish for it (deduplicated:
    two formats with identical bytes share one topic)."""
    signature = (bundle.root / SIGNATURE_FILE).read_bytes()
    contents = [
        Content("manifest.json", bundle.manifest_bytes, sha256_hex(bundle.manifest_bytes)),
        Content(SIGNATURE_FILE, signature, sha256_hex(signature)),
    ]
    for artifact in bundle.manifest.artifacts:
        # open_bundle checked every artifact against the manifest a moment ago.
        data = (bundle.root / artifact.path).read_bytes()
        contents.append(Content(f"{artifact.format} {artifact.path}", data, artifact.sha256))
    ref = ModelRef(
        name=bundle.manifest.name,
        version=bundle.manifest.version,
        manifest_sha256=contents[0].sha256,
        signature_sha256=contents[1].sha256,
        artifacts={a.format: a.sha256 for a in bundle.manifest.artifacts},
    )
    unique = list({c.sha256: c for c in contents}.values())
    return ref, unique


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def check_lifetime(lifetime: timedelta) -> timedelta:
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
        self.lifetime = check_lifetime(lifetime)
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
        if is_expired(state, now_utc(), skew=timedelta(0)):
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
        issued = now_utc()
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
        self.client.publish(self.topics.rollout, envelope, retain=True).wait(ACK_SECONDS)
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

    def send_contents(self, contents: list[Content]) -> tuple[int, tuple[str, ...]]:
        """Publish every content retained at QoS 1 and wait for all acknowledgements;
        keep a copy of each beside the state file for the keeper."""
        self._keep(contents)
        handles: list[tuple[Content, PublishHandle]] = []
        total = sum(len(c.data) for c in contents)
        self.progress(f"sending {len(contents)} files, {total:,} bytes, to {self.broker.display}")
        for content in contents:
            topic = self.topics.model(content.sha256)
            handles.append((content, self.client.publish(topic, content.data, retain=True)))
        sent = 0
        for content, handle in handles:
            handle.wait(ACK_SECONDS + _ACK_SECONDS_PER_MB * len(content.data) / 1e6)
            sent += len(content.data)
            self.progress(
                f"  {content.label:28} {len(content.data):>12,} bytes  "
                f"models/{content.sha256[:12]}  acknowledged ({sent:,}/{total:,})"
            )
        return sent, tuple(h.topic for _, h in handles)

    def _keep(self, contents: list[Content]) -> None:
        if self.state_file is None:
            return
        folder = content_dir_for(self.state_file)
        for content in contents:
            if not (folder / content.sha256).is_file():
                atomic_write(folder / content.sha256, content.data)

    def require_content(self, ref: ModelRef) -> None:
        """Refuse to point the fleet at a model whose manifest the broker no longer holds."""
        payload = self.client.read_retained(self.topics.model(ref.manifest_sha256), self.timeout)
        if payload is None or sha256_hex(payload) != ref.manifest_sha256:
            raise InputError(
                f"the broker no longer holds the manifest of {ref.label}: publish its bundle "
                "again (edgefleet publish BUNDLE --fleet ...) before pointing the fleet at it"
            )


def new_rollout_id() -> str:
    return secrets.token_hex(6)
