"""REST for recordings: start/stop by the physician, and access to what was recorded.

* ``POST /api/consultations/{id}/recording`` ``{"action": "start"|"stop"}``: the
  consultation's physician only (access token).
* ``GET /api/recordings``: the caller's recordings (a physician: those of their
  consultations; an admin: all, with a reason).
* ``GET /api/recordings/{consultation_id}``: the manifest.
* ``GET /api/recordings/{consultation_id}/tracks/{file}``: one track, decrypted.
* ``GET /api/recordings/{consultation_id}/export``: every track in one Matroska file
  (remuxed, in sync).

Access rules: the consultation's physician, or an admin who gives a reason
(``X-Access-Reason`` header or ``?reason=``; refused with 403 before anything is
looked up). Anyone else, and any recording that does not exist, gets the same 404:
the answer never tells whether a recording exists. Every access is journaled
(``recording.access``: who, role, what, the admin's reason); refusals too
(``recording.denied``), so that probing shows in the audit.

Routes only: the service (:mod:`media.recording.service`) and signalling
(:class:`~media.recording.ports.Signalling`) come from the app keys
:func:`media.recording.setup` sets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from core import appkeys
from core.auth import Principal, Role, bearer_token
from core.http import json_body, json_error
from core.vocabulary import Act, ConsultationId
from media.recording import ports
from media.recording.appkeys import RECORDING, SIGNALLING
from media.recording.ids import check_id
from media.recording.manifest import Manifest
from media.recording.service import RecordingRefused, RecordingService
from media.recording.store import RecordingNotFound

logger = logging.getLogger(__name__)

REASON_MIN, REASON_MAX = 4, 128
_MIME = {".webm": "video/webm", ".mkv": "video/x-matroska"}


class _Denied(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _not_found() -> _Denied:
    return _Denied(json_error(404, "not_found", "no such recording"))


def _service(request: web.Request) -> RecordingService:
    return request.app[RECORDING]


async def _principal(request: web.Request) -> Principal:
    return await request.app[appkeys.TOKENS].verify_access(bearer_token(request.headers.get("Authorization")))


def _access_reason(request: web.Request) -> str | None:
    text = (request.headers.get("X-Access-Reason") or request.query.get("reason") or "").strip()
    if not (REASON_MIN <= len(text) <= REASON_MAX) or not text.isprintable():
        return None
    return text


def _signalling(request: web.Request) -> ports.Signalling | None:
    return request.app[SIGNALLING]()


async def _journal(request: web.Request, act: Act, principal: Principal, consultation_id: str | None,
                   **ids: ports.JournalValue) -> None:
    sig = _signalling(request)
    if sig is None:
        raise _Denied(json_error(503, "unavailable", "no journal in this process"))
    # ``about`` named so that the type checker knows ``ids`` does not carry it.
    await sig.journal.append(act, actor=principal.subject,
                             consultation_id=None if consultation_id is None else ConsultationId(consultation_id),
                             about=None, role=principal.role.value, **ids)


async def _owner(request: web.Request, manifest: Manifest) -> str:
    """The consultation's physician (the consultation record says; else who started it)."""
    sig = _signalling(request)
    c = await sig.get_any(ConsultationId(manifest.consultation_id)) if sig is not None else None
    return str(c.physician) if c is not None and c.physician else manifest.started_by


async def _authorize(request: web.Request, op: str) -> tuple[Principal, Manifest, str | None]:
    """Who may see this recording; journals the refusal when not."""
    principal = await _principal(request)
    cid = request.match_info["consultation_id"]
    reason: str | None = None
    if principal.role is Role.ADMIN:
        reason = _access_reason(request)
        if reason is None:
            await _journal(request, Act.RECORDING_DENIED, principal, None, op=op, why="no_access_reason")
            raise _Denied(json_error(403, "reason_required", "admins give a reason: X-Access-Reason header or ?reason="))
    try:
        check_id(cid)
        manifest = _service(request).store.manifest(cid)
    except (ValueError, RecordingNotFound):
        await _journal(request, Act.RECORDING_DENIED, principal, None, op=op, why="not_found")
        raise _not_found() from None
    if manifest.shredded_at is not None:
        await _journal(request, Act.RECORDING_DENIED, principal, cid, op=op, why="shredded")
        raise _not_found()
    if principal.role is not Role.ADMIN:
        if principal.role is not Role.PHYSICIAN or await _owner(request, manifest) != principal.subject:
            await _journal(request, Act.RECORDING_DENIED, principal, cid, op=op, why="not_owner")
            raise _not_found()
    return principal, manifest, reason


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _denied_to_response(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Denied as denied:
            return denied.response

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


@_denied_to_response
async def post_recording(request: web.Request) -> web.Response:
    """Start or stop the recording of a consultation (its physician only)."""
    principal = await _principal(request)
    try:
        body = await json_body(request)
    except ValueError:
        return json_error(400, "bad_request", "body is not JSON")
    action = body.get("action") if isinstance(body, dict) else None
    if action not in ("start", "stop") or set(body) - {"action"}:
        return json_error(400, "bad_request", 'body must be {"action": "start"} or {"action": "stop"}')
    cid = request.match_info["id"]
    if principal.role is not Role.PHYSICIAN:
        return json_error(403, "forbidden", "only the consultation's physician starts or stops a recording")
    forwarded = await _on_the_rooms_node(request, cid, body)
    if forwarded is not None:
        return forwarded
    service = _service(request)
    try:
        if action == "start":
            manifest = await service.start(cid, principal.subject)
        else:
            manifest = await service.stop_for(cid, principal.subject)
    except RecordingRefused as refused:
        return json_error(refused.status, refused.error, refused.reason)
    return web.json_response({"consultation_id": cid, "recording": action == "start",
                              "manifest": manifest.to_dict()})


FORWARDED = "X-Teleconsult-Forwarded"
"""Set on a request one process passed to another: never passed on again."""
FORWARD_TIMEOUT_S = 15.0


async def _on_the_rooms_node(request: web.Request, cid: str, body: Any) -> web.Response | None:
    """A recording taps the SFU room where its packets are: when that is another process (a media
    worker, another node), the request goes there, with its own token, and its answer comes back.
    None: the room is here (or nowhere: this process answers)."""
    if request.headers.get(FORWARDED):
        return None
    signalling = request.app[SIGNALLING]()
    if signalling is None:
        return None
    try:
        node = await signalling.room_node_elsewhere(ConsultationId(cid))
    except Exception as exc:  # the store: this process answers as before
        logger.warning("room node unknown: %s", type(exc).__name__, extra={"consultation": cid})
        return None
    if node is None:
        return None
    url = f"{node.rstrip('/')}/api/consultations/{cid}/recording"
    headers = {"Authorization": request.headers.get("Authorization", ""), FORWARDED: "1"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as http:
            async with http.post(url, json=body, headers=headers) as answer:
                payload = await answer.read()
                return web.Response(status=answer.status, body=payload,
                                    content_type=answer.content_type or "application/json")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        logger.warning("recording request not passed to the room's node: %s", type(exc).__name__,
                       extra={"consultation": cid})
        return json_error(503, "unavailable", "the room's media node does not answer now; retry")


@_denied_to_response
async def list_recordings(request: web.Request) -> web.Response:
    principal = await _principal(request)
    reason: str | None = None
    if principal.role is Role.ADMIN:
        reason = _access_reason(request)
        if reason is None:
            await _journal(request, Act.RECORDING_DENIED, principal, None, op="list", why="no_access_reason")
            return json_error(403, "reason_required", "admins give a reason: X-Access-Reason header or ?reason=")
    elif principal.role is not Role.PHYSICIAN:
        return web.json_response({"recordings": []})
    manifests = await asyncio.to_thread(_service(request).store.list)
    out = []
    for manifest in manifests:
        if principal.role is Role.ADMIN or await _owner(request, manifest) == principal.subject:
            out.append(_summary(manifest))
    await _journal(request, Act.RECORDING_ACCESS, principal, None, op="list", count=len(out), access_reason=reason)
    return web.json_response({"recordings": out})


def _summary(m: Manifest) -> dict[str, Any]:
    return {"consultation_id": m.consultation_id, "started_at": m.started_at, "stopped_at": m.stopped_at,
            "started_by": m.started_by, "stopped_reason": m.stopped_reason, "shredded_at": m.shredded_at,
            "encrypted": m.encrypted, "tracks": len(m.tracks)}


@_denied_to_response
async def get_manifest(request: web.Request) -> web.Response:
    principal, manifest, reason = await _authorize(request, "manifest")
    await _journal(request, Act.RECORDING_ACCESS, principal, manifest.consultation_id, op="manifest",
                   access_reason=reason)
    return web.json_response(manifest.to_dict())


@_denied_to_response
async def get_track(request: web.Request) -> web.StreamResponse:
    principal, manifest, reason = await _authorize(request, "track")
    name = request.match_info["file"]
    entry = next((t for t in manifest.tracks if t.file == name), None)
    if entry is None:  # only files the manifest names: nothing else under the directory is served
        return json_error(404, "not_found", "no such track")
    if manifest.stopped_at is None:
        return json_error(409, "conflict", "still recording")
    service = _service(request)
    path = service.store.root / manifest.consultation_id / entry.file
    if not path.exists():
        return json_error(404, "not_found", "no such track")
    await _journal(request, Act.RECORDING_ACCESS, principal, manifest.consultation_id, op="track", file=entry.file,
                   access_reason=reason)
    chunks = service.vault.read_chunks(path)
    response = web.StreamResponse(headers={"Content-Type": _MIME.get(path.suffix, "application/octet-stream"),
                                           "Content-Disposition": f'attachment; filename="{entry.file}"'})
    await response.prepare(request)
    while True:
        # Decryption (and the tag check of each chunk) off the event loop.
        chunk = await asyncio.to_thread(next, chunks, None)
        if chunk is None:
            break
        await response.write(chunk)
    await response.write_eof()
    return response


@_denied_to_response
async def get_export(request: web.Request) -> web.StreamResponse:
    principal, manifest, reason = await _authorize(request, "export")
    if manifest.stopped_at is None:
        return json_error(409, "conflict", "still recording")
    service = _service(request)
    await _journal(request, Act.RECORDING_ACCESS, principal, manifest.consultation_id, op="export",
                   access_reason=reason)
    # The muxer needs a seekable file: a temporary one next to the recordings, unlinked
    # as soon as it is open so that no plaintext copy outlives the response.
    tmp_dir = Path(service.settings.server.data_dir) / "tmp"
    tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = tmp_dir / f"export-{secrets.token_hex(8)}.mkv"
    try:
        await asyncio.to_thread(service.store.export, manifest.consultation_id, tmp)
        f = open(tmp, "rb")
    finally:
        tmp.unlink(missing_ok=True)
    try:
        size = os.fstat(f.fileno()).st_size
        response = web.StreamResponse(headers={
            "Content-Type": "video/x-matroska", "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{manifest.consultation_id}.mkv"'})
        await response.prepare(request)
        while block := await asyncio.to_thread(f.read, 1 << 16):
            await response.write(block)
        await response.write_eof()
    finally:
        f.close()
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/consultations/{id}/recording", post_recording)
    app.router.add_get("/api/recordings", list_recordings)
    app.router.add_get("/api/recordings/{consultation_id}", get_manifest)
    app.router.add_get("/api/recordings/{consultation_id}/tracks/{file}", get_track)
    app.router.add_get("/api/recordings/{consultation_id}/export", get_export)
