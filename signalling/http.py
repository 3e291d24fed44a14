"""REST endpoints of signalling: directory, consultations, reports, journal, ICE servers.

Errors use the app's one HTTP shape ``{"error", "reason"}``.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from aiohttp import web

from core import appkeys
from core.auth import Principal, bearer_token
from core.http import json_body, json_error
from core.json_limits import JsonTooDeep
from core.vocabulary import Act, ConsultationId, Role
from signalling.appkeys import SIGNALLING
from signalling.directory import Directory, DirectoryError, parse_clinician, parse_site
from signalling.invitation import Step
from signalling.invitations import InvitationGoneError
from signalling.protocol import ErrorCode, ProtocolError
from signalling.service import SignallingService
from signalling.turn import ice_servers


async def _principal(request: web.Request, *, guest: bool = False) -> Principal:
    """The caller; ``guest``: a guest's access token (issue 14) is taken too, on the few routes
    that say so (every other refuses it: 401)."""
    return await request.app[appkeys.TOKENS].verify_access(bearer_token(request.headers.get("Authorization")),
                                                           guest=guest)


async def json_or_400(request: web.Request) -> Any:
    """The JSON body, or the 400 of every signalling route (not JSON, too deep)."""
    try:
        return await json_body(request)
    except JsonTooDeep as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": "bad_request", "reason": str(exc)}),
                                 content_type="application/json") from None
    except ValueError:
        raise web.HTTPBadRequest(text='{"error":"bad_request","reason":"body is not JSON"}',
                                 content_type="application/json") from None


def _svc(request: web.Request) -> SignallingService:
    service: SignallingService = request.app[SIGNALLING]
    return service


async def get_directory(request: web.Request) -> web.Response:
    principal = await _principal(request)
    directory = _svc(request).directory
    # Addresses are for notifications, not for every signed-in page (guests, agents) to collect.
    return web.json_response(directory.to_dict() if principal.role is Role.ADMIN else directory.public_dict())


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
        directory = Directory.from_dict(await json_or_400(request))
    except DirectoryError as exc:
        return json_error(400, "bad_request", str(exc))
    await _svc(request).set_directory(directory)
    return web.json_response(directory.to_dict())


async def put_entry(request: web.Request) -> web.Response:
    who = await _admin(request)
    if isinstance(who, web.Response):
        return who
    kind, eid = request.match_info["kind"], request.match_info["id"]
    body = await json_or_400(request)
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


_HTTP_STATUS = {ErrorCode.BAD_MESSAGE: (400, "bad_request"), ErrorCode.TOO_LARGE: (413, "too_large"),
                ErrorCode.FORBIDDEN: (403, "forbidden"), ErrorCode.NOT_FOUND: (404, "not_found"),
                ErrorCode.CONFLICT: (409, "conflict")}


def _refused(exc: ProtocolError) -> web.Response:
    """A refusal of the service (the WebSocket's ``error``) in the app's HTTP shape."""
    status, error = _HTTP_STATUS.get(exc.code, (400, "bad_request"))
    return json_error(status, error, exc.message)


async def _write_report(request: web.Request, final: bool) -> web.Response:
    got = await _visible(request)
    if isinstance(got, web.Response):
        return got
    principal, c = got
    reports = _svc(request).reports
    try:
        reports.check_writer(principal, c)
        report = await reports.validated(c, await json_or_400(request))
        if final:
            saved_at = await reports.save(c, report, principal.subject)
            return web.json_response({"consultation_id": c.id, "saved_at": saved_at, "status": "final"})
        saved_at, changed = await reports.save_draft(c, report, principal.subject)
    except ProtocolError as exc:
        return _refused(exc)
    return web.json_response({"consultation_id": c.id, "saved_at": saved_at, "status": "draft", "changed": changed})


async def put_report(request: web.Request) -> web.Response:
    """The final report (it removes the draft)."""
    return await _write_report(request, final=True)


async def put_report_draft(request: web.Request) -> web.Response:
    """The draft, as the physician types (idempotent)."""
    return await _write_report(request, final=False)


async def get_report(request: web.Request) -> web.Response:
    """Always 200 for a reader: ``status`` says empty, draft or final."""
    got = await _visible(request)
    if isinstance(got, web.Response):
        return got
    principal, c = got
    reports = _svc(request).reports
    try:
        reports.check_reader(principal, c)
    except ProtocolError as exc:
        return _refused(exc)
    return web.json_response(await reports.read(principal, c))


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
    principal = await _principal(request, guest=True)
    svc = _svc(request)
    return web.json_response({"ice_servers": ice_servers(svc.settings.ice, principal.subject, svc.clock())})


# -- invitations (issue 14) -------------------------------------------------------------------------
def _origin(request: web.Request) -> str:
    """Where the guest page is: the public URL when set, else the origin the physician called."""
    public = _svc(request).settings.server.public_url
    return public or f"{request.scheme}://{request.host}"


async def _invitation_call(request: web.Request, call: Callable[[Principal], Awaitable[Any]],
                           status: int = 200) -> web.Response:
    principal = await _principal(request)
    try:
        return web.json_response(await call(principal), status=status)
    except ProtocolError as exc:
        return _refused(exc)


async def post_invitation(request: web.Request) -> web.Response:
    invitations, cid = _svc(request).invitations, request.match_info["id"]
    body = await json_or_400(request)
    return await _invitation_call(request, lambda who: invitations.create(who, cid, body, _origin(request)), 201)


async def get_invitations(request: web.Request) -> web.Response:
    invitations, cid = _svc(request).invitations, request.match_info["id"]

    async def listed(who: Principal) -> dict[str, Any]:
        return {"consultation_id": cid, "invitations": await invitations.list(who, cid)}
    return await _invitation_call(request, listed)


def _invitation_step(step: Step) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        invitations = _svc(request).invitations
        cid, inv_id = request.match_info["id"], request.match_info["inv_id"]

        async def done(who: Principal) -> dict[str, Any]:
            return {"invitation": await invitations.act(who, cid, inv_id, step)}
        return await _invitation_call(request, done)
    return handler


async def delete_participant(request: web.Request) -> web.Response:
    invitations = _svc(request).invitations
    cid, identity = request.match_info["id"], request.match_info["identity"]

    async def removed(who: Principal) -> dict[str, Any]:
        return {"invitation": await invitations.remove(who, cid, identity)}
    return await _invitation_call(request, removed)


async def claim_invitation(request: web.Request) -> web.Response:
    """The guest page's claim (no Authorization: the link's token is the credential)."""
    body = await json_or_400(request)
    if not isinstance(body, dict):
        return json_error(400, "bad_request", "body must be an object")
    try:
        return web.json_response(await _svc(request).invitations.claim(body.get("token"), body.get("name")))
    except InvitationGoneError as exc:
        return json_error(410, "invitation_gone", exc.gone.value)
    except ProtocolError as exc:
        return _refused(exc)


async def post_addendum(request: web.Request) -> web.Response:
    principal = await _principal(request, guest=True)
    body = await json_or_400(request)
    text = body.get("text") if isinstance(body, dict) else None
    try:
        addendum = await _svc(request).reports.add_addendum(principal, request.match_info["id"], text)
    except ProtocolError as exc:
        return _refused(exc)
    return web.json_response({"addendum": addendum}, status=201)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/directory", get_directory)
    app.router.add_put("/api/directory", put_directory)
    app.router.add_put(r"/api/directory/{kind:sites|clinicians}/{id}", put_entry)
    app.router.add_delete(r"/api/directory/{kind:sites|clinicians}/{id}", delete_entry)
    app.router.add_get("/api/consultations/{id}", get_consultation)
    app.router.add_put("/api/consultations/{id}/report", put_report)
    app.router.add_put("/api/consultations/{id}/report/draft", put_report_draft)
    app.router.add_get("/api/consultations/{id}/report", get_report)
    app.router.add_get("/api/consultations/{id}/journal", get_journal)
    app.router.add_get("/api/ice-servers", get_ice_servers)
    app.router.add_post("/api/consultations/{id}/report/addenda", post_addendum)
    app.router.add_post("/api/consultations/{id}/invitations", post_invitation)
    app.router.add_get("/api/consultations/{id}/invitations", get_invitations)
    app.router.add_delete("/api/consultations/{id}/invitations/{inv_id}", _invitation_step(Step.REVOKE))
    for step in (Step.ADMIT, Step.REFUSE, Step.CONSENT):
        app.router.add_post(f"/api/consultations/{{id}}/invitations/{{inv_id}}/{step.value}", _invitation_step(step))
    app.router.add_delete("/api/consultations/{id}/participants/{identity}", delete_participant)
    app.router.add_post("/api/invitations/claim", claim_invitation)
