"""A short run of bench.network (issue 13) over the 4g-weak and lossy profiles: real
namespaces, tbf and nftables, the real server, the device agent behind the shaped uplink and
the measuring subscriber (and, in 4g-weak, the nurse's Chromium camera). It asserts that the cabin publishes (``publish_ok``) and that the
harness works (every contract key, figures measured); the targets are the bench's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.network import KEYS

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def test_network_bench_4g_weak_and_lossy(tmp_path: Path) -> None:
    out = tmp_path / "network.json"
    run = subprocess.run([sys.executable, "-m", "bench.network", "--profile", "4g-weak,lossy", "--seconds", "8",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    profiles = {p["name"]: p for p in result["profiles"]}
    assert list(profiles) == ["4g-weak", "lossy"]
    for name, p in profiles.items():
        for key in KEYS:
            assert key in p, (name, key)
        assert p["publish_ok"] is True, p
        for key in ("steth_rtp_loss_pct", "steth_longest_gap_ms", "steth_delay_ms_p95", "delay_growth_ms",
                    "uplink_kbps", "retransmit_kbps"):
            assert p[key] is not None, (name, key)
        assert set(p["video_fps"]) == set(p["video_freeze_pct"]) == {"dermatoscope", "otoscope"}
        assert all(v is not None for v in p["video_fps"].values()), p["video_fps"]
        assert p["audio_only_after_s"] is None and p["video_back_after_s"] is None  # edge only
        assert p["uplink_kbps"] > 0
    assert profiles["4g-weak"]["link_kbps"] == 1000 and profiles["4g-weak"]["loss_pct"] == 3
    assert profiles["4g-weak"]["uplink_kbps"] <= 1100  # the shaping holds
    assert profiles["lossy"]["link_kbps"] is None and profiles["lossy"]["uplink_lost_packets"] > 0
    # The nurse's Chromium ran in the cabin namespace and published (its rate needs 10 s to settle).
    assert "nurse_error" not in profiles["4g-weak"], profiles["4g-weak"]["nurse_error"]
    assert profiles["4g-weak"]["nurse_kbps_series"], profiles["4g-weak"]
    assert profiles["4g-weak"]["steth_uplink_lag_ms_p95"] is not None
    assert {t["profile"] for t in result["targets"]} == {"4g-weak", "lossy"}
    assert "publish_ok" in run.stdout and "4g-weak" in run.stdout
