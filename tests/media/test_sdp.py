"""SDP from outside is checked before aiortc sees it: what aiortc would choke on is a clear 400."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import aiohttp
import pytest
from aiortc import VideoStreamTrack

from media.ice import ScopedPeerConnection
from media.sdp import SdpError, parse_offer
from tests.support import RunningServer


async def offer() -> str:
    pc = ScopedPeerConnection()
    try:
        pc.createDataChannel("check")
        pc.addTrack(VideoStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


BAD_GROUPS = ["a=group:BUNDLE x 0 1", "a=group:BUNDLE 0 1 x", "a=group:BUNDLE 0 0 1"]


@pytest.mark.parametrize("group", BAD_GROUPS)
async def test_a_bundle_group_naming_no_section_is_refused(group: str) -> None:
    sdp = await offer()
    assert parse_offer(sdp).media
    with pytest.raises(SdpError, match="BUNDLE"):
        parse_offer(re.sub(r"a=group:BUNDLE[^\r\n]*", group, sdp))


async def test_the_network_check_answers_400_to_such_a_group(server: RunningServer, caplog: Any) -> None:
    """aiortc shares the transport of the group's first mid: naming no section, every section
    had none, and its connect task died unretrieved (bench.fuzz: ``'NoneType' object has no
    attribute 'transport'``, an ERROR with a traceback)."""
    caplog.set_level(logging.WARNING)
    token = server.tokens.issue_access("nurse", "n-1", site="cabin-demo")
    sdp = re.sub(r"a=group:BUNDLE[^\r\n]*", BAD_GROUPS[0], await offer())
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/api/echo", data=sdp, headers={
                "Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}) as r:
            body = await r.json()
            assert r.status == 400 and "BUNDLE" in body["reason"], body
    await asyncio.sleep(0.3)  # aiortc's connect task would have died by now
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
