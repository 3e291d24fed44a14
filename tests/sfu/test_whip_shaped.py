"""WHIP over a shaped link (issue 13): a real ~2 KB offer spans several TCP segments when the
cabin's uplink is shaped, and the server must read the whole body before parsing it.

The server (``teleconsult serve``) runs in the lab's server namespace; the client POSTs
from the cabin namespace, behind ``tc tbf`` at 1.5 Mbit/s (bench/netlab.py). On loopback
a body always arrives whole, so only this test shows a partial read."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.netlab import NetLab, Phase, Profile
from bench.rtc import KEY, ServerProcess
from config.settings import AuthSettings
from core.auth import TokenService
from media.ice import ScopedPeerConnection

pytestmark = pytest.mark.timeout(180)

ROOM = "shaped-whip"
POSTS = 20

CLIENT = """
import asyncio, json, sys
import aiohttp

async def main(base, room, token, offer_file):
    offer = open(offer_file).read()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
    results = []
    async with aiohttp.ClientSession() as http:
        for _ in range(%(posts)d):
            async with http.post(f"{base}/whip/{room}", data=offer.encode(), headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=30)) as r:
                body = await r.text()
                results.append([r.status, body[:200] if r.status != 201 else ""])
                location = r.headers.get("Location", "")
            if location:
                async with http.delete(base + location, headers={"Authorization": f"Bearer {token}"}):
                    pass
    print(json.dumps(results))

asyncio.run(main(*sys.argv[1:]))
""" % {"posts": POSTS}


async def _offer() -> str:
    pc = ScopedPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_twenty_whip_offers_over_a_shaped_uplink_are_all_accepted(tmp_path: Path) -> None:
    offer = await _offer()
    assert 1500 <= len(offer.encode()) <= 8000, len(offer)
    (tmp_path / "offer.sdp").write_text(offer)
    token = TokenService(AuthSettings(signing_key=KEY), tempfile.gettempdir()).issue_room(
        ROOM, "cabin", role="nurse", publish=["camera", "microphone"])
    with NetLab(Profile("whip-1.5M", (Phase(1500),))) as lab:
        ip = lab.names.server_ip
        server = ServerProcess(lab.server([sys.executable, "-m", "teleconsult", "serve", "--host", ip, "--port", "0",
                                           "--media-address", ip]),
                               env={"TELECONSULT_SFU__STANDALONE_ROOMS": "true"}, name="shaped-whip")
        server.start()
        try:
            run = subprocess.run(lab.cabin([sys.executable, "-c", CLIENT, server.url, ROOM, token,
                                            str(tmp_path / "offer.sdp")]),
                                 capture_output=True, text=True, timeout=150, cwd=Path(__file__).parents[2])
        finally:
            server.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    refused = [r for r in results if r[0] != 201]
    assert len(results) == POSTS and not refused, refused[:3]
