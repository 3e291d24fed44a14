"""A live call for the fuzz surfaces: a consultation with media flowing.

The nurse publishes camera and microphone (pre-encoded clips, :mod:`bench.clip`) over
WHIP and the physician plays them over WHEP, with the room tokens the signalling handed
out. :meth:`Call.received` counts what reached the player (media still flowing?);
:meth:`Call.learn` reads the server's media ports, payload types and SSRCs from the SDP.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp

from bench.clip import Clip, audio_clip, video_clip
from bench.fuzz_target import CheckFailed, Context, LiveConsultation, open_consultation
from bench.rtc import Player, Publisher, Source, publish
from media import aiortc_internals

JOIN_S = 15.0


def clips() -> dict[str, Clip]:
    """Small clips (encoded once, cached): the fuzz measures the server, not the media."""
    return {"camera": video_clip("vp8", 320, 240, 15, 300_000), "microphone": audio_clip(32_000, False)}


class Call:
    """A live consultation with media: the nurse's publisher and the physician's player."""

    def __init__(self, live: LiveConsultation, publisher: Publisher, player: Player, sources: list[Source]) -> None:
        self.live = live
        self.publisher = publisher
        self.player = player
        self.sources = sources
        self.ports: list[tuple[str, int]] = []
        self.pts: list[int] = []
        self.media_pts: list[int] = []
        """The payload types the publisher's tracks negotiated (the first of each answered section)."""
        self.ssrcs: list[int] = []

    def received(self) -> int:
        return sum(r.packets for r in self.player.streams.values())

    def transport(self, pc: Any) -> Any:
        return pc.getTransceivers()[0].sender.transport if pc.getTransceivers() else None

    def learn(self) -> None:
        """The server's media ports, the payload types and SSRCs of the call (from its SDP)."""
        for pc in (self.publisher.pc, self.player.pc):
            sdp = pc.remoteDescription.sdp if pc.remoteDescription else ""
            for m in re.finditer(r"a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", sdp):
                self.ports.append((m.group(1), int(m.group(2))))
            self.pts += [int(x) for x in re.findall(r"a=rtpmap:(\d+) ", sdp)]
            self.ssrcs += [int(x) for x in re.findall(r"a=ssrc:(\d+) ", sdp)]
        for t in self.publisher.pc.getTransceivers():
            self.ssrcs.append(aiortc_internals.sender_ssrc(t.sender))
        answer = self.publisher.pc.remoteDescription.sdp if self.publisher.pc.remoteDescription else ""
        self.media_pts = sorted({int(m) for m in re.findall(r"^m=\S+ \d+ \S+ (\d+)", answer, re.M)})
        self.ports = sorted(set(self.ports))
        self.pts = sorted(set(self.pts))
        self.ssrcs = sorted(set(self.ssrcs))

    async def close(self, http: aiohttp.ClientSession) -> None:
        for source in self.sources:
            source.stop()
        for closer in (self.player.close(http), self.publisher.close(http)):
            try:
                await asyncio.wait_for(closer, 10)
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
                pass
        await self.live.close()


async def open_call(ctx: Context, tag: str) -> Call:
    """A consultation (tag ``tag``) whose nurse publishes and whose physician plays; media
    reached the player (else CheckFailed)."""
    http, base = ctx.http, ctx.base
    live = await open_consultation(http, base, ctx.tokens, tag)
    media = clips()
    sources = [Source(f"{tag} {k}", clip) for k, clip in media.items()]
    try:
        publisher = await asyncio.wait_for(publish(http, base, live.room, live.room_tokens["nurse"], sources,
                                                   list(media)), JOIN_S)
        player = Player(f"fz-{tag}")
        await asyncio.wait_for(player.play(http, base, live.room, live.room_tokens["physician"],
                                           [("video", "video/vp8"), ("audio", "audio/opus")]), JOIN_S)
    except BaseException as exc:
        for source in sources:
            source.stop()
        await live.close()
        raise CheckFailed("call with media", f"{type(exc).__name__}: {exc}"[:300],
                          isinstance(exc, asyncio.TimeoutError)) from None
    call = Call(live, publisher, player, sources)
    deadline = time.monotonic() + JOIN_S
    while time.monotonic() < deadline and call.received() < 20:
        await asyncio.sleep(0.1)
    if call.received() < 20:
        await call.close(http)
        raise CheckFailed("call with media", f"no media reached the player within {JOIN_S:g} s")
    call.learn()
    return call
