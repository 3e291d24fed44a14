"""A tiny run of bench.consultations: one consultation through the real signalling and SFU
(server and clients in their own processes); the JSON contract holds, every track arrives,
and the plot is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(150)


def test_consultations_smoke(tmp_path: Path) -> None:
    out = tmp_path / "consultations.json"
    png = tmp_path / "consultations.png"
    run = subprocess.run([sys.executable, "-m", "bench.consultations", "--ramp", "1", "--seconds", "2",
                          "--warmup", "0.5", "--json", str(out), "--plot", str(png)],
                         cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("steps", "consultations_per_core", "projected_consultations_per_core", "client_saturated",
                "machine"):
        assert key in result, key
    assert result["machine"]["cores"] >= 1
    (step,) = result["steps"]
    for key in ("consultations", "sfu_cpu_pct", "delivery", "latency_ms_p95", "join_ms_p95", "sfu_rss_mb"):
        assert step[key] is not None, key
    assert step["consultations"] == 1 and step["consultations_joined"] == 1, step
    assert not step["errors"], step["errors"]
    # all six tracks flowed: 3 video and 3 audio streams played by the two sides
    assert step["frames_sent"]["video"] > 0 and step["frames_sent"]["audio"] > 0
    assert step["delivery_video"] >= 0.97 and step["delivery_audio"] >= 0.97, step
    assert step["forwarded_mbps"] > 2.0
    assert png.stat().st_size > 1000
    assert "client_saturated" in run.stdout


def test_consultations_smoke_over_two_media_workers(tmp_path: Path) -> None:
    """``--media-workers 2``: the bench's own redis-server, two consultations on two workers (each
    WHIP/WHEP at its room's sfu_url), CPU of the whole server tree and of each worker."""
    out = tmp_path / "workers.json"
    run = subprocess.run([sys.executable, "-m", "bench.consultations", "--media-workers", "2", "--ramp", "2",
                          "--seconds", "2", "--warmup", "0.5", "--workers", "2", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["media_workers"] == 2
    for key in ("consultations_per_core", "host_consultations_per_core", "host_consultations_per_core_projected",
                "client_saturated"):
        assert key in result, key
    # The ramp stops short of the workers' limit here: the figure is a projection, and says so.
    assert result["host_consultations_per_core_projected"] is True and result["host_consultations_per_core"] > 0
    (step,) = result["steps"]
    assert step["consultations_joined"] == 2 and not step["errors"], step
    assert step["delivery_video"] >= 0.97 and step["delivery_audio"] >= 0.97, step
    workers = step["media_worker_cpu_pct"]
    assert len(workers) == 2 and all(w > 0 for w in workers), workers  # a room on each worker
    assert step["sfu_cpu_pct"] >= sum(workers) - 1.0  # the tree: signalling + workers
    assert step["forwarded_mbps_sfu_counter"] > 2.0  # the workers' counters, summed
    assert "per media worker cpu%" in run.stdout
