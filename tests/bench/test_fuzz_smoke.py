"""A short run of bench.fuzz on every surface (what CI runs): the JSON contract holds, every
surface ran, and the server neither crashed, nor answered 5xx, nor hung, nor logged a
traceback. A failure names the finding: its kind, where, the input and the traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("inputs", "crashes", "server_errors", "unhandled_exceptions", "hangs", "rss_growth_mb")

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("fuzz")
    out = tmp / "fuzz.json"
    run = subprocess.run([sys.executable, "-m", "bench.fuzz", "--surface", "all", "--count", "300", "--seconds", "60",
                          "--seed", "17", "--json", str(out), "--findings", str(tmp / "findings.md")],
                         cwd=ROOT, capture_output=True, text=True, timeout=580)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "clean (0 crashes" in run.stdout
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def failures(surface: dict[str, Any], *kinds: str) -> str:
    return "\n\n".join(f"{f['kind']} at {f['where']} (x{f['count']})\ninput: {f['input'][:500]}\n{f['detail'][:1500]}"
                       for f in surface["findings"] if f["kind"] in kinds)


def test_fuzz_json_contract_and_every_surface_ran(fuzz: dict[str, Any]) -> None:
    assert fuzz["seed"] == 17 and fuzz["count"] == 300
    assert set(fuzz["surfaces"]) == {"ws", "sdp", "udp", "rest"}
    for name, surface in fuzz["surfaces"].items():
        for key in KEYS:
            assert key in surface, (name, key)
        assert surface["inputs"] > 0, (name, failures(surface, "legit_failure", "fuzzer_error", "hang"))
        assert surface["rss_growth_mb"] is not None, name
    assert fuzz["surfaces"]["sdp"]["negotiated"] > 0
    assert fuzz["surfaces"]["udp"]["calls"] > 0


def test_fuzz_no_crash_no_5xx_no_hang(fuzz: dict[str, Any]) -> None:
    for name, surface in fuzz["surfaces"].items():
        assert surface["crashes"] == 0, failures(surface, "crash")
        assert surface["server_errors"] == 0, failures(surface, "server_error")
        assert surface["hangs"] == 0, failures(surface, "hang")


def test_fuzz_no_unhandled_exception(fuzz: dict[str, Any]) -> None:
    for name, surface in fuzz["surfaces"].items():
        assert surface["unhandled_exceptions"] == 0, failures(surface, "unhandled_exception")
