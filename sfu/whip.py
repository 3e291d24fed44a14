"""WHIP (RFC 9725) and WHEP over HTTP, on top of :class:`sfu.service.SfuService`.

* ``POST /whip/{room}[?source=...]`` / ``POST /whep/{room}``: ``Authorization:
  Bearer <room token>``, ``Content-Type: application/sdp`` -> ``201 Created``,
  the answer, ``Location: /whip/{room}/{session}`` (or ``/whep/...``), ``ETag``.
* ``DELETE <Location>`` (same bearer identity) -> ``204``.
* ``PATCH`` (trickle ICE / ICE restart) is not supported: ``405`` (aiortc gathers
  before answering and has no ICE restart).
* Errors: ``{"error": ..., "reason": ...}`` with 400/401/403/404/406/409/413/415/503.
"""

from __future__ import annotations

import logging

from aiohttp import web

from core import appkeys
from core.auth import RoomGrant, bearer_token
from core.http import BodyTooLarge, read_body
from sfu.appkeys import SFU
from sfu.errors import Forbidden, NotFound, SfuError
from sfu.sdp import MAX_SDP_BYTES
from sfu.service import SfuService

logger = logging.getLogger(__name__)


def _error(status: int, error: str, reason: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status)


async def _offer(request: web.Request) -> tuple[RoomGrant, str]:
    grant = request.app[appkeys.TOKENS].verify_room(bearer_token(request.headers.get("Authorization")),
                                                   request.match_info["room"])
    if request.content_type != "application/sdp":
        raise SfuError("Content-Type must be application/sdp", status=415, error="unsupported_media_type")
    try:
        body = await read_body(request, MAX_SDP_BYTES)
    except BodyTooLarge:
        raise SfuError(f"SDP offer larger than {MAX_SDP_BYTES} bytes", status=413, error="too_large") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SfuError("SDP offer is not UTF-8", error="bad_sdp") from None
    return grant, text


def _created(request: web.Request, kind: str, session_id: str, answer: str) -> web.Response:
    location = f"/{kind}/{request.match_info['room']}/{session_id}"
    return web.Response(status=201, text=answer, content_type="application/sdp",
                        headers={"Location": location, "ETag": f'"{session_id}"'})


async def whip_post(request: web.Request) -> web.StreamResponse:
    service: SfuService = request.app[SFU]
    try:
        grant, offer = await _offer(request)
        negotiation = await service.whip(grant, offer, request.query.getall("source", []))
    except SfuError as exc:
        return _error(exc.status, exc.error, exc.reason)
    return _created(request, "whip", negotiation.session_id, negotiation.answer_sdp)


async def whep_post(request: web.Request) -> web.StreamResponse:
    service: SfuService = request.app[SFU]
    try:
        grant, offer = await _offer(request)
        negotiation = await service.whep(grant, offer)
    except SfuError as exc:
        return _error(exc.status, exc.error, exc.reason)
    return _created(request, "whep", negotiation.session_id, negotiation.answer_sdp)


async def session_delete(request: web.Request) -> web.StreamResponse:
    service: SfuService = request.app[SFU]
    grant = request.app[appkeys.TOKENS].verify_room(bearer_token(request.headers.get("Authorization")),
                                                   request.match_info["room"])
    try:
        participant = service.session(request.match_info["session"])
        if participant is None or participant.room.name != grant.room:
            raise NotFound("no such session")
        if participant.grant.identity != grant.identity:
            raise Forbidden("this session belongs to another participant")
        await service.leave(participant.id)
    except SfuError as exc:
        return _error(exc.status, exc.error, exc.reason)
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/whip/{room}", whip_post)
    app.router.add_post("/whep/{room}", whep_post)
    app.router.add_delete("/whip/{room}/{session}", session_delete)
    app.router.add_delete("/whep/{room}/{session}", session_delete)
