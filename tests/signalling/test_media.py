"""Real media through the signalling socket: aiortc peers negotiate with ``media.offer``.

The nurse publishes camera and microphone, the physician subscribes with the
publication ids that ``room.event`` told it, frames arrive; the device agent
then publishes a stethoscope and the physician re-negotiates the same peer
connection to add it; the consultation ends and the SFU room closes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc import RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from av import VideoFrame

from sfu.appkeys import SFU
from tests.sfu.clients import FlatVideoTrack, client_pc
from tests.signalling.client import SigClient
from tests.signalling.conftest import sig_settings
from tests.signalling.test_flow import VISIT, agent, nurse, physician
from tests.support import RunningServer, start_server, wait_for


async def _offer(client: SigClient, pc: Any, cid: str, subscribe: dict[Any, str]) -> dict[str, Any]:
    """Create the peer connection's offer, send it as ``media.offer``, apply the answer.

    ``subscribe`` maps transceivers to publication ids (mids exist once the offer is made)."""
    await pc.setLocalDescription(await pc.createOffer())
    reply = await client.request("media.offer", timeout=20, consultation_id=cid, sdp=pc.localDescription.sdp,
                                 subscribe={t.mid: pub for t, pub in subscribe.items()})
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
    return reply


async def _publication(client: SigClient, source: str) -> dict[str, Any]:
    event = await client.event("room.event", event="publication.added", data__publication__source=source)
    return dict(event["data"]["publication"])


async def test_media_through_the_socket_renegotiation_and_room_close(tmp_path: Any) -> None:
    sig: RunningServer = await start_server(sig_settings(tmp_path, "memory", None))
    n = await nurse(sig)
    a = await agent(sig)
    d = await physician(sig)
    npc, apc, dpc = client_pc(), client_pc(), client_pc()
    try:
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        await n.event("consultation.started")
        sfu = sig.app[SFU]
        assert cid in sfu.rooms()

        # The nurse publishes camera + microphone on one peer connection.
        cam = npc.addTransceiver(FlatVideoTrack(), direction="sendonly")
        mic = npc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await npc.setLocalDescription(await npc.createOffer())
        reply = await n.request("media.offer", timeout=20, consultation_id=cid, sdp=npc.localDescription.sdp,
                                publish={cam.mid: "camera", mic.mid: "microphone"})
        await npc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        assert sorted(p["source"] for p in reply["publications"]) == ["camera", "microphone"]
        assert reply["identity"] == "nurse" and reply["room"] == cid

        # The physician learns the publication ids from room.event and subscribes.
        camera = await _publication(d, "camera")
        microphone = await _publication(d, "microphone")
        video = dpc.addTransceiver("video", direction="recvonly")
        audio = dpc.addTransceiver("audio", direction="recvonly")
        first = await _offer(d, dpc, cid, subscribe={video: camera["id"], audio: microphone["id"]})
        frame = await asyncio.wait_for(video.receiver.track.recv(), 15)
        assert isinstance(frame, VideoFrame)
        assert (frame.width, frame.height) == (320, 240)
        await asyncio.wait_for(audio.receiver.track.recv(), 15)

        # A new publication (the agent's stethoscope) -> the physician re-negotiates the same connection.
        steth = apc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await apc.setLocalDescription(await apc.createOffer())
        published = await a.request("media.offer", timeout=20, consultation_id=cid, sdp=apc.localDescription.sdp,
                                    publish={steth.mid: "stethoscope"})
        await apc.setRemoteDescription(RTCSessionDescription(sdp=published["sdp"], type="answer"))
        stethoscope = await _publication(d, "stethoscope")
        assert stethoscope["identity"] == "agent"
        extra = dpc.addTransceiver("audio", direction="recvonly")
        second = await _offer(d, dpc, cid, subscribe={extra: stethoscope["id"]})
        assert second["media_session"] == first["media_session"]
        await asyncio.wait_for(extra.receiver.track.recv(), 15)
        # The earlier subscription keeps flowing after the re-offer.
        await asyncio.wait_for(video.receiver.track.recv(), 10)

        # The agent may not subscribe (its grant says so), even over the socket.
        probe = client_pc()
        try:
            t = probe.addTransceiver("video", direction="recvonly")
            await probe.setLocalDescription(await probe.createOffer())
            await a.error("media.offer", "forbidden", consultation_id=cid, sdp=probe.localDescription.sdp,
                          subscribe={t.mid: camera["id"]})
        finally:
            await probe.close()

        await d.request("consultation.end", consultation_id=cid)
        await n.event("consultation.ended")
        await wait_for(lambda: cid not in sfu.rooms(), 10, what="the SFU room closed")
        await wait_for(lambda: dpc.connectionState in ("closed", "failed") or
                       video.receiver.track.readyState == "ended", 15, what="the physician's media stopped")
    finally:
        for pc in (npc, apc, dpc):
            await pc.close()
        for c in (n, a, d):
            await c.close()
        await sig.server.close()

