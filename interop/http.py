"""The report as PDF and the consultation as FHIR over REST.

* ``GET /api/consultations/{id}/report.pdf[?lang=fr|en]`` → ``application/pdf`` (the language:
  ``lang``, else the first of ``Accept-Language`` we speak, else French). Errors: the app's
  JSON shape.
* ``GET /fhir/Encounter/{id}`` → the Encounter; ``GET /fhir/Bundle/{id}`` → the collection
  Bundle (:mod:`interop.fhir`). ``application/fhir+json``; errors are an ``OperationOutcome``
  with the same status.

Access is the report's (``signalling.reports.Reports.check_reader``): the consultation's
physician, the site's nurses, admins (without the patient's data); anyone else gets the
404 of a consultation that does not exist, agents a 403. A consultation that never
reached a physician (``signalling.reports.REPORTABLE``) has nothing to export: 409. Each
read is journaled (``report.pdf``, ``fhir.read``; ids and codes only).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from core import appkeys
from core.auth import AuthError, Principal, bearer_token
from core.http import json_error
from core.vocabulary import Act, ConsultationId
from interop import fhir, report_pdf
from interop.dossier import Dossier, gather
from media.recording.appkeys import STILLS
from signalling.appkeys import SIGNALLING
from signalling.protocol import ProtocolError
from signalling.reports import REPORTABLE

logger = logging.getLogger(__name__)


class Refused(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def base_url(request: web.Request) -> str:
    """This server's base URL as its clients reach it (``server.public_url`` when set)."""
    public = request.app[appkeys.SETTINGS].server.public_url.rstrip("/")
    return public or f"{request.scheme}://{request.host}"


async def _dossier(request: web.Request, *, images: bool) -> tuple[Principal, Dossier]:
    principal = await request.app[appkeys.TOKENS].verify_access(bearer_token(request.headers.get("Authorization")))
    svc = request.app.get(SIGNALLING)
    if svc is None:
        raise Refused(503, "unavailable", "signalling is not running")
    c = await svc.get_any(request.match_info["id"])
    if c is None or not svc.visible(principal, c):
        raise Refused(404, "not_found", "no such consultation")
    try:
        svc.reports.check_reader(principal, c)
    except ProtocolError as exc:
        raise Refused(403, "forbidden", exc.message) from None
    if c.state not in REPORTABLE:
        raise Refused(409, "conflict", f"a {c.state.value} consultation has no report")
    return principal, await gather(svc, request.app.get(STILLS), principal, c, images=images)


def pdf_language(request: web.Request) -> str:
    asked = request.query.get("lang")
    if asked is not None:
        if asked not in report_pdf.LANGUAGES:
            raise Refused(400, "bad_request", f"lang must be one of {', '.join(report_pdf.LANGUAGES)}")
        return asked
    for part in request.headers.get("Accept-Language", "").split(","):
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in report_pdf.LANGUAGES:
            return tag
    return "fr"


async def get_report_pdf(request: web.Request) -> web.Response:
    try:
        lang = pdf_language(request)
        principal, dossier = await _dossier(request, images=True)
    except Refused as exc:
        return json_error(exc.status, exc.error, exc.reason)
    svc = request.app[SIGNALLING]
    body = await asyncio.to_thread(report_pdf.render, dossier, lang, issued_at=svc.clock())
    await svc.journal.append(Act.REPORT_PDF, actor=principal.subject,
                             consultation_id=ConsultationId(dossier.consultation_id), lang=lang,
                             status=dossier.report.status)
    return web.Response(body=body, content_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="compte-rendu-{dossier.consultation_id}.pdf"',
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def fhir_response(body: dict[str, Any], status: int = 200) -> web.Response:
    response = web.Response(text=json.dumps(body, ensure_ascii=False), status=status,
                            content_type=fhir.FHIR_JSON, charset="utf-8", headers={"Cache-Control": "no-store"})
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


async def _fhir(request: web.Request, kind: str) -> web.Response:
    try:
        principal, dossier = await _dossier(request, images=False)
    except AuthError as exc:
        return fhir_response(fhir.operation_outcome(401, exc.reason), 401)
    except Refused as exc:
        return fhir_response(fhir.operation_outcome(exc.status, exc.reason), exc.status)
    svc = request.app[SIGNALLING]
    if kind == "Bundle":
        resource = fhir.bundle(dossier, base_url(request), issued_at=svc.clock())
    else:
        resource = fhir.encounter(dossier)
    try:
        fhir.validated(resource)
    except ValueError as exc:  # pydantic's ValidationError: a resource that breaks its model is our bug
        logger.error("FHIR resource fails its model: %s", type(exc).__name__,
                     extra={"consultation": dossier.consultation_id, "resource": kind})
        return fhir_response(fhir.operation_outcome(500, "internal error; see the server log"), 500)
    await svc.journal.append(Act.FHIR_READ, actor=principal.subject,
                             consultation_id=ConsultationId(dossier.consultation_id), resource=kind)
    return fhir_response(resource)


async def get_encounter(request: web.Request) -> web.Response:
    return await _fhir(request, "Encounter")


async def get_bundle(request: web.Request) -> web.Response:
    return await _fhir(request, "Bundle")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/consultations/{id}/report.pdf", get_report_pdf)
    app.router.add_get("/fhir/Encounter/{id}", get_encounter)
    app.router.add_get("/fhir/Bundle/{id}", get_bundle)
