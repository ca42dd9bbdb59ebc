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
            # 12 devices: at 20 % the canary holds none in 7 % of rollouts (0.8 ** 12).
            "--canary",
            "50",
            "--min-labels",
            "300",
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
    # Concept drift (the default scenario): a candidate better with confidence, and the
    # AUROC of both models measured on the drifted devices' labels.
    assert "AUROC, drifted devices 0." in summary
    assert "better with confidence" in result.stderr
    # Segments: the summary's fairness line, from the devices' version 2 reports.
    assert re.search(r"fairness \(segments\) +senior_citizen DP 0\.\d+ EO 0\.\d+", summary)
    for fmt in ("onnx", "tflite", "web", "coreml"):
        assert f"export {fmt}" in summary
    assert "dashboard: http://127.0.0.1:8050/fleets/demo/" in summary
