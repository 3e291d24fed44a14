"""Graceful drain of `teleconsult serve` (a real process) with live media: the first SIGTERM
stops new work and lets the live publication flow until its publisher leaves, then the process
exits 0 by itself; a second SIGTERM stops it at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from core.auth import TokenService
from tests.sfu.clients import FlatVideoTrack, Session, play, post_offer, publish, record_received
from tests.support import ROOT, free_port, loopback_settings, stop_process, wait_for

pytestmark = pytest.mark.timeout(90)


def serve(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str, TokenService]:
    """Start `teleconsult serve` on loopback; its output goes to a file (a pipe nobody reads
    would fill up and block it)."""
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    # Default settings on both sides (the tokens this test signs must verify there).
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELECONSULT_")}
    env["TELECONSULT_SERVER__DATA_DIR"] = str(data)
    env["TELECONSULT_SFU__STANDALONE_ROOMS"] = "true"  # rooms of hand-made tokens, no consultation
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "teleconsult", "serve", "--port", str(free_port()),
                                    "--media-address", "127.0.0.1"], stdout=out, stderr=subprocess.STDOUT,
                                   env=env, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("teleconsult serving on "):
                tokens = TokenService(loopback_settings(data).auth, str(data))
                return process, line.split()[-1], tokens
        if process.poll() is not None:
            break
        time.sleep(0.05)
    stop_process(process)
    raise AssertionError(f"server did not start: {log.read_text(errors='replace')[-2000:]}")


async def exit_code(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return await asyncio.to_thread(process.wait, timeout)
    except subprocess.TimeoutExpired:
        return None


async def status_of(http: aiohttp.ClientSession, method: str, url: str, **kwargs: object) -> int:
    async with http.request(method, url, **kwargs) as response:  # type: ignore[arg-type]
        await response.read()
        return response.status


async def live_call(http: aiohttp.ClientSession, base: str, tokens: TokenService) -> tuple[Session, Session, list]:
    pub = await publish(http, base, "ward", tokens.issue_room("ward", "cabin", role="nurse", publish=["camera"]),
                        [FlatVideoTrack(160, 120)])
    sub = await play(http, base, "ward", tokens.issue_room("ward", "doc", role="physician", subscribe=True),
                     ["video"])
    received = record_received(sub.pc)
    await wait_for(lambda: len(received) > 20, timeout=15, what="media flowing before the drain")
    return pub, sub, received


async def test_drain_keeps_live_media_refuses_new_work_and_exits_when_it_ends(tmp_path):
    process, base, tokens = serve(tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            pub, sub, received = await live_call(http, base, tokens)
            try:
                process.send_signal(signal.SIGTERM)

                async def unready() -> bool:
                    return await status_of(http, "GET", base + "/readyz") == 503

                await wait_for(unready, what="/readyz 503")
                nurse = tokens.issue_room("ward", "cabin", role="nurse", publish=["camera"])
                other = tokens.issue_room("new-room", "cabin", role="nurse", publish=["camera"])
                doc = tokens.issue_room("ward", "doc", role="physician", subscribe=True)
                for url, token in ((base + "/whip/ward", nurse), (base + "/whip/new-room", other),
                                   (base + "/whep/ward", doc)):
                    response = await post_offer(http, url, token, pub.pc.localDescription.sdp)
                    body = await response.json()
                    assert (response.status, body["error"]) == (503, "draining"), url
                before = len(received)
                await wait_for(lambda: len(received) > before + 30, timeout=15,
                               what="the live publication still flowing while draining")
                assert process.poll() is None, "exited with a publication still live"
                headers = {"Authorization": f"Bearer {nurse}"}
                assert await status_of(http, "DELETE", base + pub.location, headers=headers) == 204
                assert await exit_code(process, 20) == 0, "did not exit by itself once the publisher left"
            finally:
                await sub.close()
                await pub.close()
    finally:
        stop_process(process)


async def test_a_second_sigterm_stops_at_once(tmp_path):
    process, base, tokens = serve(tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            pub, sub, _ = await live_call(http, base, tokens)
            try:
                process.send_signal(signal.SIGTERM)

                async def unready() -> bool:
                    return await status_of(http, "GET", base + "/readyz") == 503

                await wait_for(unready, what="/readyz 503")
                assert process.poll() is None
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                assert await exit_code(process, 15) == 0
                assert time.monotonic() - started < 8, "the second signal did not stop it at once"
            finally:
                await sub.close()
                await pub.close()
    finally:
        stop_process(process)
