"""`teleconsult demo` as a real process: links that sign in, the cabin's agent connected, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support import ROOT, stop_process


def test_demo_prints_links_connects_the_cabin_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "TELECONSULT_SERVER__DATA_DIR": str(tmp_path / "data")}
    process = subprocess.Popen([sys.executable, "-m", "teleconsult", "demo", "--port", "0", "--media-address",
                                "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=ROOT)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("device agent connected" in line for line in lines):
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            lines.append(line)
        text = "".join(lines)
        assert "device agent connected (site cabin-demo)" in text, text[-2000:]
        links = dict(re.findall(r"^\s+(nurse|physician) \([\w-]+\):\s+(\S+)$", text, re.MULTILINE))
        assert set(links) == {"nurse", "physician"}, text[-2000:]
        base = re.search(r"^teleconsult demo on (\S+)$", text, re.MULTILINE)
        assert base is not None
        expected = {"nurse": ("nurse", "cabin-demo"), "physician": ("physician", None)}
        for who, link in links.items():
            assert link.startswith(f"{base.group(1)}/{who}#token=")
            token = link.split("#token=", 1)[1]
            request = urllib.request.Request(base.group(1) + "/api/whoami",
                                             headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=10) as r:
                me = json.loads(r.read())
            assert (me["role"], me["site"]) == expected[who]
            if who == "physician":
                assert me["sub"] == "dr-demo" and "cardiology" in me["specialties"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        stop_process(process)  # type: ignore[arg-type]
