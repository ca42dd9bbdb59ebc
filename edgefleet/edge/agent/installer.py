"""The steps of the update lifecycle for one device: fetch a model's files by their sha256,
verify them, self-test, activate, commit, or roll back to the last good model.

Files come from a ``fetch(sha256) -> bytes`` function (over MQTT, the retained message on
``models/{sha256}``), so the steps are the same whatever carries the bytes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgefleet.edge.agent.lifecycle import Steps, Target
from edgefleet.edge.agent.store import ModelStore
from edgefleet.edge.backends.base import backend_spec
from edgefleet.edge.bundle import MANIFEST_FILE, SIGNATURE_FILE, open_bundle
from edgefleet.edge.hashing import sha256_bytes, sha256_file
from edgefleet.edge.manifest import Manifest, parse_version
from edgefleet.edge.scorer import Scorer
from edgefleet.edge.signing import TrustedKey
from edgefleet.errors import ArtifactError, BundleError, DowngradeError

logger = logging.getLogger("edgefleet.agent")

Fetch = Callable[[str], bytes]
"""``fetch(sha256)`` returns the bytes published under that hash or raises."""


@dataclass(frozen=True)
class ActiveModel:
    manifest_sha256: str
    scorer: Scorer


def load_verified(
    store: ModelStore, manifest_sha256: str, fmt: str, trusted_keys: Sequence[TrustedKey]
) -> Scorer:
    """Verify the stored model (signature, the artifact's hash) and self-test it."""
    bundle = open_bundle(store.folder(manifest_sha256), trusted_keys, formats=(fmt,))
    backend = backend_spec(fmt).load(bundle.artifact_path(fmt))
    return Scorer(bundle.manifest, backend, bundle=bundle)


class Installer:
    """Holds the active model and installs new ones through the lifecycle's steps.

    ``on_activate(old, new)`` runs after a new model became active (the agent closes the
    old model's report window there).
    """

    def __init__(
        self,
        store: ModelStore,
        trusted_keys: Sequence[TrustedKey],
        fetch: Fetch,
        *,
        on_activate: Callable[[ActiveModel | None, ActiveModel], None] = lambda old, new: None,
    ):
        self.store = store
        self.trusted_keys = tuple(trusted_keys)
        self.fetch = fetch
        self.on_activate = on_activate
        self._lock = threading.Lock()
        self._active: ActiveModel | None = None
        self._staged: dict[str, Scorer] = {}
        self.challenger: ActiveModel | None = None
        """The second slot: a model scored in shadow beside the active one, never acted on."""

    @property
    def active(self) -> ActiveModel | None:
        return self._active

    def load_active(self, fmt_for: Callable[[Manifest], str]) -> str | None:
        """At start-up: load the pointer's active model, falling back to the previous one
        if it no longer verifies. Returns why no model could be loaded, or None."""
        pointer = self.store.pointer()
        reasons = []
        for candidate in (pointer.active, pointer.previous):
            if candidate is None:
                continue
            try:
                manifest = Manifest.from_bytes(
                    (self.store.folder(candidate) / MANIFEST_FILE).read_bytes()
                )
                scorer = load_verified(self.store, candidate, fmt_for(manifest), self.trusted_keys)
            except (OSError, BundleError, ValueError) as error:
                reasons.append(f"{candidate[:12]}: {error}")
                logger.warning("stored model %s is unusable: %s", candidate[:12], error)
                continue
            if candidate != pointer.active:
                self.store.activate(candidate)
            self._set_active(ActiveModel(candidate, scorer))
            return None
        return "; ".join(reasons) or "no model installed yet"

    def _set_active(self, model: ActiveModel) -> None:
        with self._lock:
            old, self._active = self._active, model
        if old is None or old.manifest_sha256 != model.manifest_sha256:
            self.on_activate(old, model)

    # -- the lifecycle's steps -------------------------------------------------------------

    def steps(self) -> Steps:
        return Steps(
            download=self.download,
            verify=self.verify,
            self_test=self.self_test,
            activate=self.activate,
            commit=self.commit,
            rollback=self.rollback,
        )

    def _fetch_into(self, target: Target, relative: str, sha256: str) -> bytes:
        path = self.store.folder(target.manifest_sha256) / relative
        if path.is_file() and sha256_file(path) == sha256:
            return path.read_bytes()  # fetched before a restart: content-addressed, complete
        data = self.fetch(sha256)
        actual = sha256_bytes(data)
        if actual != sha256:
            raise ArtifactError(
                f"{relative} arrived with sha256 {actual[:12]}..., expected "
                f"{sha256[:12]}...: tampered or corrupted in transit"
            )
        self.store.write(target.manifest_sha256, relative, data)
        return data

    def download(self, target: Target) -> None:
        manifest = Manifest.from_bytes(
            self._fetch_into(target, MANIFEST_FILE, target.manifest_sha256)
        )
        self._fetch_into(target, SIGNATURE_FILE, target.signature_sha256)
        artifact = manifest.artifact(target.format)
        if artifact.sha256 != target.artifact_sha256:
            raise ArtifactError(
                f"the rollout names {target.format} artifact "
                f"{target.artifact_sha256[:12]}..., the manifest "
                f"{artifact.sha256[:12]}..."
            )
        self._fetch_into(target, artifact.path, artifact.sha256)

    def verify(self, target: Target) -> None:
        bundle = open_bundle(
            self.store.folder(target.manifest_sha256), self.trusted_keys, formats=(target.format,)
        )
        manifest = bundle.manifest
        if (manifest.name, manifest.version) != (target.name, target.version):
            raise BundleError(
                f"the rollout names {target.name} {target.version}, the signed "
                f"manifest is {manifest.label}"
            )
        running = self._active.scorer.manifest if self._active else None
        if (
            running is not None
            and not target.rollback_allowed
            and parse_version(manifest.version) < running.version_tuple
        ):
            raise DowngradeError(
                f"{manifest.label} is lower than the running "
                f"{running.version} and the rollout carries no signed rollback"
            )

    def self_test(self, target: Target) -> None:
        self._staged[target.manifest_sha256] = load_verified(
            self.store, target.manifest_sha256, target.format, self.trusted_keys
        )

    def activate(self, target: Target) -> None:
        scorer = self._staged.pop(target.manifest_sha256, None)
        if scorer is None:  # restarted between self-test and activation: check again
            scorer = load_verified(
                self.store, target.manifest_sha256, target.format, self.trusted_keys
            )
        self.store.activate(target.manifest_sha256)
        self._set_active(ActiveModel(target.manifest_sha256, scorer))

    def commit(self, target: Target) -> None:
        self.store.prune(self._kept())

    def _kept(self) -> set[str]:
        challenger = self.challenger
        return set() if challenger is None else {challenger.manifest_sha256}

    def install_challenger(self, target: Target) -> ActiveModel:
        """Fetch, verify and self-test ``target`` into the challenger slot, through the
        same steps as the active model (a model that does not verify never scores)."""
        current = self.challenger
        if current is not None and current.manifest_sha256 == target.manifest_sha256:
            return current
        self.download(target)
        self.verify(target)
        scorer = load_verified(self.store, target.manifest_sha256, target.format, self.trusted_keys)
        self.challenger = ActiveModel(target.manifest_sha256, scorer)
        return self.challenger

    def drop_challenger(self) -> None:
        """Leave the shadow cohort: the challenger's files go at the next prune."""
        self.challenger = None  # its files go at the next commit's prune

    def rollback(self, target: Target) -> None:
        self._staged.pop(target.manifest_sha256, None)
        pointer = self.store.pointer()
        if pointer.active == target.manifest_sha256:
            pointer = self.store.revert()
        active = self._active
        if pointer.active is not None and (
            active is None or active.manifest_sha256 != pointer.active
        ):
            fmt = active.scorer.format if active else target.format
            self._set_active(
                ActiveModel(
                    pointer.active,
                    load_verified(self.store, pointer.active, fmt, self.trusted_keys),
                )
            )
