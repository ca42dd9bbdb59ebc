"""The keeper: puts a fleet's retained rollout state and model files back on a broker that
lost them.

A broker restarted without its database (a new machine, a lost disk) holds no retained
messages: devices already running keep their verified model, but a device that joins, or
one that restarts in the middle of a download, finds nothing to install. The keeper holds
the answer in files the publisher wrote anyway: the signed rollout envelope in the state
file (``HOME/fleets/FLEET.json``) and every published file content-addressed in
``HOME/fleets/content/``. Every ``interval`` seconds, and at once after connecting, it reads
what the broker retains and re-publishes:

- the rollout envelope, when the broker holds none, one that does not verify, or an older
  sequence than the state file (the same signed bytes: no new signature, and devices that
  applied that sequence already ignore it);
- a model's files, when the broker no longer holds its manifest.

It never signs anything, so it needs the publisher's public key only; the private key stays
with whoever re-signs. So a saved envelope past its expiry is not put back (devices would
refuse it): the keeper says so, and ``edgefleet watch``, which holds the key, re-signs it
(``edgefleet rollout refresh`` by hand). A newer state on the broker than in the file
(published from another home) is left alone. ``edgefleet watch``
runs one; ``edgefleet rollout restore`` runs one check.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edgefleet.central.publish import content_dir_for, read_state_file
from edgefleet.edge.mqtt import BrokerAddress, MqttClient
from edgefleet.edge.rollout import ModelRef, RolloutState, is_expired, verify_rollout
from edgefleet.edge.signing import TrustedKey
from edgefleet.edge.topics import DEFAULT_PREFIX, Topics
from edgefleet.errors import EdgefleetError, RolloutError

__all__ = ["RetainedKeeper"]

logger = logging.getLogger("edgefleet.keeper")


class RetainedKeeper:
    def __init__(
        self,
        fleet: str,
        broker: BrokerAddress,
        trusted_keys: Sequence[TrustedKey],
        state_file: Path,
        *,
        prefix: str = DEFAULT_PREFIX,
        interval: float = 30.0,
        progress: Callable[[str], None] = logger.info,
    ):
        self.topics = Topics(fleet, prefix)
        self.fleet = fleet
        self.trusted = tuple(trusted_keys)
        self.state_file = Path(state_file)
        self.interval = interval
        self.progress = progress
        self.restored = 0
        """Retained messages put back so far."""
        self.expired: RolloutState | None = None
        """The saved state, when it expired: re-signing it is the key holder's job."""
        self._client = MqttClient(
            broker, f"edgefleet-keeper-{uuid.uuid4().hex[:12]}", clean_start=True
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RetainedKeeper:
        self._thread = threading.Thread(target=self._run, name="keeper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._client.is_connected:
            self._client.disconnect()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._client.is_connected:
                    self._client.connect()
                self.check()
            except EdgefleetError as error:
                logger.warning("keeper of %s: %s; trying again", self.fleet, error)
            self._stop.wait(self.interval)

    def connect(self) -> None:
        self._client.connect()

    def check(self) -> list[str]:
        """Compare the broker with the state file once and put back what is missing;
        returns the topics re-published."""
        envelope, state = self._local()
        if state is None:
            return []
        restored = [] if self._note_expiry(state) else self._restore_state(envelope, state)
        for ref in (state.stable, state.canary, state.challenger):
            if ref is not None:
                restored += self._restore_model(ref)
        self.restored += len(restored)
        return restored

    def _note_expiry(self, state: RolloutState) -> bool:
        """Whether the saved state expired; said once per state, not at every check."""
        expired = is_expired(state, datetime.now(UTC), skew=timedelta(0))
        if expired and (self.expired is None or self.expired.sequence != state.sequence):
            self.progress(
                f"the saved rollout state {state.sequence} of {self.fleet} expired at "
                f"{state.expires}: not re-publishing it (devices refuse it); re-sign it with "
                f"'edgefleet rollout refresh --fleet {self.fleet}' (edgefleet watch does it "
                "on its own)"
            )
        self.expired = state if expired else None
        return expired

    def _local(self) -> tuple[bytes, RolloutState | None]:
        saved = read_state_file(self.state_file, self.trusted, self.fleet)
        return (b"", None) if saved is None else (saved.envelope, saved.state)

    def _restore_state(self, envelope: bytes, local: RolloutState) -> list[str]:
        retained = self._client.read_retained(self.topics.rollout)
        held = None
        if retained:
            try:
                held = verify_rollout(retained, self.trusted, fleet=self.fleet)
            except EdgefleetError as error:
                self.progress(f"replacing the unverifiable state on {self.topics.rollout}: {error}")
        if held is not None and held.sequence >= local.sequence:
            return []
        self.progress(
            f"the broker lost the rollout state of {self.fleet}: re-publishing sequence "
            f"{local.sequence} from {self.state_file}"
        )
        self._client.publish(self.topics.rollout, envelope, retain=True).wait(30)
        return [self.topics.rollout]

    def _restore_model(self, ref: ModelRef) -> list[str]:
        if self._client.read_retained(self.topics.model(ref.manifest_sha256)) is not None:
            return []
        folder = content_dir_for(self.state_file)
        hashes = dict.fromkeys((ref.manifest_sha256, ref.signature_sha256, *ref.artifacts.values()))
        missing = [h for h in hashes if not (folder / h).is_file()]
        if missing:
            raise RolloutError(
                f"cannot restore {ref.label}: {folder} lacks {len(missing)} of its files; "
                "publish its bundle again (edgefleet publish BUNDLE --fleet ...)"
            )
        self.progress(f"the broker lost {ref.label}: re-publishing its {len(hashes)} files")
        handles = [
            self._client.publish(
                self.topics.model(digest), (folder / digest).read_bytes(), retain=True
            )
            for digest in hashes
        ]
        for handle in handles:
            handle.wait(120)
        return [handle.topic for handle in handles]
