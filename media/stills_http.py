"""Stills over REST: the device agent uploads full-resolution captures, the care team reads them.

* ``POST /api/consultations/{id}/stills``: the site's device agent, with its room
  token for the room named after the consultation (``Authorization: Bearer``), the
  publish grant of the device (``X-Device: dermatoscope|otoscope``), the image as the
  body (``Content-Type: image/png|image/jpeg``, at most :data:`MAX_STILL_BYTES`),
  while the consultation is active → ``201 {still_id, url, width, height, mime}``.
  The magic bytes must match the type (else 415) and the image must decode to the
  size its header says, within :data:`MAX_PIXELS` (else 400); too big → 413.
* ``GET /api/consultations/{id}/stills`` → ``{consultation_id, stills: [meta]}``;
  ``GET /api/consultations/{id}/stills/{still_id}`` → the image bytes. Readers: the
  consultation's physician, the site's nurses (they are with the patient and read
  the report too), admins. Everyone else gets the same 404 as for a consultation that
  does not exist (no existence oracle).

Stored sealed by :class:`media.recording_store.StillStore` (the vault of
``settings.recording``); every upload and every read is journaled (ids only):
``still.capture``, ``still.list``, ``still.access``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any, Optional

import cv2
import numpy as np
from aiohttp import web

from core import appkeys
from core.auth import Principal, Role, bearer_token
from core.http import json_error
from media.crypto import IntegrityError, Vault
from media.recording_store import STILL_DEVICES, RecordingNotFound, StillMeta, StillStore
from signalling.appkeys import SIGNALLING

logger = logging.getLogger(__name__)

MAX_STILL_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 40_000_000
"""A 40 MP sensor at most: a decompression bomb stops at the header check."""
MIMES = ("image/png", "image/jpeg")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG start-of-frame markers that carry the image size (not DHT/JPG/DAC: C4, C8, CC).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


class BadImage(ValueError):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def sniff_mime(data: bytes) -> Optional[str]:
    if data.startswith(_PNG_MAGIC):
        return "image/png"
    if data.startswith(_JPEG_MAGIC):
        return "image/jpeg"
    return None


def header_size(data: bytes, mime: str) -> tuple[int, int]:
    """(width, height) from the PNG IHDR or the first JPEG SOF; BadImage(400) if absent."""
    if mime == "image/png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise BadImage(400, "bad_image", "PNG without an IHDR chunk")
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    i = 2
    # Bounded: each step advances by at least 2 bytes.
    while i + 9 < len(data):
        if data[i] != 0xFF:
            raise BadImage(400, "bad_image", "JPEG marker expected")
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            raise BadImage(400, "bad_image", "JPEG segment length invalid")
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        if marker == 0xDA:
            break
        i += 2 + length
    raise BadImage(400, "bad_image", "JPEG without a frame header")


def check_image(data: bytes, declared: str) -> tuple[int, int]:
    """The image's (width, height) after every check; raises BadImage. CPU-bound (decodes)."""
    actual = sniff_mime(data)
    if actual is None or actual != declared:
        raise BadImage(415, "unsupported_media_type", f"the body is not a {declared} image")
    width, height = header_size(data, declared)
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
        raise BadImage(400, "bad_image", f"image size {width}x{height} out of bounds")
    # Decode it all: a truncated or corrupt file must not be stored as a clinical still.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise BadImage(400, "bad_image", "the image does not decode")
    if image.shape[1] != width or image.shape[0] != height:
        raise BadImage(400, "bad_image", "the image does not match its header's size")
    return width, height


STILLS = web.AppKey("stills", StillStore)


def _not_found() -> web.Response:
    return json_error(404, "not_found", "no such consultation")


def still_url(consultation_id: str, still_id: str) -> str:
    return f"/api/consultations/{consultation_id}/stills/{still_id}"


def _public(meta: StillMeta) -> dict[str, Any]:
    return {"still_id": meta.still_id, "device": meta.device, "mime": meta.mime, "width": meta.width,
            "height": meta.height, "size": meta.size, "created": meta.created,
            "url": still_url(meta.consultation_id, meta.still_id)}


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_STILL_BYTES:
        raise BadImage(413, "too_large", f"a still is at most {MAX_STILL_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_STILL_BYTES:
            raise BadImage(413, "too_large", f"a still is at most {MAX_STILL_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def post_still(request: web.Request) -> web.Response:
    cid = request.match_info["id"]
    grant = request.app[appkeys.TOKENS].verify_room(bearer_token(request.headers.get("Authorization")))
    signalling = request.app.get(SIGNALLING)
    if signalling is None:
        return json_error(503, "unavailable", "signalling is not running")
    if grant.room != cid:
        return _not_found()
    consultation = await signalling.get_any(cid)
    if consultation is None:
        return _not_found()
    device = request.headers.get("X-Device", "")
    if device not in STILL_DEVICES:
        return json_error(400, "bad_request", f"X-Device must be one of {', '.join(STILL_DEVICES)}")
    if grant.role is not Role.AGENT or not grant.may_publish(device):
        return json_error(403, "forbidden", f"the room token does not grant {device}")
    if consultation.state.value != "active":
        return json_error(409, "conflict", "stills are taken during an active consultation")
    mime = request.content_type
    if mime not in MIMES:
        return json_error(415, "unsupported_media_type", f"Content-Type must be one of {', '.join(MIMES)}")
    try:
        data = await _read_body(request)
        if not data:
            raise BadImage(400, "bad_image", "empty body")
        width, height = await asyncio.to_thread(check_image, data, mime)
    except BadImage as exc:
        logger.info("still refused (%s)", exc.error, extra={"consultation": cid})
        return json_error(exc.status, exc.error, exc.reason)
    store = request.app[STILLS]
    meta = await asyncio.to_thread(store.put, cid, device, mime, data, width, height)
    await signalling.journal.append("still.capture", actor=grant.identity, consultation_id=cid,
                                    still_id=meta.still_id, device=device, width=width, height=height,
                                    bytes=meta.size)
    return web.json_response({"still_id": meta.still_id, "url": still_url(cid, meta.still_id), "width": width,
                              "height": height, "mime": mime, "device": device}, status=201)


async def _reader(request: web.Request) -> tuple[Principal, Any] | web.Response:
    principal = await request.app[appkeys.TOKENS].verify_access(bearer_token(request.headers.get("Authorization")))
    signalling = request.app.get(SIGNALLING)
    if signalling is None:
        return json_error(503, "unavailable", "signalling is not running")
    consultation = await signalling.get_any(request.match_info["id"])
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
    try:
        metas = await asyncio.to_thread(request.app[STILLS].list, cid)
    except ValueError:
        return _not_found()
    await signalling.journal.append("still.list", actor=principal.subject, consultation_id=cid, count=len(metas))
    return web.json_response({"consultation_id": cid, "stills": [_public(m) for m in metas]})


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
    await signalling.journal.append("still.access", actor=principal.subject, consultation_id=cid,
                                    still_id=still_id, device=meta.device)
    return web.Response(body=data, content_type=meta.mime,
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                 "X-Width": str(meta.width), "X-Height": str(meta.height)})


def setup(app: web.Application) -> None:
    """Stills REST (after signalling and the SFU in ``teleconsult.app._COMPONENTS``)."""
    settings = app[appkeys.SETTINGS]
    app[STILLS] = StillStore.for_data_dir(settings.server.data_dir, Vault.from_settings(settings.recording))
    app.router.add_post("/api/consultations/{id}/stills", post_still)
    app.router.add_get("/api/consultations/{id}/stills", list_stills)
    app.router.add_get("/api/consultations/{id}/stills/{still_id}", get_still)


__all__ = ["MAX_STILL_BYTES", "STILLS", "check_image", "setup"]
