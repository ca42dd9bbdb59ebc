"""Overload is answered: a full queue gets 503 with Retry-After at once, a request not scored
in time gets 504; the service goes on serving. Real worker processes over HTTP."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from edgefleet.central.serving.batcher import BatchLimits
from edgefleet.central.serving.service import ScoringService
from tests.serving.conftest import golden_records, make_spec
from tests.serving.test_service import call


def _post(url: str, body: Any, answers: list[tuple[int, dict[str, Any], Any]]) -> None:
    answers.append(call(url, body))


def test_full_queue_is_503_and_late_is_504(
    service_bundles: list[Path], keypair: tuple[Path, Path]
) -> None:
    # One worker whose batcher holds an incomplete batch 9 s for more rows, with room
    # for 1000 rows waiting and a 4 s request timeout: of three requests of 600 rows sent
    # together, the first queued waits (and times out: 504), the others find 600 + 600
    # rows over the limit (503).
    batching = BatchLimits(max_batch=100_000, max_wait=9.0, max_queue_rows=1000, timeout=4.0)
    spec = make_spec(keypair, bundles=(str(service_bundles[0]),), batching=batching)
    service = ScoringService(spec, workers=1).start()
    url = f"{service.url}/v1/models/churn:predict"
    body = {"instances": golden_records(service_bundles[0], 1) * 600}
    seen: Counter[int] = Counter()
    deadline = time.monotonic() + 120
    try:
        while not (seen[503] and seen[504]):
            assert time.monotonic() < deadline, seen
            answers: list[tuple[int, dict[str, Any], Any]] = []
            threads = [threading.Thread(target=_post, args=(url, body, answers)) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            for status, answer, headers in answers:
                seen[status] += 1
                assert status in (503, 504), answer  # never scored, never a hang
                assert answer["status"] == status
                if status == 503:
                    assert headers["Retry-After"] == "1"
                    assert "rows are waiting" in answer["error"]
                else:
                    assert "request timeout" in answer["error"]
        assert call(f"{service.url}/v2/health/live")[0] == 200
    finally:
        service.stop()
