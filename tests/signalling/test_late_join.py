"""Late joiners, recording state and token renewal, over real sockets, a real SFU and real aiortc peers.

* A party that connects (or reloads) mid-call learns the room's publications from
  ``room.token.ok``, ``hello.ok`` state, ``room.publications`` and ``media.offer.ok``
  (``room_publications``), and can subscribe without any ``room.event``.
* ``recording.started`` / ``recording.stopped`` (real recording service) are kept in the
  consultation object, so a new socket's ``hello.ok`` says whether recording is on.
* ``auth.renew`` mints a fresh access token of the same principal, bounded by
  ``signalling.max_session_s`` from the first token of the chain.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiortc import RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from av import VideoFrame

from devices.agent import AgentConfig, DeviceAgent
from signalling.appkeys import SIGNALLING
from tests.sfu.clients import FlatVideoTrack, client_pc
from tests.signalling.client import SigClient
from tests.signalling.conftest import sig_settings
from tests.signalling.test_flow import VISIT, nurse, physician
from tests.support import RunningServer, start_server, wait_for

PUBLICATION_KEYS = {"id", "identity", "role", "source", "kind", "codec", "published_at", "replaces"}


async def _active(sig: RunningServer, *, record: bool = False) -> tuple[SigClient, SigClient, str]:
    n = await nurse(sig)
    d = await physician(sig)
    cid = (await n.request("visit.request", **{**VISIT, "consent_recording": record}))["consultation"]["id"]
    await d.event("offer.received", consultation__id=cid)
    await d.request("offer.accept", consultation_id=cid)
    started = await n.event("consultation.started")
    assert started["publications"] == []  # nothing published yet, but the field is there
    return n, d, cid


async def test_late_joiner_learns_publications_and_plays(tmp_path: Path) -> None:
    sig = await start_server(sig_settings(tmp_path, "memory", None))
    npc, dpc = client_pc(), client_pc()
    late: SigClient | None = None
    n = d = None
    try:
        n, d, cid = await _active(sig)
        cam = npc.addTransceiver(FlatVideoTrack(), direction="sendonly")
        mic = npc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await npc.setLocalDescription(await npc.createOffer())
        reply = await n.request("media.offer", timeout=20, consultation_id=cid, sdp=npc.localDescription.sdp,
                                publish={cam.mid: "camera", mic.mid: "microphone"})
        await npc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        assert sorted(p["source"] for p in reply["room_publications"]) == ["camera", "microphone"]

        # The physician "reloads": a new socket, no room.event ever seen on it.
        await d.close()
        d = None
        late = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("physician", "dr-demo"))
        room = late.hello["state"]["rooms"][cid]
        assert sorted(p["source"] for p in room["publications"]) == ["camera", "microphone"]
        assert all(set(p) == PUBLICATION_KEYS for p in room["publications"])
        token_reply = await late.request("room.token", consultation_id=cid)
        assert {p["id"] for p in token_reply["publications"]} == {p["id"] for p in room["publications"]}
        listed = await late.request("room.publications", consultation_id=cid)
        assert {p["id"] for p in listed["publications"]} == {p["id"] for p in room["publications"]}
        camera = next(p for p in listed["publications"] if p["source"] == "camera")
        assert camera["identity"] == "nurse" and camera["kind"] == "video"

        video = dpc.addTransceiver("video", direction="recvonly")
        await dpc.setLocalDescription(await dpc.createOffer())
        answer = await late.request("media.offer", timeout=20, consultation_id=cid, sdp=dpc.localDescription.sdp,
                                    subscribe={video.mid: camera["id"]})
        await dpc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        assert answer["publications"] == []  # it created none...
        assert len(answer["room_publications"]) == 2  # ...but sees the room's
        frame = await asyncio.wait_for(video.receiver.track.recv(), 15)
        assert isinstance(frame, VideoFrame)
        assert frame.width == 320

        # Someone without a seat learns nothing.
        other = await physician(sig, sub="dr-other", available=False)
        try:
            await other.error("room.publications", "not_found", consultation_id=cid)
        finally:
            await other.close()
    finally:
        for pc in (npc, dpc):
            await pc.close()
        for c in (n, d, late):
            if c is not None:
                await c.close()
        await sig.server.close()


async def _recording(sig: RunningServer, token: str, cid: str, action: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sig.url}/api/consultations/{cid}/recording", json={"action": action},
                             headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())


async def test_recording_state_is_kept_in_the_consultation(sig: RunningServer) -> None:
    n, d, cid = await _active(sig, record=True)
    late: list[SigClient] = []
    try:
        before = await n.request("consultation.get", consultation_id=cid)
        assert before["consultation"]["recording"]["active"] is False
        dr_token = sig.tokens.issue_access("physician", "dr-demo")
        await _recording(sig, dr_token, cid, "start")
        started = await n.event("recording.started", consultation_id=cid)
        assert started["by"] == "dr-demo" and isinstance(started["at"], float)
        assert set(started) == {"type", "consultation_id", "by", "at", "encrypted"}  # as registered

        # A page reloaded now: its hello says recording is on.
        fresh = await nurse(sig)
        late.append(fresh)
        mine = next(c for c in fresh.hello["state"]["consultations"] if c["id"] == cid)
        assert mine["recording"]["active"] is True and mine["recording"]["started_by"] == "dr-demo"

        await _recording(sig, dr_token, cid, "stop")
        stopped = await n.event("recording.stopped", consultation_id=cid)
        assert set(stopped) == {"type", "consultation_id", "by", "at", "stop_reason", "tracks"}
        again = await nurse(sig)
        late.append(again)
        mine = next(c for c in again.hello["state"]["consultations"] if c["id"] == cid)
        assert mine["recording"]["active"] is False and mine["recording"]["stop_reason"] == "stopped"
    finally:
        for c in [n, d, *late]:
            await c.close()


async def test_auth_renew_is_bounded_by_the_session_age(tmp_path: Path) -> None:
    sig = await start_server(sig_settings(tmp_path, "memory", None, max_session_s=600.0))
    clients: list[SigClient] = []
    try:
        first = sig.tokens.issue_access("nurse", "nurse-1", site="cabin-demo", ttl=120)
        n = await SigClient.connect(sig.ws_url, first)
        clients.append(n)
        renewed = await n.request("auth.renew")
        claims = jwt.decode(renewed["token"], options={"verify_signature": False})
        assert (claims["sub"], claims["role"], claims["site"]) == ("nurse-1", "nurse", "cabin-demo")
        origin = jwt.decode(first, options={"verify_signature": False})["iat"]
        assert renewed["session_expires_at"] == origin + 600
        assert renewed["token_expires_at"] <= origin + 600
        # The new token works on a new socket (a reload), and renews within the same bound.
        again = await SigClient.connect(sig.ws_url, renewed["token"])
        clients.append(again)
        second = await again.request("auth.renew")
        assert second["session_expires_at"] == origin + 600

        # A chain near its maximum age is refused: sign in again.
        old = sig.tokens.issue_access("nurse", "nurse-1", site="cabin-demo", ttl=120)
        service = sig.app[SIGNALLING]
        service.sig = dataclasses.replace(service.sig, max_session_s=30.0)  # less than RENEW_MIN_TTL_S left
        stale = await SigClient.connect(sig.ws_url, old)
        clients.append(stale)
        await stale.error("auth.renew", "forbidden")
    finally:
        for c in clients:
            await c.close()
        await sig.server.close()


async def test_device_agent_renews_its_site_token(tmp_path: Path) -> None:

    sig = await start_server(sig_settings(tmp_path, "memory", None))
    short = sig.tokens.issue_access("agent", "agent-cabin-demo", site="cabin-demo", ttl=8)
    agent = DeviceAgent(sig.settings, AgentConfig(server=sig.url, devices=("stethoscope",), simulate=True,
                                                  site_token=short))
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 10)
        # auth.expiring comes 0.8 s before expiry; the agent renews and keeps the new token.
        await wait_for(lambda: agent.config.site_token != short, 12, 0.1, what="the agent renewed its token")
        renewed = sig.tokens.verify_access_local(str(agent.config.site_token))
        assert (renewed.subject, renewed.site) == ("agent-cabin-demo", "cabin-demo")
        await asyncio.sleep(1.5)  # past the first token's expiry: the socket is still the same
        assert agent.connected.is_set() and agent.sockets_opened == 1
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)
        await sig.server.close()
