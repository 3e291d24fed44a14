"""The pre-call network check: a WebRTC peer on the SFU's media settings that echoes.

A page (or an agent) posts an SDP offer with a data channel, and optionally
camera and microphone tracks, to ``POST /api/echo`` with its access token. The
server answers from the same addresses the SFU uses, echoes every data channel
message (``ping`` → ``pong`` for a round-trip time) and counts the media
packets it receives without decoding them; ``GET /api/echo/{id}`` reports
them. This proves ICE, DTLS and media reach the SFU before a consultation
starts. Each check closes by itself after ``ECHO_LIFETIME_S``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import AsyncIterator

from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from core import appkeys
from core.auth import bearer_token
from media.ice import MediaNetwork, ScopedPeerConnection
from media.sdp import SdpError, parse_offer

logger = logging.getLogger(__name__)

ECHO_LIFETIME_S = 60.0
MAX_CHECKS = 50


@dataclass
class EchoCheck:
    id: str
    pc: ScopedPeerConnection
    frames: dict[str, int] = field(default_factory=dict)
    messages: int = 0


@dataclass
class EchoService:
    network: MediaNetwork
    checks: dict[str, EchoCheck] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def open(self, offer_sdp: str) -> tuple[EchoCheck, str]:
        try:
            parse_offer(offer_sdp)
        except SdpError as exc:
            raise web.HTTPBadRequest(reason=str(exc)) from None
        if len(self.checks) >= MAX_CHECKS:
            raise web.HTTPServiceUnavailable(reason="too many network checks running")
        check = EchoCheck(id=secrets.token_hex(8), pc=ScopedPeerConnection(self.network))
        pc = check.pc

        @pc.on("datachannel")
        def on_datachannel(channel):  # type: ignore[no-untyped-def]
            @channel.on("message")
            def on_message(message):  # type: ignore[no-untyped-def]
                check.messages += 1
                if isinstance(message, str) and message.startswith("ping"):
                    channel.send("pong" + message[4:])
                else:
                    channel.send(message)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._spawn(self._count(check, track))

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError and others for bad SDP
            await pc.close()
            raise web.HTTPBadRequest(reason=f"bad SDP offer: {exc}") from None
        self.checks[check.id] = check
        self._spawn(self._expire(check))
        return check, pc.localDescription.sdp

    async def _count(self, check: EchoCheck, track: MediaStreamTrack) -> None:
        check.frames.setdefault(track.kind, 0)
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            check.frames[track.kind] += 1

    async def _expire(self, check: EchoCheck) -> None:
        await asyncio.sleep(ECHO_LIFETIME_S)
        await self.close_check(check.id)

    async def close_check(self, check_id: str) -> None:
        check = self.checks.pop(check_id, None)
        if check is not None:
            await check.pc.close()

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for check_id in list(self.checks):
            await self.close_check(check_id)
        for task in list(self.tasks):
            task.cancel()


ECHO = web.AppKey("echo", EchoService)


async def post_echo(request: web.Request) -> web.Response:
    await request.app[appkeys.TOKENS].verify_access(bearer_token(request.headers.get("Authorization")))
    if request.content_type != "application/sdp":
        raise web.HTTPUnsupportedMediaType(reason="send the offer as application/sdp")
    offer = await request.text()
    check, answer = await request.app[ECHO].open(offer)
    return web.Response(status=201, text=answer, content_type="application/sdp",
                        headers={"Location": f"/api/echo/{check.id}"})


async def get_echo(request: web.Request) -> web.Response:
    check = request.app[ECHO].checks.get(request.match_info["id"])
    if check is None:
        raise web.HTTPNotFound(reason="no such network check")
    return web.json_response({
        "id": check.id, "connection": check.pc.connectionState,
        "frames": check.frames, "messages": check.messages,
    })


async def delete_echo(request: web.Request) -> web.Response:
    await request.app[ECHO].close_check(request.match_info["id"])
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    settings = app[appkeys.SETTINGS]

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        service = EchoService(MediaNetwork.from_settings(settings.media, settings.ice))
        app[ECHO] = service
        yield
        await service.close()

    app.cleanup_ctx.append(lifetime)
    app.router.add_post("/api/echo", post_echo)
    app.router.add_get("/api/echo/{id}", get_echo)
    app.router.add_delete("/api/echo/{id}", delete_echo)
