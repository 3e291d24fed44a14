"""The baseline: an SFU built on stock ``aiortc.contrib.media.MediaRelay``.

    python -m bench.relay_server [--port P]

It accepts the same calls as ours (``POST /whip/{room}``, ``POST /whep/{room}``,
``DELETE`` of the ``Location``; tokens are not checked) and does what aiortc
does out of the box: the publisher's receiver **decodes** every frame once, a
``MediaRelay`` hands the frames to each subscriber, and each subscriber's
sender **encodes** them again (VP8/H.264/Opus, at the publisher's codec).

Choices, all in the baseline's favour or neutral:

* each publication is drained from the start (a ``MediaBlackhole`` reads the
  relay) so that a late subscriber gets live frames, not a stale queue;
* ``subscribe(buffered=False)``: an encoder that cannot keep up skips to the
  newest frame (bounded latency; it shows as lower delivery instead);
* aiortc's VP8 encoder starts at 500 kbit/s and only goes up on REMB, which the
  counting subscribers do not send: its start bitrate is raised to the
  publisher's (``--video-bitrate``, 1.5 Mbit/s) so that both SFUs forward
  comparable streams.

Media on 127.0.0.1 only (``ScopedPeerConnection``). Stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
from typing import Any

import jwt
import uvloop
from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.contrib.media import MediaBlackhole, MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from bench.rtc import client_pc, prefer
from core.vocabulary import MediaKind, Source
from media import aiortc_internals


class RelayRooms:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.tracks: dict[str, list[tuple[MediaStreamTrack, str, str, str]]] = {}
        """room -> (remote track, mime type, source label, publisher identity) in publication order."""
        self.pcs: dict[str, Any] = {}
        self.sinks: list[MediaBlackhole] = []
        self._ids = itertools.count(1)

    async def whip(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        offer = await request.text()
        parsed = aiortc_sdp.SessionDescription.parse(offer)
        sources = request.query.getall("source", [])
        identity = _identity(request)
        pc = client_pc()
        pending: list[tuple[Any, str, str]] = []
        for index, media in enumerate(parsed.media):
            if media.kind not in ("audio", "video"):
                continue
            transceiver = pc.addTransceiver(media.kind, direction="recvonly")
            codecs = [c for c in media.rtp.codecs if not c.mimeType.lower().endswith("/rtx")]
            mime = codecs[0].mimeType if codecs else ""
            if mime:
                prefer(transceiver, mime)
            aiortc_internals.bind_transceiver(transceiver, media.rtp.muxId, index)
            label = next((s for s in sources if _kind(s) == media.kind), media.kind)
            pending.append((transceiver, mime, label))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            for transceiver, mime, label in pending:
                if transceiver.receiver.track is track:
                    self.tracks.setdefault(room, []).append((track, mime, label, identity))
                    sink = MediaBlackhole()
                    sink.addTrack(self.relay.subscribe(track, buffered=False))
                    self.sinks.append(sink)
                    asyncio.ensure_future(sink.start())

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return self._created(request, "whip", pc)

    async def whep(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        offer = await request.text()
        parsed = aiortc_sdp.SessionDescription.parse(offer)
        identity = _identity(request)
        available = {k: [t for t in self.tracks.get(room, []) if t[0].kind == k and t[3] != identity]
                     for k in ("audio", "video")}
        if not any(available.values()):
            return web.json_response({"error": "no_publications", "reason": "nothing to play"}, status=409)
        pc = client_pc()
        for index, media in enumerate(parsed.media):
            if media.kind not in available:
                continue
            queue = available[media.kind]
            if media.direction in ("recvonly", "sendrecv") and queue:
                track, mime, label, owner = queue.pop(0)
                proxy = self.relay.subscribe(track, buffered=False)
                aiortc_internals.set_track_id(proxy, label)  # the answer's msid names the source, as ours does
                transceiver = pc.addTransceiver(proxy, direction="sendonly")
                aiortc_internals.set_stream_id(transceiver.sender, owner)  # msid "<identity> <source>", as ours
                prefer(transceiver, mime)
            else:
                transceiver = pc.addTransceiver(media.kind, direction="inactive")
            aiortc_internals.bind_transceiver(transceiver, media.rtp.muxId, index)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return self._created(request, "whep", pc)

    def _created(self, request: web.Request, kind: str, pc: Any) -> web.Response:
        session = f"s{next(self._ids)}"
        self.pcs[session] = pc
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": f"/{kind}/{request.match_info['room']}/{session}"})

    async def delete(self, request: web.Request) -> web.Response:
        pc = self.pcs.pop(request.match_info["session"], None)
        if pc is not None:
            await pc.close()
        return web.Response(status=204)

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.stop()
        for pc in list(self.pcs.values()):
            await pc.close()


def _identity(request: web.Request) -> str:
    """The room token's identity, unverified (the baseline checks nothing; it only keeps a
    participant from playing its own tracks, as ours does)."""
    header = request.headers.get("Authorization", "")
    try:
        return str(jwt.decode(header.removeprefix("Bearer ").strip(), options={"verify_signature": False})
                   .get("sub", ""))
    except jwt.PyJWTError:
        return ""


def _kind(source: str) -> str:
    return "audio" if Source(source).kind is MediaKind.AUDIO else "video"


async def serve(port: int, video_bitrate: int) -> None:
    aiortc_internals.set_default_video_bitrate(video_bitrate)
    rooms = RelayRooms()
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/whip/{room}", rooms.whip)
    app.router.add_post("/whep/{room}", rooms.whep)
    app.router.add_delete("/whip/{room}/{session}", rooms.delete)
    app.router.add_delete("/whep/{room}/{session}", rooms.delete)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, bound = runner.addresses[0][:2]
    print(f"relay baseline serving on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await rooms.close()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--video-bitrate", type=int, default=1_500_000)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.video_bitrate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
