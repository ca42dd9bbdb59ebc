"""The CA's book of issued identities (``identities.json`` in the CA folder): who holds which
certificate, with which roles, and which certificates are revoked. The access list and the
CRL are both generated from it, so they can never disagree.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgefleet.errors import IdentityError

BOOK_FILE = "identities.json"
LOCK_FILE = ".lock"
DEVICE_ROLE = "device"
SERVICE_ROLES = ("monitor", "publisher", "dashboard")
"""What a central service may be (combinable: ``edgefleet watch`` is monitor and publisher)."""


@dataclass(frozen=True)
class IdentityRecord:
    common_name: str
    kind: str
    """``device`` or ``service``."""
    fleet: str | None
    """A device's fleet; for a service the one fleet it is limited to, None for all."""
    name: str
    """The device id or the service's name."""
    roles: tuple[str, ...]
    prefix: str
    serial: int
    issued: float
    expires: float
    revoked: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["roles"] = list(self.roles)
        data["serial"] = str(self.serial)  # 159 bits: beyond what JSON readers keep exact
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IdentityRecord:
        return cls(**{**data, "roles": tuple(data["roles"]), "serial": int(data["serial"])})


class IdentityBook:
    """Read with :meth:`records`; change with ``with book.editing() as records:`` (a file
    lock keeps two commands from losing each other's changes)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / BOOK_FILE

    def records(self) -> list[IdentityRecord]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as error:
            raise IdentityError(f"cannot read the identity book {self.path}: {error}") from None
        try:
            return [IdentityRecord.from_json(item) for item in raw["identities"]]
        except (KeyError, TypeError, ValueError) as error:
            raise IdentityError(f"{self.path} is damaged ({error}); restore it") from None

    def active(self) -> list[IdentityRecord]:
        return [r for r in self.records() if r.active]

    def find(self, common_name: str) -> IdentityRecord | None:
        """The active record of ``common_name``, if any."""
        return next((r for r in self.active() if r.common_name == common_name), None)

    @contextlib.contextmanager
    def editing(self) -> Iterator[list[IdentityRecord]]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self.records()
            yield records
            self._write(records)

    def _write(self, records: list[IdentityRecord]) -> None:
        text = json.dumps({"identities": [r.to_json() for r in records]}, indent=1)
        descriptor, temporary = tempfile.mkstemp(prefix=".identities.", dir=self.folder)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.replace(temporary, self.path)


def revoke_in(records: list[IdentityRecord], common_name: str, when: float) -> list[int]:
    """Mark every active certificate of ``common_name`` revoked; their serials."""
    serials = []
    for index, record in enumerate(records):
        if record.common_name == common_name and record.active:
            records[index] = replace(record, revoked=when)
            serials.append(record.serial)
    return serials
