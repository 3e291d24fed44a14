"""A tiny run of bench.signalling (own server in a subprocess): the JSON contract holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "bench.signalling", "--clients", "20", "--requests", "20",
                          "--seconds", "0.5", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in ("requests", "matched", "double_assigned", "decision_latency_ms_p99", "decision_latency_ms_p50",
                "messages_per_second", "idle_clients_held", "cpu_us_per_message"):
        assert key in result
    assert result["matched"] == result["requests"] == 20
    assert result["double_assigned"] == 0 and result["idle_clients_held"] == 20


def test_bench_smoke_several_processes(tmp_path: Path) -> None:
    """Two processes on one redis-server, physicians coming online over a ramp and keeping their
    consultations a while: the keys of that mode are there too."""
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "bench.signalling", "--store", "redis", "--processes", "2",
                          "--clients", "10", "--requests", "30", "--physicians", "6", "--ramp-s", "0.5",
                          "--hold-s", "0.05", "--seconds", "0.5", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and result["ramp_s"] == 0.5 and result["hold_s"] == 0.05
    assert result["matched"] == result["requests"] == 30 and result["double_assigned"] == 0
    assert result["decisions_per_second"] > 0
