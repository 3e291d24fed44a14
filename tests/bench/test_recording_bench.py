"""CI smoke run of bench.recording: a few seconds, the contract's keys."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_recording_bench_runs_briefly_and_writes_the_keys(tmp_path: Path) -> None:
    out = tmp_path / "recording.json"
    result = subprocess.run([sys.executable, "-m", "bench.recording", "--json", str(out), "--seconds", "3",
                             "--reps", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    for key in ("cpu_pct_per_recorded_mbps", "cpu_pct_per_recorded_mbps_encrypted"):
        assert isinstance(figures[key], float) and figures[key] >= 0
    assert figures["frames_recorded"] > 0 and figures["frames_forwarded"] >= figures["frames_recorded"] - 60
    # What the recorder saw: recorded, or before a track's first keyframe (or lost to a packet loss).
    assert figures["frames_recorded"] + figures["frames_before_keyframe"] <= figures["frames_seen"]
    assert figures["frames_seen"] <= figures["frames_forwarded"]
    assert 1.0 < figures["recorded_mbps"] < 2.5
    assert "target <= 0.3" in result.stdout
