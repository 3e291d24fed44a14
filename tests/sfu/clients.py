"""WHIP/WHEP clients for SFU tests: real aiortc peers on loopback (ScopedPeerConnection)."""

from __future__ import annotations

import asyncio
import fractions
from dataclasses import dataclass, field
from typing import Any, Sequence

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamTrack, VideoStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy

from media.aiortc_internals import watch_received_rtp, watch_sent_rtp
from media.ice import DatagramHook, ScopedPeerConnection
from sfu.rtp import RtpError, parse_header


def client_pc(hook: DatagramHook | None = None) -> ScopedPeerConnection:
    """A loopback client peer connection. MAX_BUNDLE: with aiortc's default (BALANCED) policy,
    a second section of a kind other than the first section's stays on a transport that BUNDLE
    then stops, and its packets go to the other track of its kind (aiortc 1.16 client bug,
    docs/whip-whep.md; tests/sfu/test_bundling.py)."""
    return ScopedPeerConnection(configuration=RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE),
                                datagram_hook=hook)


@dataclass
class Session:
    pc: ScopedPeerConnection
    location: str
    answer: str
    transceivers: list[Any] = field(default_factory=list)

    async def close(self) -> None:
        await self.pc.close()


async def post_offer(http: aiohttp.ClientSession, url: str, token: str, sdp: str) -> aiohttp.ClientResponse:
    return await http.post(url, data=sdp, headers={"Authorization": f"Bearer {token}",
                                                   "Content-Type": "application/sdp"})


def prefer(transceiver: Any, mime: str) -> None:
    caps = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    chosen = [c for c in caps if c.mimeType.lower() == mime.lower()][:1]
    rtx = [c for c in caps if c.mimeType.lower().endswith("/rtx")]
    transceiver.setCodecPreferences(chosen + (rtx[:1] if transceiver.kind == "video" else []))


async def publish(http: aiohttp.ClientSession, base: str, room: str, token: str, tracks: list[MediaStreamTrack],
                  *, sources: Sequence[str] = (), codecs: dict[str, str] | None = None,
                  hook: DatagramHook | None = None) -> Session:
    pc = client_pc(hook)
    transceivers = []
    for track in tracks:
        t = pc.addTransceiver(track, direction="sendonly")
        if codecs and track.kind in codecs:
            prefer(t, codecs[track.kind])
        transceivers.append(t)
    await pc.setLocalDescription(await pc.createOffer())
    query = "".join(f"&source={s}" for s in sources).lstrip("&")
    url = f"{base}/whip/{room}" + (f"?{query}" if query else "")
    response = await post_offer(http, url, token, pc.localDescription.sdp)
    text = await response.text()
    if response.status != 201:
        await pc.close()
        raise AssertionError(f"WHIP {response.status}: {text}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
    return Session(pc, response.headers["Location"], text, transceivers)


async def play(http: aiohttp.ClientSession, base: str, room: str, token: str, kinds: list[str],
               *, codecs: dict[str, str] | None = None, hook: DatagramHook | None = None) -> Session:
    pc = client_pc(hook)
    transceivers = []
    for kind in kinds:
        t = pc.addTransceiver(kind, direction="recvonly")
        if codecs and kind in codecs:
            prefer(t, codecs[kind])
        transceivers.append(t)
    await pc.setLocalDescription(await pc.createOffer())
    response = await post_offer(http, f"{base}/whep/{room}", token, pc.localDescription.sdp)
    text = await response.text()
    if response.status != 201:
        await pc.close()
        raise AssertionError(f"WHEP {response.status}: {text}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
    return Session(pc, response.headers["Location"], text, transceivers)


def sending_ssrcs(sdp: str) -> dict[str, int]:
    """mid -> the media SSRC a description declares for it (FID's first, else the first)."""
    out: dict[str, int] = {}
    for media in aiortc_sdp.SessionDescription.parse(sdp).media:
        fid = [g for g in media.ssrc_group if g.semantic == "FID"]
        if fid:
            out[media.rtp.muxId] = int(fid[0].items[0])
        elif media.ssrc:
            out[media.rtp.muxId] = media.ssrc[0].ssrc
    return out


@dataclass
class Recorded:
    ssrc: int
    payload_type: int
    sequence_number: int
    timestamp: int
    marker: bool
    payload: bytes
    at: float


def record_received(pc: RTCPeerConnection) -> list[Recorded]:
    """Record every decrypted RTP packet a client peer connection receives (aiortc still
    handles them afterwards)."""
    out: list[Recorded] = []
    loop = asyncio.get_running_loop()
    for transport in {t.receiver.transport for t in pc.getTransceivers()}:
        watch_received_rtp(transport, lambda data: _record(out, data, loop.time()))
    return out


def record_sent(pc: RTCPeerConnection) -> list[Recorded]:
    """Record every RTP packet (not RTCP) a client peer connection sends, before SRTP."""
    out: list[Recorded] = []
    loop = asyncio.get_running_loop()

    def record(data: bytes) -> None:
        if not (len(data) > 1 and 192 <= data[1] <= 223):
            _record(out, data, loop.time())

    for transport in {t.sender.transport for t in pc.getTransceivers()}:
        watch_sent_rtp(transport, record)
    return out


def _record(out: list[Recorded], data: bytes, at: float) -> None:
    try:
        h = parse_header(data)
    except RtpError:
        return
    out.append(Recorded(h.ssrc, h.payload_type, h.sequence_number, h.timestamp, h.marker,
                        data[h.payload_start:h.payload_end], at))


class FlatVideoTrack(VideoStreamTrack):
    """Small moving frames for aiortc's encoders (320x240)."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.width, self.height = width, height
        self.count = 0

    async def recv(self) -> Any:

        pts, time_base = await self.next_timestamp()
        image = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        image[:, :, 1] = (self.count * 7) % 255
        image[(self.count * 3) % self.height, :, :] = 255
        self.count += 1
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = pts
        frame.time_base = time_base
        return frame


def _fraction(n: int, d: int) -> fractions.Fraction:
    return fractions.Fraction(n, d)
