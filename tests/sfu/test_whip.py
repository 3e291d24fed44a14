"""WHIP/WHEP bodies: an offer is read whole, however many segments it arrives in."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp
from aiortc import RTCSessionDescription

from tests.sfu.clients import FlatVideoTrack, client_pc


async def _in_two_segments(body: bytes, pause_s: float = 0.2) -> AsyncIterator[bytes]:
    """The body as a slow uplink delivers it: half, a pause, the rest (on loopback an offer
    otherwise arrives in one read, which hid the half-parsed offers of a shaped link)."""
    yield body[: len(body) // 2]
    await asyncio.sleep(pause_s)
    yield body[len(body) // 2:]


async def test_an_offer_that_arrives_in_two_segments_is_read_whole(server):
    token = server.tokens.issue_room("split", "cabin", role="nurse", publish=["camera"], subscribe=False)
    pc = client_pc()
    try:
        pc.addTransceiver(FlatVideoTrack(160, 120), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp.encode()
        assert len(offer) > 1500, "a real offer spans more than one segment of a real link"
        async with aiohttp.ClientSession() as http:
            r = await http.post(f"{server.url}/whip/split?source=camera", data=_in_two_segments(offer),
                                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"})
            text = await r.text()
            assert r.status == 201, text
            await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
    finally:
        await pc.close()


async def test_an_offer_over_the_limit_is_413_even_when_it_is_chunked(server):
    token = server.tokens.issue_room("big", "cabin", role="nurse", publish=["camera"], subscribe=False)

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(100):  # 100 x 4 KiB: past the 64 KiB limit, bounded
            yield b"a=x-filler:" + b"z" * 4085 + b"\n"

    async with aiohttp.ClientSession() as http:
        r = await http.post(f"{server.url}/whip/big", data=endless(),
                            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"})
        assert r.status == 413 and (await r.json())["error"] == "too_large"
        assert (await http.get(f"{server.url}/healthz")).status == 200
