"""The models area: registry versions of a fleet's models and their bundles."""

from __future__ import annotations

from typing import Any

from edgefleet.edge.manifest import parse_version
from edgefleet.web.documents.catalog import Catalog
from edgefleet.web.documents.common import cleaned


class ModelsArea(Catalog):
    """Models documents."""

    def models(self, fleet: str) -> dict[str, Any]:
        """Registry versions of the models this fleet runs or reported on (every version if
        it knows none), newest first, with their role in the fleet and their bundle."""
        rollout = self.rollout(fleet)
        state = rollout["state"] or {}
        roles: dict[tuple[str, str], str] = {}
        for ref in rollout["published"]:
            roles[(ref["name"], ref["version"])] = "published"
        for role in ("stable", "canary"):
            ref = state.get(role)
            if ref:
                roles[(ref["name"], ref["version"])] = role
        names = {name for name, _ in roles} | {n for n, _, _ in self.store.model_versions(fleet)}
        versions = [v for v in self.registry_versions() if not names or v.name in names]
        documents = []
        for version in sorted(
            versions, key=lambda v: (v.name, parse_version(v.version)), reverse=True
        ):
            documents.append(
                {
                    "name": version.name,
                    "version": version.version,
                    "label": version.label,
                    "family": version.family,
                    "created": version.created.timestamp(),
                    "target": version.target,
                    "train_rows": version.train_rows,
                    "data_sha256": version.data_sha256,
                    "metrics": dict(version.metrics),
                    "params": dict(version.params),
                    "role": roles.get((version.name, version.version)),
                    "bundle": self.bundle(version.name, version.version),
                }
            )
        return cleaned({"fleet": fleet, "models": documents})
