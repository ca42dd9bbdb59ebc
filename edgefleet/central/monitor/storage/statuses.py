"""Each device's latest retained status (one row per device, replaced)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict

from sqlalchemy import (
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.central.monitor.storage.base import StoreBase
from edgefleet.central.monitor.storage.schema import device_status
from edgefleet.edge.status import DeviceStatus
from edgefleet.errors import StoreError


class StatusStore(StoreBase):
    """Device statuses."""

    # -- device status -------------------------------------------------------------------

    def put_statuses(self, fleet: str, statuses: Sequence[DeviceStatus]) -> None:
        """Keep each device's latest status (one row per device, replaced)."""
        if not statuses:
            return
        now = time.time()
        rows = [{"fleet": fleet, "received": now, **asdict(s)} for s in statuses]
        statement = self._insert(device_status)
        columns = {c: statement.excluded[c] for c in rows[0] if c not in ("fleet", "device_id")}
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=["fleet", "device_id"], set_=columns
                    ),
                    rows,
                )
        except SQLAlchemyError as error:
            raise StoreError(f"cannot store device status in {self.display}: {error}") from None

    def statuses(self, fleet: str) -> dict[str, DeviceStatus]:
        """The latest status of every device of ``fleet`` that published one."""
        query = select(device_status).where(device_status.c.fleet == fleet)
        fields = DeviceStatus.__dataclass_fields__
        return {
            row.device_id: DeviceStatus(**{k: v for k, v in row._mapping.items() if k in fields})
            for row in self._rows(query)
        }
