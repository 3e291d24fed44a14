"""The network bench's measuring subscriber: a WHEP client that records every RTP packet.

::

    python -m bench.netprobe --base URL --room ROOM --token TOKEN --listen IP --network CIDR
        --sources stethoscope,dermatoscope,otoscope --seconds S --out FILE [--wait S]

Run by :mod:`bench.network` inside the lab's server namespace (next to the server, on an
unshaped path), so that what it sees is what crossed the cabin's uplink and the SFU.

It offers one ``recvonly`` m-line per source's kind and posts again (after a DELETE) until
the answer carries every wanted source (``a=msid:<identity> <source>``), or ``--wait``
runs out: then it keeps what it has and ``publish_ok`` is false. It then prints
``ready <monotonic time>`` and records for ``--seconds``.

Its peer connection is a plain aiortc receiver (it sends receiver reports, NACKs and REMB
as aiortc does) with null decoders (no decoding CPU on a shared machine); each decrypted
RTP packet is recorded on the way in: arrival (``time.monotonic()``, one clock for every
namespace of the machine), sequence number, timestamp, marker, and from the payload the
VP8 frame start and keyframe flags, or the timestamp offsets of a RED packet's redundant
blocks. RTX packets (the leg's own retransmissions) are recorded as their original
sequence number; padding-only packets (probes) are recorded as such: they fill a sequence
number, not a frame. The output is JSON for :mod:`bench.netmetrics`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription
from aiortc import sdp as aiortc_sdp

from media import aiortc_internals
from media.ice import MediaNetwork, ScopedPeerConnection

AUDIO_SOURCES = ("microphone", "stethoscope")


@dataclass
class Track:
    """What the probe learnt of one forwarded track from the answer, and what it received."""

    source: str
    kind: str
    clock_rate: int
    codec: str
    media_pts: set[int]
    red_pt: int | None
    rtx_ssrc: int | None = None
    packets: list[list[Any]] = field(default_factory=list)
    """[arrival s, seq, ts, marker, frame start, keyframe, RED offsets or None, rtx, padding only]"""


def payload_offset(data: bytes) -> int:
    """Where an RTP packet's payload starts (after CSRCs and the header extension); -1 when
    the packet is too short for its header."""
    cc = data[0] & 0x0F
    offset = 12 + 4 * cc
    if data[0] & 0x10:
        if len(data) < offset + 4:
            return -1
        offset += 4 + 4 * int.from_bytes(data[offset + 2:offset + 4], "big")
    return offset if offset <= len(data) else -1


def vp8_flags(payload: bytes) -> tuple[bool, bool]:
    """(first packet of a frame, keyframe) from a VP8 payload descriptor (RFC 7741)."""
    if not payload:
        return False, False
    b0 = payload[0]
    start = bool(b0 & 0x10) and (b0 & 0x07) == 0
    i = 1
    if b0 & 0x80 and len(payload) > 1:
        x = payload[1]
        i = 2
        if x & 0x80:  # picture id, 7 or 15 bits
            i += 2 if len(payload) > i and payload[i] & 0x80 else 1
        if x & 0x40:
            i += 1
        if x & 0x30:
            i += 1
    key = start and len(payload) > i and not payload[i] & 0x01
    return start, key


def h264_flags(payload: bytes) -> tuple[bool, bool]:
    """(first packet of a frame: unknown here, so False; keyframe: an IDR slice or SPS)."""
    if not payload:
        return False, False
    nal = payload[0] & 0x1F
    if nal == 28 and len(payload) > 1:  # FU-A
        return False, bool(payload[1] & 0x80) and payload[1] & 0x1F == 5
    if nal == 24:  # STAP-A: look at the first aggregated unit
        return False, len(payload) > 3 and payload[3] & 0x1F in (5, 7)
    return False, nal in (5, 7)


def red_offsets(payload: bytes) -> list[int]:
    """Timestamp offsets of a RED payload's redundant blocks (RFC 2198); [] when malformed."""
    out: list[int] = []
    i = 0
    while i < len(payload) and payload[i] & 0x80:
        if i + 4 > len(payload):
            return []
        out.append(int.from_bytes(payload[i + 1:i + 3], "big") >> 2)
        i += 4
    return out


def learn(answer: str, wanted: tuple[str, ...]) -> dict[int, Track]:
    """SSRC -> track, for the answer's sections that send a wanted source."""
    tracks: dict[int, Track] = {}
    for media in aiortc_sdp.SessionDescription.parse(answer).media:
        if media.direction not in ("sendonly", "sendrecv"):
            continue
        source = (media.msid or "").split(" ")[-1]
        if source not in wanted:
            continue
        codecs = [c for c in media.rtp.codecs if not c.mimeType.lower().endswith("/rtx")]
        red = [c.payloadType for c in codecs if c.mimeType.lower().endswith("/red") and c.payloadType is not None]
        main = [c for c in codecs if not c.mimeType.lower().endswith("/red")] or codecs
        rtx = {int(s) for g in media.ssrc_group if g.semantic == "FID" for s in g.items[1:]}
        track = Track(source, media.kind, main[0].clockRate, main[0].mimeType.split("/")[-1].lower(),
                      {c.payloadType for c in codecs if c.payloadType is not None}, red[0] if red else None)
        for ssrc in media.ssrc:
            if ssrc.ssrc in rtx:
                track.rtx_ssrc = ssrc.ssrc
        for ssrc in media.ssrc:
            if ssrc.ssrc not in rtx:
                tracks[ssrc.ssrc] = track
        if track.rtx_ssrc is not None:
            tracks[track.rtx_ssrc] = track
    return tracks


class Probe:
    def __init__(self, network: MediaNetwork, wanted: tuple[str, ...]) -> None:
        self.network = network
        self.wanted = wanted
        self.tracks: dict[int, Track] = {}
        self.pc: ScopedPeerConnection | None = None
        self.location = ""
        self.recording = False
        self.first_media: dict[str, float] = {}
        """When each source's first RTP packet arrived (a video's: its first keyframe, which the
        SFU waits for before it forwards anything to a new subscription)."""

    async def subscribe(self, http: aiohttp.ClientSession, base: str, room: str, token: str) -> set[str]:
        """One WHEP offer; the sources its answer carries."""
        pc = self.pc = ScopedPeerConnection(self.network)
        for source in self.wanted:
            pc.addTransceiver("audio" if source in AUDIO_SOURCES else "video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(f"{base}/whep/{room}", data=pc.localDescription.sdp.encode(),
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
                             timeout=aiohttp.ClientTimeout(total=20)) as response:
            answer = await response.text()
            if response.status != 201:
                return set()
            self.location = response.headers.get("Location", "")
        self.tracks = learn(answer, self.wanted)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        for transport in {t.receiver.transport for t in pc.getTransceivers()}:
            aiortc_internals.watch_received_rtp(transport, self._on_rtp)
        return {t.source for t in self.tracks.values()}

    async def unsubscribe(self, http: aiohttp.ClientSession, base: str, token: str) -> None:
        if self.location:
            try:
                async with http.delete(base + self.location, headers={"Authorization": f"Bearer {token}"}):
                    pass
            except aiohttp.ClientError:
                pass
            self.location = ""
        if self.pc is not None:
            await self.pc.close()
            self.pc = None

    def _on_rtp(self, data: bytes) -> None:
        if len(data) < 12:
            return
        now = time.monotonic()
        ssrc = int.from_bytes(data[8:12], "big")
        track = self.tracks.get(ssrc)
        if track is None:
            return
        self.first_media.setdefault(track.source, now)
        if not self.recording:
            return
        at = payload_offset(data)
        if at < 0:
            return
        seq = int.from_bytes(data[2:4], "big")
        ts = int.from_bytes(data[4:8], "big")
        pt = data[1] & 0x7F
        marker = bool(data[1] & 0x80)
        payload = data[at:]
        if data[0] & 0x20 and payload:  # RTP padding: the last byte counts it
            payload = payload[:-payload[-1]] if payload[-1] <= len(payload) else b""
        rtx = ssrc == track.rtx_ssrc
        if rtx:
            if len(payload) < 2:
                return  # padding-only RTX (a probe): no media, no sequence number of the media stream
            seq = int.from_bytes(payload[:2], "big")
            payload = payload[2:]
        elif pt not in track.media_pts:
            return
        padding = not payload
        start = key = False
        offsets: list[int] | None = None
        if track.kind == "video" and payload:
            start, key = vp8_flags(payload) if track.codec == "vp8" else h264_flags(payload)
        elif pt == track.red_pt and not rtx:
            offsets = red_offsets(payload)
        track.packets.append([round(now, 6), seq, ts, marker, start, key, offsets, rtx, padding])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    network = MediaNetwork(listen_ip=args.listen, allowed_remote=(ipaddress.ip_network(args.network, strict=False),))
    wanted = tuple(args.sources.split(","))
    probe = Probe(network, wanted)
    started = time.monotonic()
    got: set[str] = set()
    async with aiohttp.ClientSession() as http:
        try:
            while True:
                try:
                    got = await probe.subscribe(http, args.base, args.room, args.token)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    got = set()
                if got == set(wanted) or time.monotonic() - started > args.wait:
                    break
                await probe.unsubscribe(http, args.base, args.token)
                await asyncio.sleep(0.5)
            publish_s = time.monotonic() - started
            ready = time.monotonic()
            probe.recording = True
            print(f"ready {ready:.6f}", flush=True)
            await asyncio.sleep(args.seconds)
            probe.recording = False
        finally:
            await probe.unsubscribe(http, args.base, args.token)
    tracks = {}
    for track in probe.tracks.values():
        tracks[track.source] = {"kind": track.kind, "clock_rate": track.clock_rate, "codec": track.codec,
                                "red_pt": track.red_pt, "packets": track.packets}
    return {"publish_ok": got == set(wanted), "publish_s": round(publish_s, 3), "sources": sorted(got),
            "first_media": dict(sorted(probe.first_media.items())), "window": [ready, ready + args.seconds],
            "tracks": tracks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netprobe", description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--listen", required=True, help="address its media binds")
    parser.add_argument("--network", required=True, help="remote candidates it accepts (CIDR)")
    parser.add_argument("--sources", default="stethoscope,dermatoscope,otoscope")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--wait", type=float, default=40.0, help="how long to wait for every source")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    aiortc_internals.use_null_decoders()
    result = asyncio.run(run(args))
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
