"""The stream tests run against the real Mosquitto of the fleet tests and both real
databases of the monitor tests (SQLite and a private PostgreSQL)."""

from __future__ import annotations

from tests.fleet.conftest import broker, counts_file, record_counts, unique  # noqa: F401
from tests.monitor.conftest import db_url, postgres_server  # noqa: F401
from tests.serving.conftest import service_bundles, task_bundles  # noqa: F401
