"""Helpers for the device agent tests: a real consultation over the socket, and a WHEP
viewer (aiortc, ScopedPeerConnection) with the room data channel."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Optional

import aiohttp
from aiortc import RTCConfiguration, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy

from media.ice import ScopedPeerConnection
from sfu.appkeys import SFU
from sfu.sdp import msids
from tests.signalling.client import SigClient
from tests.support import RunningServer

AGENT_SOURCES = ("stethoscope", "dermatoscope", "otoscope")
VISIT: dict[str, Any] = {"patient_ref": "P-1", "reason": "skin lesion", "specialty": "general", "priority": "routine",
                         "consent_teleconsultation": True, "consent_recording": False}


@dataclass
class Consultation:
    id: str
    nurse: SigClient
    physician: SigClient
    physician_room_token: str
    nurse_room_token: str
    physician_access: str

    async def end(self) -> None:
        await self.physician.request("consultation.end", consultation_id=self.id)

    async def close(self) -> None:
        for client in (self.nurse, self.physician):
            await client.close()


async def start_consultation(server: RunningServer, site: str = "cabin-demo", physician: str = "dr-demo",
                             nurse: str = "nurse-1") -> Consultation:
    """A nurse checks in at ``site``, ``physician`` accepts: an active consultation."""
    n = await SigClient.connect(server.ws_url, server.tokens.issue_access("nurse", nurse, site=site))
    access = server.tokens.issue_access("physician", physician)
    d = await SigClient.connect(server.ws_url, access)
    await d.request("presence.set", status="available")
    reply = await n.request("visit.request", **VISIT)
    cid = reply["consultation"]["id"]
    await d.event("offer.received", consultation__id=cid)
    accepted = await d.request("offer.accept", consultation_id=cid)
    started = await n.event("consultation.started", consultation__id=cid)
    return Consultation(cid, n, d, accepted["room_token"], started["room_token"], access)


@dataclass
class Viewer:
    """A WHEP session with the room channel: tracks by msid, messages in arrival order."""

    pc: ScopedPeerConnection
    location: str
    labels: dict[str, str]
    """mid -> a=msid ("agent stethoscope")."""
    tracks: dict[str, MediaStreamTrack] = field(default_factory=dict)
    """msid -> track."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Envelopes received on the room channel."""
    channel: Any = None
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def send(self, data: dict[str, Any]) -> None:
        self.channel.send(json.dumps(data))

    async def wait_message(self, predicate: Any, timeout: float = 15.0, what: str = "message") -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for envelope in self.messages:
                if predicate(envelope):
                    return envelope
            if loop.time() > deadline:
                kinds = [e.get("data", {}).get("type") for e in self.messages][-20:]
                raise AssertionError(f"timed out waiting for {what}; last messages: {kinds}")
            await asyncio.sleep(0.05)

    async def command(self, device: str, action: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        command_id = f"t{next(self._ids)}"
        self.send({"type": "command", "id": command_id, "device": device, "action": action, **fields})
        envelope = await self.wait_message(
            lambda e: e.get("data", {}).get("type") == "command_result" and e["data"].get("id") == command_id,
            timeout, f"command_result {command_id}")
        return dict(envelope["data"])

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.messages if isinstance(e.get("data"), dict) and e["data"].get("type") == kind]

    async def close(self) -> None:
        await self.pc.close()


async def view(http: aiohttp.ClientSession, server: RunningServer, room: str, token: str,
               kinds: tuple[str, ...] = ("audio", "video", "video")) -> Viewer:
    # max-bundle: with aiortc 1.16's default `balanced` policy, a second section of a kind
    # that is not the first section's kind (audio, video, video) stays on a stopped
    # transport and never receives (a client bug, docs/whip-whep.md, "Known client bug").
    pc = ScopedPeerConnection(configuration=RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    for kind in kinds:
        pc.addTransceiver(kind, direction="recvonly")
    channel = pc.createDataChannel("room")
    received: dict[str, MediaStreamTrack] = {}

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.receiver.track is track and transceiver.mid is not None:
                received[transceiver.mid] = track

    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(f"{server.url}/whep/{room}", data=pc.localDescription.sdp,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}) as r:
        answer = await r.text()
        assert r.status == 201, (r.status, answer)
        location = r.headers["Location"]
    labels = msids(answer)
    viewer = Viewer(pc, location, labels, channel=channel)

    @channel.on("message")
    def on_message(text: Any) -> None:
        try:
            viewer.messages.append(json.loads(text))
        except ValueError:
            pass

    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while channel.readyState != "open" or len(received) < len(labels):
        if loop.time() > deadline:
            raise AssertionError(f"viewer not ready: channel {channel.readyState}, tracks {len(received)}")
        await asyncio.sleep(0.05)
    viewer.tracks = {labels[mid]: track for mid, track in received.items() if mid in labels}
    return viewer


async def wait_publications(server: RunningServer, room: str, sources: tuple[str, ...],
                            timeout: float = 30.0) -> dict[str, Any]:
    """The room's publications by source once every one of ``sources`` is there."""

    sfu = server.app[SFU]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = {p.source: p for p in sfu.publications(room)}
        if all(s in found for s in sources):
            return found
        if loop.time() > deadline:
            raise AssertionError(f"publications {sorted(found)} after {timeout} s, wanted {sources}")
        await asyncio.sleep(0.1)


async def recv_frame(track: MediaStreamTrack, timeout: float = 15.0) -> Optional[Any]:
    return await asyncio.wait_for(track.recv(), timeout)
