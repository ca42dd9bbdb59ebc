"""The model registry: every training run is a version with its metrics, data hash and
parameters (SQLAlchemy; a SQLite file in the home folder by default). The fitted pipeline
and what the export needs (holdout inputs, golden vectors, reference profile) are files in
``models/NAME/VERSION/`` beside the database, written before the row that points at them,
so a crash never leaves a version without its files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sqlalchemy import JSON, DateTime, Integer, String, UniqueConstraint, create_engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from edgefleet.central.trainer import TrainedModel
from edgefleet.edge.manifest import (
    DEFAULT_TOLERANCE,
    Artifact,
    GoldenVector,
    Manifest,
    parse_version,
)
from edgefleet.edge.profile import ReferenceProfile
from edgefleet.edge.schema import FeatureSchema
from edgefleet.errors import InputError, RegistryError

DEFAULT_NAME = "churn"


class _Base(DeclarativeBase):
    pass


class ModelVersionRow(_Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(32))
    family: Mapped[str] = mapped_column(String(32))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    target: Mapped[str] = mapped_column(String(128))
    data_sha256: Mapped[str] = mapped_column(String(64))
    train_rows: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(String(1024))


@dataclass(frozen=True)
class ModelVersion:
    """A registered version and the files it was stored with."""

    name: str
    version: str
    family: str
    created: datetime
    target: str
    data_sha256: str
    train_rows: int
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    path: Path

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def load_pipeline(self) -> Any:
        return joblib.load(self.path / "pipeline.joblib")

    def manifest(
        self,
        card: ModelCard | None = None,
        *,
        artifacts: tuple[Artifact, ...] = (),
        parity: Mapping[str, float] | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
        created: datetime | None = None,
    ) -> Manifest:
        """This version's manifest: what the export signs (with its artifacts and parity),
        or, with none, what measuring a version needs (schema, profile, metrics)."""
        card = card or self.load_card()
        return Manifest(
            name=self.name,
            version=self.version,
            created=(created or self.created).isoformat(timespec="seconds"),
            model_family=self.family,
            target=self.target,
            data_sha256=self.data_sha256,
            schema=card.schema,
            metrics=dict(self.metrics),
            reference=card.reference,
            golden=card.golden,
            artifacts=artifacts,
            parity=dict(parity or {}),
            tolerance=tolerance,
            params=dict(self.params),
        )

    def load_card(self) -> ModelCard:
        card = json.loads((self.path / "card.json").read_text())
        arrays = np.load(self.path / "holdout.npz")
        return ModelCard(
            schema=FeatureSchema.from_dict(card["schema"]),
            reference=ReferenceProfile.from_dict(card["reference"]),
            golden=tuple(
                GoldenVector(
                    record=g["record"],
                    input=tuple(g["input"]),
                    probabilities=tuple(g["probabilities"]),
                    note=g["note"],
                )
                for g in card["golden"]
            ),
            holdout_inputs=arrays["inputs"],
            holdout_labels=arrays["labels"],
        )


@dataclass(frozen=True)
class ModelCard:
    schema: FeatureSchema
    reference: ReferenceProfile
    golden: tuple[GoldenVector, ...]
    holdout_inputs: np.ndarray[Any, np.dtype[np.float32]]
    holdout_labels: np.ndarray[Any, np.dtype[np.int8]]

    def golden_inputs(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.array([g.input_values() for g in self.golden], dtype=np.float32)


def _version(row: ModelVersionRow, home: Path) -> ModelVersion:
    return ModelVersion(
        name=row.name,
        version=row.version,
        family=row.family,
        created=row.created if row.created.tzinfo else row.created.replace(tzinfo=UTC),
        target=row.target,
        data_sha256=row.data_sha256,
        train_rows=row.train_rows,
        params=row.params,
        metrics=row.metrics,
        path=home / row.path,
    )


class Registry:
    def __init__(self, home: Path, url: str | None = None):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.url = url or f"sqlite:///{self.home / 'registry.db'}"
        try:
            self.engine = create_engine(self.url)
            _Base.metadata.create_all(self.engine)
        except SQLAlchemyError as error:
            raise RegistryError(f"cannot open the registry at {self.url}: {error}") from None

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine) as session:
            try:
                yield session
                session.commit()
            except SQLAlchemyError as error:
                session.rollback()
                raise RegistryError(f"registry {self.url}: {error}") from None

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        with self._session() as session:
            query = select(ModelVersionRow)
            if name:
                query = query.where(ModelVersionRow.name == name)
            rows = session.scalars(query).all()
            versions = [_version(r, self.home) for r in rows]
        return sorted(versions, key=lambda v: (v.name, parse_version(v.version)))

    def get(self, reference: str, name: str | None = None) -> ModelVersion:
        """``1.2.0``, ``churn@1.2.0``, ``latest`` or ``churn@latest``.

        Without a model name (``latest``, ``1.2.0``), ``latest`` is the version registered
        last, of whichever model: the one just trained; a bare version must belong to one
        model only."""
        if "@" in reference:
            name, reference = reference.split("@", 1)
        versions = self.versions(name)
        if name is None and len({v.name for v in versions}) == 1:
            name = versions[0].name  # one model: a bare reference is unambiguous
        if not versions:
            which = f"model {name!r}" if name else "any model"
            raise RegistryError(
                f"no versions of {which} in {self.url}: train one with 'edgefleet train'"
            )
        if reference == "latest":
            if name is None:
                return max(versions, key=lambda v: v.created)
            return versions[-1]
        found = [v for v in versions if v.version == reference]
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(f"{v.name}@{reference}" for v in found)
            raise RegistryError(f"several models have version {reference}: name one ({names})")
        if name is not None:
            known = ", ".join(v.version for v in versions)
            raise RegistryError(f"model {name!r} has no version {reference!r} (it has: {known})")
        known = ", ".join(f"{v.name}@{v.version}" for v in versions)
        raise RegistryError(f"no model has version {reference!r} (known: {known})")

    def next_version(self, name: str) -> str:
        versions = self.versions(name)
        if not versions:
            return "1.0.0"
        major, minor, _ = parse_version(versions[-1].version)
        return f"{major}.{minor + 1}.0"

    def _new_version(self, name: str, asked: str | None) -> str:
        if asked is None:
            return self.next_version(name)
        parse_version(asked)
        if any(v.version == asked for v in self.versions(name)):
            raise RegistryError(
                f"model {name!r} already has version {asked}; choose another --version"
            )
        return asked

    def register(
        self,
        model: TrainedModel,
        *,
        name: str = DEFAULT_NAME,
        data_sha256: str,
        version: str | None = None,
    ) -> ModelVersion:
        if not name or "@" in name or "/" in name:
            raise InputError(f"model name {name!r} must be non-empty without '@' or '/'")
        version = self._new_version(name, version)
        relative = Path("models") / name / version
        final = self.home / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=final.parent))
        try:
            joblib.dump(model.pipeline, staging / "pipeline.joblib")
            np.savez_compressed(
                staging / "holdout.npz", inputs=model.holdout_inputs, labels=model.holdout_labels
            )
            card = {
                "schema": model.schema.to_dict(),
                "reference": model.reference.to_dict(),
                "golden": [g.to_dict() for g in model.golden],
            }
            (staging / "card.json").write_text(json.dumps(card, allow_nan=False))
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        row = ModelVersionRow(
            name=name,
            version=version,
            family=model.family,
            created=datetime.now(UTC),
            target=model.schema.target,
            data_sha256=data_sha256,
            train_rows=model.train_rows,
            params=dict(model.params),
            metrics=dict(model.metrics),
            path=str(relative),
        )
        with self._session() as session:
            session.add(row)
            session.flush()
            registered = _version(row, self.home)
        return registered
