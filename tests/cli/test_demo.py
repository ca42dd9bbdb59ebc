"""The README's first command, `edgefleet demo`, closes the loop (smaller, same code)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_closes_the_loop(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli.main",
            "demo",
            "--workdir",
            str(tmp_path / "run"),
            "--rows",
            "6000",
            "--devices",
            "12",
            "--drift-share",
            "0.5",
            "--drift-at",
            "6",
            "--window",
            "4",
            "--timeout",
            "150",
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stderr.split("\nsummary\n", 1)[1]
    assert "loop                   promoted" in summary
    assert "first alert            t=" in summary
    # The alert is shown whole (wrapped), never cut mid-word: a drift alert ends "n COUNT".
    block = summary.split("first alert", 1)[1].split("canary published", 1)[0]
    alert = " ".join(block.split())
    if "drift" in alert:
        assert re.search(r"PSI [0-9.]+ \(>= [0-9.]+\?\), n \d+$", alert), alert
    assert "every device updated   t=" in summary
    for fmt in ("onnx", "tflite", "web", "coreml"):
        assert f"export {fmt}" in summary
    assert "dashboard: http://127.0.0.1:8050/fleets/demo/" in summary
