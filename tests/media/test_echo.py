"""The harness smoke test: real WebRTC peers (aiortc, Chromium) reach the server on loopback."""

import asyncio

import aiohttp
from aiortc import RTCSessionDescription, VideoStreamTrack

from media.ice import ScopedPeerConnection
from tests.support import RunningServer, wait_for


async def post_offer(server: RunningServer, token: str, sdp: str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/api/echo", data=sdp, headers={
                "Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}) as r:
            assert r.status == 201, await r.text()
            return await r.text(), r.headers["Location"]


async def echo_state(server: RunningServer, location: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + location) as r:
            result: dict[str, object] = await r.json()
            return result


async def test_aiortc_peer_connects(server: RunningServer) -> None:
    token = server.tokens.issue_access("nurse", "n-1", site="cabin-demo")
    pc = ScopedPeerConnection()
    channel = pc.createDataChannel("check")
    pc.addTrack(VideoStreamTrack())
    replies: asyncio.Queue[str] = asyncio.Queue()
    channel.on("message", replies.put_nowait)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        answer, location = await post_offer(server, token, pc.localDescription.sdp)
        assert "a=candidate:" in answer and " 127.0.0.1 " in answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await wait_for(lambda: channel.readyState == "open", what="data channel open")
        channel.send("ping-42")
        assert await asyncio.wait_for(replies.get(), 5) == "pong-42"
        state = await wait_for(lambda: _frames(server, location), what="video frames at the server")
        assert state["connection"] == "connected"
    finally:
        await pc.close()


async def _frames(server: RunningServer, location: str) -> dict[str, object] | None:
    state = await echo_state(server, location)
    frames = state["frames"]
    assert isinstance(frames, dict)
    return state if frames.get("video", 0) > 5 else None


async def test_bad_offer_is_400_and_server_goes_on(server: RunningServer) -> None:
    token = server.tokens.issue_access("nurse", "n-1", site="cabin-demo")
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/api/echo", data="v=0\r\nnonsense", headers={
                "Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}) as r:
            assert r.status == 400
            assert await r.json() == {"error": "bad_request", "reason": "SDP has no media section"}
        async with http.post(server.url + "/api/echo", data="x", headers={
                "Content-Type": "application/sdp"}) as r:
            assert r.status == 401
        async with http.get(server.url + "/healthz") as r:
            assert r.status == 200


CHROMIUM_CHECK = """
async ({token}) => {
  const pc = new RTCPeerConnection();
  const dc = pc.createDataChannel("check");
  const stream = await navigator.mediaDevices.getUserMedia({audio: true, video: true});
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
  });
  const response = await fetch("/api/echo", {method: "POST", body: pc.localDescription.sdp,
    headers: {"Content-Type": "application/sdp", "Authorization": "Bearer " + token}});
  if (response.status !== 201) throw new Error("echo: " + response.status + " " + await response.text());
  await pc.setRemoteDescription({type: "answer", sdp: await response.text()});
  await new Promise((resolve, reject) => {
    if (dc.readyState === "open") return resolve();
    dc.onopen = resolve;
    setTimeout(() => reject(new Error("data channel not open: " + pc.connectionState)), 15000);
  });
  const pong = await new Promise((resolve) => { dc.onmessage = (e) => resolve(e.data); dc.send("ping-7"); });
  window.__pc = pc;
  return {pong, location: response.headers.get("Location"), state: pc.connectionState};
}
"""


async def test_chromium_page_connects(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    token = server.tokens.issue_access("physician", "dr-1", specialties=["general"])
    page = await chromium.new_page()
    await page.goto(server.url + "/healthz")
    result = await page.evaluate(CHROMIUM_CHECK, {"token": token})
    assert result["pong"] == "pong-7"
    state = await wait_for(lambda: _frames(server, result["location"]), timeout=15, what="Chromium video frames")
    assert state["connection"] == "connected"
    await page.close()
