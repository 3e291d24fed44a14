"""A short run of bench.soak (what CI runs): whole consultations with six tracks and a
recording, repeated for half a minute; the JSON contract holds, each consultation was
recorded and ended, media arrived, and no room was left open."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def test_soak_smoke(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-m", "bench.soak", "--minutes", "0.5", "--consultations", "1",
                          "--hold", "5", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("rss_growth_pct", "fd_growth", "tasks_growth", "delivery", "rooms_left_open", "client_saturated"):
        assert key in result, key
    assert isinstance(result["client_saturated"], bool)
    for key in ("rss_growth_pct", "fd_growth", "tasks_growth", "delivery"):
        assert result[key] is not None, key
    assert result["cycles"] >= 1 and result["cycles_failed"] == 0, result["errors"]
    assert result["recordings_started"] == result["cycles"]
    assert result["ends_ok"] == result["cycles"]
    assert result["frames_sent"]["video"] > 0 and result["frames_sent"]["audio"] > 0
    assert result["delivery"] >= 0.95, result
    assert result["rooms_left_open"] == 0
    assert result["server_tracebacks"] == 0, result["server_traceback_kinds"]
    assert len(result["windows"]) == 3
    # fd and task growth are read between consultations, every slot idle: after the warm-up, then after the run
    quiet = result["quiet_points"]
    assert len(quiet) >= 2 and quiet[0]["complete"] and quiet[-1]["complete"] and quiet[-1]["after_end"], quiet
    assert all(q["rooms"] == 0 for q in quiet if q["complete"]), quiet
    assert "client_saturated" in run.stdout
