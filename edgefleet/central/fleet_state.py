"""A fleet's rollout state as the publisher keeps it locally: ``HOME/fleets/FLEET.json``
(the signed envelope as published and every model ever published to the fleet) and the
published files beside it, content-addressed (docs/architecture.md §5)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.edge.rollout import ModelRef, RolloutState, verify_rollout
from edgefleet.edge.signing import TrustedKey
from edgefleet.edge.topics import Topics
from edgefleet.errors import EdgefleetError, RolloutError

STATE_FORMAT = 1


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


def model_key(ref: ModelRef) -> str:
    return f"{ref.name}@{ref.version}"
