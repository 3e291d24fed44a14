"""REST endpoints of signalling: directory, consultations, reports, journal, ICE servers.

Errors use the app's one HTTP shape ``{"error", "reason"}``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from core import appkeys
from core.auth import Principal, bearer_token
from core.http import json_error
from core.vocabulary import Act, ConsultationId, Role
from signalling.appkeys import SIGNALLING
from signalling.directory import Directory, DirectoryError, parse_clinician, parse_site
from signalling.protocol import validate_report
from signalling.reports import REPORTABLE
from signalling.service import SignallingService
from signalling.turn import ice_servers


async def _principal(request: web.Request) -> Principal:
    return await request.app[appkeys.TOKENS].verify_access(bearer_token(request.headers.get("Authorization")))


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='{"error":"bad_request","reason":"body is not JSON"}',
                                 content_type="application/json") from None


def _svc(request: web.Request) -> SignallingService:
    service: SignallingService = request.app[SIGNALLING]
    return service


async def get_directory(request: web.Request) -> web.Response:
    await _principal(request)
    return web.json_response(_svc(request).directory.to_dict())


async def _admin(request: web.Request) -> Principal | web.Response:
    principal = await _principal(request)
    if principal.role is not Role.ADMIN:
        return json_error(403, "forbidden", "admins only")
    return principal


async def put_directory(request: web.Request) -> web.Response:
    who = await _admin(request)
    if isinstance(who, web.Response):
        return who
    try:
        directory = Directory.from_dict(await _json(request))
    except DirectoryError as exc:
        return json_error(400, "bad_request", str(exc))
    await _svc(request).set_directory(directory)
    return web.json_response(directory.to_dict())


async def put_entry(request: web.Request) -> web.Response:
    who = await _admin(request)
    if isinstance(who, web.Response):
        return who
    kind, eid = request.match_info["kind"], request.match_info["id"]
    body = await _json(request)
    if not isinstance(body, dict):
        return json_error(400, "bad_request", "body must be an object")
    body = {**body, "id": eid}
    svc = _svc(request)
    try:
        if kind == "sites":
            directory = svc.directory.with_site(parse_site(body))
        else:
            directory = svc.directory.with_clinician(parse_clinician(body))
    except DirectoryError as exc:
        return json_error(400, "bad_request", str(exc))
    await svc.set_directory(directory)
    return web.json_response(body)


async def delete_entry(request: web.Request) -> web.Response:
    who = await _admin(request)
    if isinstance(who, web.Response):
        return who
    kind, eid = request.match_info["kind"], request.match_info["id"]
    svc = _svc(request)
    table = svc.directory.sites if kind == "sites" else svc.directory.clinicians
    if eid not in table:
        return json_error(404, "not_found", f"no such {kind[:-1]}")
    directory = svc.directory.without_site(eid) if kind == "sites" else svc.directory.without_clinician(eid)
    await svc.set_directory(directory)
    return web.Response(status=204)


async def _visible(request: web.Request) -> tuple[Principal, Any] | web.Response:
    principal = await _principal(request)
    svc = _svc(request)
    c = await svc.get_any(request.match_info["id"])
    if c is None or not svc.visible(principal, c):
        return json_error(404, "not_found", "no such consultation")
    return principal, c


async def get_consultation(request: web.Request) -> web.Response:
    got = await _visible(request)
    if isinstance(got, web.Response):
        return got
    principal, c = got
    return web.json_response(c.view(_svc(request).clinical_for(principal)))


async def put_report(request: web.Request) -> web.Response:
    got = await _visible(request)
    if isinstance(got, web.Response):
        return got
    principal, c = got
    if principal.role is not Role.PHYSICIAN or c.physician != principal.subject:
        return json_error(403, "forbidden", "only the consultation's physician writes its report")
    if c.state not in REPORTABLE:
        return json_error(409, "conflict", f"a {c.state.value} consultation has no report")
    body = await _json(request)
    if not isinstance(body, dict):
        return json_error(400, "bad_request", "body must be an object")
    try:
        report = validate_report(body)
    except ValueError as exc:
        return json_error(400, "bad_request", str(exc))
    saved_at = await _svc(request).save_report(c, report, principal.subject)
    return web.json_response({"consultation_id": c.id, "saved_at": saved_at})


async def get_report(request: web.Request) -> web.Response:
    got = await _visible(request)
    if isinstance(got, web.Response):
        return got
    principal, c = got
    if principal.role is Role.AGENT or (principal.role is Role.PHYSICIAN and c.physician != principal.subject):
        return json_error(403, "forbidden", "not yours to read")
    found = await _svc(request).records.get_report(c.id)
    if found is None:
        return json_error(404, "not_found", "no report yet")
    return web.json_response({"consultation_id": c.id, **found})


async def get_journal(request: web.Request) -> web.Response:
    got = await _visible(request)
    if isinstance(got, web.Response):
        return got
    principal, c = got
    if not (principal.role is Role.ADMIN or (principal.role is Role.PHYSICIAN and c.physician == principal.subject)):
        return json_error(403, "forbidden", "admins and the consultation's physician only")
    svc = _svc(request)
    entries = await svc.journal.read(ConsultationId(c.id))
    await svc.journal.append(Act.JOURNAL_READ, actor=principal.subject, consultation_id=ConsultationId(c.id))
    return web.json_response({"consultation_id": c.id, "entries": entries})


async def get_ice_servers(request: web.Request) -> web.Response:
    principal = await _principal(request)
    svc = _svc(request)
    return web.json_response({"ice_servers": ice_servers(svc.settings.ice, principal.subject, svc.clock())})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/directory", get_directory)
    app.router.add_put("/api/directory", put_directory)
    app.router.add_put(r"/api/directory/{kind:sites|clinicians}/{id}", put_entry)
    app.router.add_delete(r"/api/directory/{kind:sites|clinicians}/{id}", delete_entry)
    app.router.add_get("/api/consultations/{id}", get_consultation)
    app.router.add_put("/api/consultations/{id}/report", put_report)
    app.router.add_get("/api/consultations/{id}/report", get_report)
    app.router.add_get("/api/consultations/{id}/journal", get_journal)
    app.router.add_get("/api/ice-servers", get_ice_servers)
