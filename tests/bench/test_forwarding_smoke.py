"""A tiny run of bench.forwarding (server, publisher and subscribers in their own processes,
our SFU and the MediaRelay baseline): the JSON contract holds and every track is delivered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.forwarding import marginal_cpu_pct_per_mbps

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(150)

RUN_KEYS = ("mode", "subscribers", "cpu_pct_per_mbps", "delivery", "latency_ms_p50", "latency_ms_p95",
            "first_frame_ms_p95")


def test_forwarding_smoke(tmp_path: Path) -> None:
    out = tmp_path / "forwarding.json"
    run = subprocess.run([sys.executable, "-m", "bench.forwarding", "--subscribers", "2", "--seconds", "2",
                          "--warmup", "0.5", "--codec", "h264", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) >= {"runs", "ratio_baseline_over_sfu", "machine", "cpu_pct_per_mbps_marginal"}
    assert result["machine"]["cores"] >= 1 and result["machine"]["aiortc"]
    modes = {(r["mode"], r["subscribers"]) for r in result["runs"]}
    assert modes == {("sfu", 2), ("baseline", 2)}
    for r in result["runs"]:
        for key in RUN_KEYS:
            assert key in r, key
        assert r["cpu_pct_per_mbps"] is not None and r["cpu_pct_per_mbps"] > 0
        assert r["first_frame_ms_p95"] is not None
    ours = next(r for r in result["runs"] if r["mode"] == "sfu")
    # every track of every subscriber delivered (loopback; a loaded CI box may drop a frame or two)
    assert ours["delivery"] >= 0.97, ours
    assert ours["latency_ms_p50"] is not None and ours["forwarded_mbps"] > 1.0
    assert "2" in result["ratio_baseline_over_sfu"]
    assert "target" in run.stdout


def test_the_marginal_cost_is_the_slope_over_the_steps() -> None:
    runs = [{"forwarded_mbps": 1.6, "server_cpu_pct": 3.0}, {"forwarded_mbps": 6.4, "server_cpu_pct": 4.2},
            {"forwarded_mbps": 12.8, "server_cpu_pct": 5.8}]
    assert marginal_cpu_pct_per_mbps(runs) == pytest.approx(0.25, abs=0.001)
    assert marginal_cpu_pct_per_mbps(runs[:1]) is None
    assert marginal_cpu_pct_per_mbps([runs[0], dict(runs[0])]) is None
