"""The pre-call network check: a WebRTC peer on the SFU's media settings that echoes.

A page (or an agent) posts an SDP offer with a data channel, and optionally
camera and microphone tracks, to ``POST /api/echo`` with its access token. The
server answers from the same addresses the SFU uses, echoes every data channel
message (``ping`` → ``pong`` for a round-trip time) and counts the media
packets it receives without decoding them; ``GET /api/echo/{id}`` reports
them. This proves ICE, DTLS and media reach the SFU before a consultation
starts.

Rules (issue 17):

* every route needs an access token; ``GET`` and ``DELETE /api/echo/{id}`` only
  the token's subject who opened the check (anyone else: 404, as for no check);
* at most ``MAX_CHECKS`` checks at once (503), ``MAX_CHECKS_PER_USER`` per subject
  (429);
* a body that is not UTF-8 SDP, or an offer aiortc cannot answer, is a 400;
* a check closes after ``ECHO_LIFETIME_S`` or on ``DELETE``, within
  ``[media] close_timeout_s`` (``media/teardown.py``); closing it cancels its
  tasks and drops every reference the service kept, so nothing of it stays.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Coroutine

from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from core import appkeys
from core.auth import Principal, bearer_token
from core.http import read_body
from media import aiortc_internals
from media.ice import MediaNetwork, ScopedPeerConnection
from media.sdp import MAX_SDP_BYTES, SdpError, parse_offer
from media.teardown import close_peer_connection

logger = logging.getLogger(__name__)

ECHO_LIFETIME_S = 60.0
MAX_CHECKS = 50
MAX_CHECKS_PER_USER = 2
MAX_REASON_CHARS = 200


@dataclass
class EchoCheck:
    id: str
    owner: str
    """The subject of the access token that opened it."""
    pc: ScopedPeerConnection
    frames: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    """Its expiry and its track counters: cancelled when it closes."""


@dataclass
class EchoService:
    network: MediaNetwork
    close_timeout_s: float = 5.0
    checks: dict[str, EchoCheck] = field(default_factory=dict)

    def owned_by(self, owner: str) -> int:
        return sum(1 for c in self.checks.values() if c.owner == owner)

    def get(self, check_id: str, owner: str) -> EchoCheck:
        """``owner``'s check ``check_id``; 404 when there is none, or it is someone else's."""
        check = self.checks.get(check_id)
        if check is None or check.owner != owner:
            raise web.HTTPNotFound(reason="no such network check")
        return check

    async def open(self, offer_sdp: str, owner: str) -> tuple[EchoCheck, str]:
        try:
            parse_offer(offer_sdp)
        except SdpError as exc:
            raise web.HTTPBadRequest(reason=str(exc)) from None
        if len(self.checks) >= MAX_CHECKS:
            raise web.HTTPServiceUnavailable(reason="too many network checks running")
        if self.owned_by(owner) >= MAX_CHECKS_PER_USER:
            raise web.HTTPTooManyRequests(
                reason=f"at most {MAX_CHECKS_PER_USER} network checks at once per user: "
                       "delete one (DELETE /api/echo/{id}) or wait for it to end")
        check = EchoCheck(id=secrets.token_hex(8), owner=owner, pc=ScopedPeerConnection(self.network))
        self.checks[check.id] = check  # counted from now on: concurrent posts cannot pass the bounds
        pc = check.pc
        pc.on("datachannel", lambda channel: self._echo(check, channel))
        pc.on("track", lambda track: self._spawn(check, self._count(check, track)))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            for transceiver in pc.getTransceivers():  # a malformed REMB must not end the check's media
                aiortc_internals.guard_rtcp(transceiver.receiver.transport)
            if pc.sctp is not None:
                aiortc_internals.guard_rtcp(pc.sctp.transport)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError and others for SDP it cannot answer
            await self.close_check(check.id)
            raise web.HTTPBadRequest(reason=f"bad SDP offer: {exc}"[:MAX_REASON_CHARS]) from None
        if self.checks.get(check.id) is not check:  # closed meanwhile (DELETE, service closing)
            raise web.HTTPNotFound(reason="the network check was closed")
        self._spawn(check, self._expire(check))
        return check, pc.localDescription.sdp

    @staticmethod
    def _echo(check: EchoCheck, channel: Any) -> None:
        def on_message(message: Any) -> None:
            check.messages += 1
            if isinstance(message, str) and message.startswith("ping"):
                channel.send("pong" + message[4:])
            else:
                channel.send(message)

        channel.on("message", on_message)

    @staticmethod
    async def _count(check: EchoCheck, track: MediaStreamTrack) -> None:
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

    async def close_check(self, check_id: str) -> bool:
        """Close a check (False: there was none). Its peer connection closes within
        ``close_timeout_s``; its tasks are cancelled, but the one closing it."""
        check = self.checks.pop(check_id, None)
        if check is None:
            return False
        current = asyncio.current_task()
        for task in list(check.tasks):
            if task is not current:
                task.cancel()
        await close_peer_connection(check.pc, self.close_timeout_s, {"check": check.id})
        check.pc.remove_all_listeners()
        return True

    @staticmethod
    def _spawn(check: EchoCheck, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        check.tasks.add(task)
        task.add_done_callback(check.tasks.discard)

    async def close(self) -> None:
        await asyncio.gather(*(self.close_check(check_id) for check_id in list(self.checks)))


ECHO = web.AppKey("echo", EchoService)


async def _principal(request: web.Request) -> Principal:
    # A guest (issue 14) checks its camera and microphone before waiting to be admitted.
    return await request.app[appkeys.TOKENS].verify_access(bearer_token(request.headers.get("Authorization")),
                                                           guest=True)


async def post_echo(request: web.Request) -> web.Response:
    principal = await _principal(request)
    if request.content_type != "application/sdp":
        raise web.HTTPUnsupportedMediaType(reason="send the offer as application/sdp")
    try:
        offer = (await read_body(request, MAX_SDP_BYTES)).decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(reason="the offer is not UTF-8 text") from None
    check, answer = await request.app[ECHO].open(offer, principal.subject)
    return web.Response(status=201, text=answer, content_type="application/sdp",
                        headers={"Location": f"/api/echo/{check.id}"})


async def get_echo(request: web.Request) -> web.Response:
    principal = await _principal(request)
    check = request.app[ECHO].get(request.match_info["id"], principal.subject)
    return web.json_response({
        "id": check.id, "connection": check.pc.connectionState,
        "frames": check.frames, "messages": check.messages,
    })


async def delete_echo(request: web.Request) -> web.Response:
    principal = await _principal(request)
    service = request.app[ECHO]
    await service.close_check(service.get(request.match_info["id"], principal.subject).id)
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    settings = app[appkeys.SETTINGS]

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        service = EchoService(MediaNetwork.from_settings(settings.effective_media, settings.ice),
                              close_timeout_s=settings.media.close_timeout_s)
        service.network.datagrams.register(app[appkeys.METRICS].registry, "echo")
        app[ECHO] = service
        yield
        await service.close()

    app.cleanup_ctx.append(lifetime)
    app.router.add_post("/api/echo", post_echo)
    app.router.add_get("/api/echo/{id}", get_echo)
    app.router.add_delete("/api/echo/{id}", delete_echo)
