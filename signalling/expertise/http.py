"""The télé-expertise REST API (docs/expertise.md); paths are a contract.

Errors have the app's one shape ``{"error", "reason"}``. A case the caller may not
know of is the same 404 as no case at all.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from core import appkeys
from core.auth import Principal, bearer_token
from core.http import json_error, read_body
from signalling.expertise.appkeys import EXPERTISE
from signalling.expertise.case import Action, Refused
from signalling.expertise.service import ExpertiseService, NotFound
from signalling.http import json_or_400

_STATUS = {"bad_request": 400, "forbidden": 403, "not_found": 404, "conflict": 409, "unsupported": 415}
_ERRORS = {"unsupported": "unsupported_media_type"}


async def _principal(request: web.Request) -> Principal:
    principal = await request.app[appkeys.TOKENS].verify_access(bearer_token(request.headers.get("Authorization")))
    return _svc(request).resolve(principal)


def _svc(request: web.Request) -> ExpertiseService:
    return request.app[EXPERTISE]


async def _json(request: web.Request) -> Any:
    """The JSON body (an action without one: ``{}``), or signalling's 400."""
    return await json_or_400(request) if request.can_read_body else {}


def _refused(exc: Refused) -> web.Response:
    return json_error(_STATUS.get(exc.code, 400), _ERRORS.get(exc.code, exc.code), exc.message)


def _not_found() -> web.Response:
    return json_error(404, "not_found", "no such case")


async def create(request: web.Request) -> web.Response:
    principal = await _principal(request)
    svc = _svc(request)
    try:
        case = await svc.create(principal, await _json(request))
        _, who = await svc.load(principal, case.id)
    except Refused as exc:
        return _refused(exc)
    except NotFound:
        return _not_found()
    return web.json_response(svc.wire(case, who), status=201, headers={"Location": f"/api/expertise/{case.id}"})


async def list_cases(request: web.Request) -> web.Response:
    principal = await _principal(request)
    try:
        limit = int(request.query.get("limit", "200"))
    except ValueError:
        return json_error(400, "bad_request", "limit: must be an integer")
    try:
        cases = await _svc(request).list(principal, request.query.get("box", "all"),
                                         request.query.get("purpose"), limit)
    except Refused as exc:
        return _refused(exc)
    return web.json_response({"cases": cases})


async def get_case(request: web.Request) -> web.Response:
    principal = await _principal(request)
    try:
        return web.json_response(await _svc(request).view(principal, request.match_info["id"],
                                                          request.query.get("purpose")))
    except Refused as exc:
        return _refused(exc)
    except NotFound:
        return _not_found()


def _action(action: Action) -> Any:
    async def handler(request: web.Request) -> web.Response:
        principal = await _principal(request)
        svc = _svc(request)
        try:
            body = await _json(request)
            case_id = request.match_info["id"]
            if action is Action.NOTE:  # the thread: a question or a reply, by who writes
                case = await svc.message(principal, case_id, body)
            else:
                case = await svc.act(principal, case_id, action, body)
            _, who = await svc.load(principal, case.id)
        except Refused as exc:
            return _refused(exc)
        except NotFound:
            return _not_found()
        return web.json_response(svc.wire(case, who))
    return handler


async def add_attachment(request: web.Request) -> web.Response:
    """A photo (``Content-Type: image/jpeg|image/png``, ``?view=close_up``) or, as JSON, a
    consultation's still by reference (``{"consultation_id", "still_id", "view"?}``)."""
    principal = await _principal(request)
    svc = _svc(request)
    case_id = request.match_info["id"]
    try:
        if request.content_type == "application/json":
            case = await svc.add_still(principal, case_id, await _json(request))
        else:
            view = request.query.get("view")
            await svc.check_upload(principal, case_id, view)
            data = await read_body(request, svc.settings.upload_max_bytes)
            case = await svc.add_upload(principal, case_id, data, view)
        _, who = await svc.load(principal, case.id)
    except Refused as exc:
        return _refused(exc)
    except NotFound:
        return _not_found()
    return web.json_response(svc.wire(case, who), status=201)


async def get_attachment(request: web.Request) -> web.StreamResponse:
    principal = await _principal(request)
    try:
        found, data = await _svc(request).download(principal, request.match_info["id"],
                                                   request.match_info["att_id"])
    except Refused as exc:
        return _refused(exc)
    except NotFound:
        return json_error(404, "not_found", "no such attachment")
    return web.Response(body=data, content_type=found.mime,
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                 "Content-Disposition": f'inline; filename="{found.id}"'})


async def get_questionnaire(request: web.Request) -> web.Response:
    await _principal(request)
    q = _svc(request).questionnaires.current(request.match_info["specialty"])
    if q is None:
        return json_error(404, "not_found", "no questionnaire for this specialty")
    return web.json_response({**q.source, "ref": q.ref})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/expertise", create)
    app.router.add_get("/api/expertise", list_cases)
    # Before /{id}: "questionnaires" is not a case id.
    app.router.add_get("/api/expertise/questionnaires/{specialty}", get_questionnaire)
    app.router.add_get("/api/expertise/{id}", get_case)
    app.router.add_post("/api/expertise/{id}/attachments", add_attachment)
    app.router.add_get("/api/expertise/{id}/attachments/{att_id}", get_attachment)
    app.router.add_post("/api/expertise/{id}/messages", _action(Action.NOTE))
    for action in (Action.SUBMIT, Action.ANSWER, Action.CLOSE, Action.CANCEL, Action.TAKE, Action.DECLINE,
                   Action.ESCALATE):
        app.router.add_post(f"/api/expertise/{{id}}/{action.value}", _action(action))
