import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_runs_briefly_and_writes_the_keys(tmp_path: Path) -> None:
    out = tmp_path / "devices.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.devices", "--json", str(out), "--seconds", "0.2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    for key in ("stethoscope_frame_budget_pct", "dermatoscope_1080p_ms_per_frame", "otoscope_720p_ms_per_frame"):
        assert isinstance(figures[key], float) and figures[key] > 0
        assert "target <=" in result.stdout
