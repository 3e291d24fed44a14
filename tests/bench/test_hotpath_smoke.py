"""A tiny run of bench.hotpath (the SFU's per-packet path in process, real SRTP and loopback
sockets): the JSON contract holds and every packet reaches every subscriber."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("send_path", ["native", "python"])
def test_hotpath_smoke(tmp_path: Path, send_path: str) -> None:
    out = tmp_path / "hotpath.json"
    run = subprocess.run([sys.executable, "-m", "bench.hotpath", "--subscribers", "0,2", "--packets", "300",
                          "--repeats", "2", "--warmup", "1", "--send-path", send_path, "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) >= {"packets", "repeats", "steps", "marginal_us_per_subscriber", "datagrams_per_syscall"}
    assert result["send_path"] == send_path
    steps = {s["subscribers"]: s for s in result["steps"]}
    assert set(steps) == {0, 2}
    for n, step in steps.items():
        assert step["us_per_packet_p50"] > 0
        # every input packet (warmup included, whole bursts) went out to every subscriber, none dropped
        assert step["packets_in"] >= 300 * 3
        assert step["packets_out"] == n * step["packets_in"]
    # a frame's packets and the audio with them leave together (natively)
    assert steps[2]["datagrams_per_syscall"] > (3 if send_path == "native" else 0.99)
    assert steps[2]["received_bytes"] > 2 * 300 * 2 * 100
    assert steps[0]["received_bytes"] == 0


def test_hotpath_against_a_baseline_tree(tmp_path: Path) -> None:
    """--baseline-tree: the same bench on another checkout (here this one), alternately, and the
    speedup per subscriber count."""
    out = tmp_path / "ab.json"
    run = subprocess.run([sys.executable, "-m", "bench.hotpath", "--subscribers", "1,2", "--packets", "200",
                          "--repeats", "1", "--warmup", "1", "--baseline-tree", str(ROOT), "--rounds", "1",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["speedup"]) == {"1", "2"} and all(v > 0 for v in result["speedup"].values())
    assert result["baseline"]["tree"] == str(ROOT) and len(result["baseline"]["runs"]) == 1
    assert "x" in run.stdout and result["rounds"] == 1
    bad = subprocess.run([sys.executable, "-m", "bench.hotpath", "--baseline-tree", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "not a teleconsult checkout" in bad.stderr
