"""Overload is answered: a full queue gets 503 with Retry-After at once, a request not scored
in time gets 504; the service goes on serving. Real worker processes over HTTP."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from edgefleet.central.serving.batcher import BatchLimits
from edgefleet.central.serving.service import ScoringService
from tests.serving.conftest import golden_records, make_spec
from tests.serving.test_service import call


def test_full_queue_is_503_and_late_is_504(
    service_bundles: list[Path], keypair: tuple[Path, Path]
) -> None:
    # One worker whose batcher holds an incomplete batch 9 s for more rows, with room
    # for 1000 rows waiting and a 2 s request timeout: the first request of 600 rows waits
    # (and times out), the second finds 600 + 600 rows over the limit.
    batching = BatchLimits(max_batch=100_000, max_wait=9.0, max_queue_rows=1000, timeout=2.0)
    spec = make_spec(keypair, bundles=(str(service_bundles[0]),), batching=batching)
    service = ScoringService(spec, workers=1).start()
    try:
        body = {"instances": golden_records(service_bundles[0], 1) * 600}
        url = f"{service.url}/v1/models/churn:predict"
        answers: list[tuple[int, dict[str, Any], Any]] = []
        first = threading.Thread(target=lambda: answers.append(call(url, body)))
        first.start()
        status = 0
        while status != 503:  # until the first request is in the queue
            status, refused, headers = call(url, body)
            assert status in (503, 504), refused
        assert headers["Retry-After"] == "1"
        assert "rows are waiting" in refused["error"]
        assert refused["status"] == 503
        first.join(timeout=60)
        assert answers[0][0] == 504
        assert "timeout" in answers[0][1]["error"]
        assert call(f"{service.url}/v2/health/live")[0] == 200
    finally:
        service.stop()
