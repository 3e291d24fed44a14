"""One run of bench.failover (redis-server, serve --media-workers 2, the device agent, the nurse's
and the physician's pages in Chromium; the node hosting the room killed): the JSON contract
holds, the consultation is whole again on the other node, and its recording resumed there in a
second segment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def test_failover_smoke(tmp_path: Path) -> None:
    out = tmp_path / "failover.json"
    run = subprocess.run([sys.executable, "-m", "bench.failover", "--runs", "1", "--timeout", "60",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) >= {"runs", "resume_ms_p50", "resume_ms_p95", "recording_gap_ms_p95", "lost_consultations"}
    assert result["runs"] == 1 and result["lost_consultations"] == 0, result
    assert result["resume_ms_p95"] is not None and result["resume_ms_p95"] > 0
    # The recording moved with its room: a second segment, and the gap between them measured.
    assert isinstance(result["recording_gap_ms_p95"], (int, float)) and result["recording_gap_ms_p95"] > 0, result
    assert result["recording_segments"] == 2 and result["recording_not_resumed"] == 0, result
    assert "target" in run.stdout
