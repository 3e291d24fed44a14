"""One run of bench.failover in each deployment, the node hosting the room killed: the JSON
contract holds, the consultation is whole again on the other node, and its recording resumed
there in a second segment. One host: redis-server, serve --media-workers 2, the device agent, the
nurse's and the physician's pages in Chromium. ``--hosts``: the same on namespace hosts
(signalling on A, media on B and C, Redis on D), the killed ``serve`` started again. The targets
are the bench's, not the test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.hostdeploy import PORT
from bench.hostlab import SUBNET

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def _one_run(tmp_path: Path, *options: str, timeout_s: float = 280) -> tuple[dict[str, Any], str]:
    out = tmp_path / "failover.json"
    run = subprocess.run([sys.executable, "-m", "bench.failover", *options, "--runs", "1", "--timeout", "60",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) >= {"runs", "resume_ms_p50", "resume_ms_p95", "recording_gap_ms_p95", "lost_consultations",
                           "deployment", "topology"}
    assert result["runs"] == 1 and result["lost_consultations"] == 0, result
    assert result["resume_ms_p95"] is not None and result["resume_ms_p95"] > 0
    # The recording moved with its room: a second segment, and the gap between them measured.
    assert isinstance(result["recording_gap_ms_p95"], (int, float)) and result["recording_gap_ms_p95"] > 0, result
    assert result["recording_segments"] == 2 and result["recording_not_resumed"] == 0, result
    assert "target" in run.stdout
    return result, run.stdout


def test_failover_smoke(tmp_path: Path) -> None:
    result, _ = _one_run(tmp_path)
    assert result["deployment"] == "one-host"


@pytest.mark.timeout(420)
def test_failover_smoke_on_hosts(tmp_path: Path) -> None:
    result, _ = _one_run(tmp_path, "--hosts", timeout_s=400)
    assert result["deployment"] == "hosts"
    # B, the only media node when the consultation began, was killed (C stood by).
    assert result["runs_detail"][0]["killed"] == f"http://{SUBNET}.2:{PORT}", result["runs_detail"]
