"""Stills over REST: the device agent uploads full-resolution captures, the care team reads them.

* ``POST /api/consultations/{id}/stills``: the site's device agent, with its room
  token for the room named after the consultation (``Authorization: Bearer``), the
  publish grant of the device (``X-Device: dermatoscope|otoscope``), the image as the
  body (``Content-Type: image/png|image/jpeg``, at most :data:`MAX_STILL_BYTES`),
  while the consultation is active → ``201 {still_id, url, width, height, mime}``.
  The magic bytes must match the type (else 415) and the image must decode to the
  size its header says, within :data:`~media.recording.still_image.MAX_PIXELS` (else
  400); too big → 413.
* ``GET /api/consultations/{id}/stills`` → ``{consultation_id, stills: [meta]}`` (each
  ``{still_id, device, mime, width, height, size, created, url, taken_at, label}``, by
  time taken); ``GET /api/consultations/{id}/stills/{still_id}`` → the image bytes. Readers: the
  consultation's physician, the site's nurses (they are with the patient and read
  the report too), admins. Everyone else gets the same 404 as for a consultation that
  does not exist (no existence oracle).
* ``PATCH /api/consultations/{id}/stills/{still_id}`` ``{label}`` (at most
  :data:`~media.recording.stills.MAX_LABEL` characters; "" removes it): the consultation's
  physician labels a still → ``200 meta``. The label is sealed at rest like the image.

Checked by :mod:`media.recording.still_image`, stored sealed by
:class:`media.recording.stills.StillStore` (the vault of ``settings.recording``); every
upload, label and read is journaled (ids only): ``still.capture``, ``still.label``,
``still.list``, ``still.access``. Signalling is :class:`~media.recording.ports.Signalling`, from the
app key :func:`media.recording.setup` sets.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from core import appkeys
from core.auth import Principal, Role, bearer_token
from core.http import BodyTooLarge, json_body, json_error, read_body
from core.vocabulary import STILL_DEVICES, Act, ConsultationId
from media.recording import ports
from media.recording.appkeys import SIGNALLING, STILLS
from media.recording.still_image import MIMES, BadImage, check_image
from media.recording.stills import MAX_LABEL, StillMeta
from media.recording.store import RecordingNotFound
from media.recording.vault import IntegrityError

logger = logging.getLogger(__name__)

MAX_STILL_BYTES = 25 * 1024 * 1024


def _not_found() -> web.Response:
    return json_error(404, "not_found", "no such consultation")


def still_url(consultation_id: str, still_id: str) -> str:
    return f"/api/consultations/{consultation_id}/stills/{still_id}"


def still_view(meta: StillMeta, label: str = "") -> dict[str, Any]:
    """A still as the API shows it (``taken_at``: when it was captured, Unix seconds)."""
    return {"still_id": meta.still_id, "device": meta.device, "mime": meta.mime, "width": meta.width,
            "height": meta.height, "size": meta.size, "created": meta.created, "taken_at": meta.created,
            "label": label, "url": still_url(meta.consultation_id, meta.still_id)}


async def post_still(request: web.Request) -> web.Response:
    cid = request.match_info["id"]
    grant = request.app[appkeys.TOKENS].verify_room(bearer_token(request.headers.get("Authorization")))
    signalling = request.app[SIGNALLING]()
    if signalling is None:
        return json_error(503, "unavailable", "signalling is not running")
    if grant.room != cid:
        return _not_found()
    consultation = await signalling.get_any(ConsultationId(cid))
    if consultation is None:
        return _not_found()
    device = request.headers.get("X-Device", "")
    if device not in STILL_DEVICES:
        return json_error(400, "bad_request", f"X-Device must be one of {', '.join(STILL_DEVICES)}")
    if grant.role is not Role.AGENT or not grant.may_publish(device):
        return json_error(403, "forbidden", f"the room token does not grant {device}")
    if consultation.state != "active":
        return json_error(409, "conflict", "stills are taken during an active consultation")
    mime = request.content_type
    if mime not in MIMES:
        return json_error(415, "unsupported_media_type", f"Content-Type must be one of {', '.join(MIMES)}")
    try:
        data = await read_body(request, MAX_STILL_BYTES)
        if not data:
            raise BadImage(400, "bad_image", "empty body")
        width, height = await asyncio.to_thread(check_image, data, mime)
    except BodyTooLarge:
        return json_error(413, "too_large", f"a still is at most {MAX_STILL_BYTES} bytes")
    except BadImage as exc:
        logger.info("still refused (%s)", exc.error, extra={"consultation": cid})
        return json_error(exc.status, exc.error, exc.reason)
    store = request.app[STILLS]
    meta = await asyncio.to_thread(store.put, cid, device, mime, data, width, height)
    await signalling.journal.append(Act.STILL_CAPTURE, actor=grant.identity, consultation_id=ConsultationId(cid),
                                    still_id=meta.still_id, device=device, width=width, height=height,
                                    bytes=meta.size)
    return web.json_response({"still_id": meta.still_id, "url": still_url(cid, meta.still_id), "width": width,
                              "height": height, "mime": mime, "device": device, "taken_at": meta.created,
                              "label": ""}, status=201)


async def _reader(request: web.Request) -> tuple[Principal, ports.Signalling] | web.Response:
    principal = await request.app[appkeys.TOKENS].verify_access(bearer_token(request.headers.get("Authorization")))
    signalling = request.app[SIGNALLING]()
    if signalling is None:
        return json_error(503, "unavailable", "signalling is not running")
    consultation = await signalling.get_any(ConsultationId(request.match_info["id"]))
    if consultation is None:
        return _not_found()
    allowed = (principal.role is Role.ADMIN
               or (principal.role is Role.PHYSICIAN and consultation.physician == principal.subject)
               or (principal.role is Role.NURSE and principal.site == consultation.site))
    if not allowed:
        return _not_found()
    return principal, signalling


async def list_stills(request: web.Request) -> web.Response:
    got = await _reader(request)
    if isinstance(got, web.Response):
        return got
    principal, signalling = got
    cid = request.match_info["id"]
    store = request.app[STILLS]
    try:
        metas = await asyncio.to_thread(store.list, cid)
        labels = await asyncio.to_thread(store.labels, cid)
    except ValueError:
        return _not_found()
    await signalling.journal.append(Act.STILL_LIST, actor=principal.subject, consultation_id=ConsultationId(cid),
                                    count=len(metas))
    return web.json_response({"consultation_id": cid,
                              "stills": [still_view(m, labels.get(m.still_id, "")) for m in metas]})


async def patch_still(request: web.Request) -> web.Response:
    """The consultation's physician labels a still."""
    got = await _reader(request)
    if isinstance(got, web.Response):
        return got
    principal, signalling = got
    cid, still_id = request.match_info["id"], request.match_info["still_id"]
    if principal.role is not Role.PHYSICIAN:
        return json_error(403, "forbidden", "only the consultation's physician labels its stills")
    try:
        body = await json_body(request)
    except ValueError:
        return json_error(400, "bad_request", "body is not JSON")
    if not isinstance(body, dict) or set(body) != {"label"} or not isinstance(body["label"], str):
        return json_error(400, "bad_request", "body must be {\"label\": string}")
    label = body["label"].strip()
    if len(label) > MAX_LABEL:
        return json_error(400, "bad_request", f"a label is at most {MAX_LABEL} characters")
    store = request.app[STILLS]
    try:
        meta = await asyncio.to_thread(store.set_label, cid, still_id, label)
    except (RecordingNotFound, ValueError):
        return json_error(404, "not_found", "no such still")
    await signalling.journal.append(Act.STILL_LABEL, actor=principal.subject, consultation_id=ConsultationId(cid),
                                    still_id=still_id, labelled=bool(label))
    return web.json_response(still_view(meta, label))


async def get_still(request: web.Request) -> web.StreamResponse:
    got = await _reader(request)
    if isinstance(got, web.Response):
        return got
    principal, signalling = got
    cid, still_id = request.match_info["id"], request.match_info["still_id"]
    try:
        meta, data = await asyncio.to_thread(request.app[STILLS].get, cid, still_id)
    except (RecordingNotFound, ValueError):
        return json_error(404, "not_found", "no such still")
    except IntegrityError:
        logger.error("still failed its integrity check", extra={"consultation": cid, "still": still_id})
        return json_error(500, "integrity", "the stored still is damaged")
    await signalling.journal.append(Act.STILL_ACCESS, actor=principal.subject, consultation_id=ConsultationId(cid),
                                    still_id=still_id, device=meta.device)
    return web.Response(body=data, content_type=meta.mime,
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                 "X-Width": str(meta.width), "X-Height": str(meta.height)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/consultations/{id}/stills", post_still)
    app.router.add_get("/api/consultations/{id}/stills", list_stills)
    app.router.add_get("/api/consultations/{id}/stills/{still_id}", get_still)
    app.router.add_patch("/api/consultations/{id}/stills/{still_id}", patch_still)
