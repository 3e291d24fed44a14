"""The nurse's camera from Chromium follows the SFU's REMB (issue 13): Chromium publishes its fake
camera over WHIP with the nurse's grant; a subscriber whose estimate is low (sent as REMB by the
test) makes the SFU lower the REMB to Chromium, and Chromium's encoder target follows."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from aiortc import RTCSessionDescription

from media import aiortc_internals
from sfu.appkeys import SFU
from tests.sfu.clients import client_pc, post_offer, sending_ssrcs
from tests.support import wait_for

pytestmark = pytest.mark.timeout(120)

PUBLISH = """async ([url, token]) => {
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 480}});
  const pc = new RTCPeerConnection({bundlePolicy: "max-bundle"});
  pc.addTransceiver(stream.getVideoTracks()[0], {direction: "sendonly"});
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch(url, {method: "POST", body: pc.localDescription.sdp,
                              headers: {"Content-Type": "application/sdp", "Authorization": "Bearer " + token}});
  const answer = await r.text();
  if (r.status !== 201) throw new Error(r.status + " " + answer);
  await pc.setRemoteDescription({type: "answer", sdp: answer});
  window.publisher = pc;
  return answer;
}"""

TARGET = """async () => {
  const stats = await window.publisher.getStats();
  for (const s of stats.values()) {
    if (s.type === "outbound-rtp" && s.kind === "video") return s.targetBitrate || 0;
  }
  return 0;
}"""


async def test_the_chromium_camera_follows_the_remb_of_the_sfu(server, chromium):
    sfu = server.app[SFU]
    tokens = server.tokens
    context = await chromium.new_context(bypass_csp=True)
    viewer = client_pc()
    task: asyncio.Future[None] | None = None
    try:
        page = await context.new_page()
        await page.goto(server.url + "/healthz")
        answer = await page.evaluate(PUBLISH, [f"{server.url}/whip/nurse-cam", tokens.issue_room(
            "nurse-cam", "nurse", role="nurse", publish=["camera"])])
        assert "goog-remb" in answer and "abs-send-time" in answer and "transport-cc" not in answer
        await wait_for(lambda: sfu.publications("nurse-cam"), what="the camera's publication")
        (publication,) = sfu._rooms["nurse-cam"].publications.values()
        await wait_for(lambda: publication.feedback.remb_bps is not None, timeout=20,
                       what="a REMB to Chromium from the SFU's estimate")

        low = 60_000  # below what Chromium sends from the start, even on a loaded machine (136 kbit/s seen)

        async def chromium_target() -> int:
            return int(await page.evaluate(TARGET))

        before = await wait_for(chromium_target, timeout=10, what="Chromium's encoder target")
        assert before > 1.5 * low, before  # it starts at 300 kbit/s and ramps up on loopback

        # A viewer whose estimate is 60 kbit/s (its leg has no abs-send-time: no REMB of its own).
        transceiver = viewer.addTransceiver("video", direction="recvonly")
        await viewer.setLocalDescription(await viewer.createOffer())
        offer = re.sub(r"a=extmap:\d+ http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n", "",
                       viewer.localDescription.sdp)
        async with aiohttp.ClientSession() as http:
            response = await post_offer(http, f"{server.url}/whep/nurse-cam",
                                        tokens.issue_room("nurse-cam", "doc", role="physician", subscribe=True),
                                        offer)
            text = await response.text()
            assert response.status == 201, text
        await viewer.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
        ssrcs = list(sending_ssrcs(text).values())

        async def keep_sending_low_remb() -> None:
            while True:
                await aiortc_internals.send_remb(transceiver.receiver, low, ssrcs)
                await asyncio.sleep(0.3)

        task = asyncio.ensure_future(keep_sending_low_remb())
        await wait_for(lambda: (publication.feedback.remb_bps or low + 1) <= low, timeout=20,
                       what="the SFU's REMB to Chromium capped by the viewer's")

        async def chromium_follows() -> bool:
            return 0 < await chromium_target() <= low * 1.1

        await wait_for(chromium_follows, timeout=10, interval=0.5, what="Chromium's encoder target below the REMB")
    finally:
        if task is not None:
            task.cancel()
        await viewer.close()
        await context.close()
