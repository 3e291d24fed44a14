"""Pro Santé Connect sign-in routes: ``GET /auth/oidc/login`` and ``GET /auth/oidc/callback``.

On when ``auth.oidc_token_url`` is set (else both answer 404). The flow and its checks are
:mod:`interop.psc`'s; here: the browser's side (the state cookie, the redirects) and
minting our access token (``core.auth.TokenService.issue_access``, physician role, the
directory's id as subject, its specialties and name). Successes and refusals are
journaled (``auth.signin``, ``auth.refused`` with a ``cause`` code); refusals answer in
the app's JSON error shape with a reason the person can act on.
"""

from __future__ import annotations

import hmac
import logging
import re

from aiohttp import web

from core import appkeys
from core.http import json_error
from core.vocabulary import Act, Role
from interop.appkeys import PRO_SANTE_CONNECT
from interop.http import base_url
from interop.psc import PENDING_TTL_S, SignInRefused
from signalling.appkeys import SIGNALLING

logger = logging.getLogger(__name__)

COOKIE = "tc_oidc"
COOKIE_PATH = "/auth/oidc"
DEFAULT_NEXT = "/physician"
_LOCAL_PATH = re.compile(r"^/[A-Za-z0-9_\-/]{0,64}$")
"""Where a sign-in may send the browser back: a path of this site (never ``//host``)."""


def _next(request: web.Request) -> str:
    wanted = request.query.get("next", DEFAULT_NEXT)
    if not _LOCAL_PATH.match(wanted) or wanted.startswith("//"):
        return DEFAULT_NEXT
    return wanted


def redirect_uri(request: web.Request) -> str:
    return f"{base_url(request)}{COOKIE_PATH}/callback"


async def login(request: web.Request) -> web.StreamResponse:
    psc = request.app.get(PRO_SANTE_CONNECT)
    if psc is None:
        return json_error(404, "not_found", "sign-in through an OpenID provider is not configured")
    url, pending = await psc.begin(_next(request), redirect_uri(request))
    response = _redirect(url)
    response.set_cookie(COOKIE, pending.state, max_age=int(PENDING_TTL_S), path=COOKIE_PATH, httponly=True,
                        samesite="Lax", secure=base_url(request).startswith("https://"))
    return response


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


async def _refuse(request: web.Request, exc: SignInRefused) -> web.Response:
    logger.info("sign-in refused", extra={"cause": exc.cause})
    svc = request.app.get(SIGNALLING)
    if svc is not None:
        await svc.journal.append(Act.AUTH_REFUSED, actor="oidc", cause=exc.cause)
    response = json_error(exc.status, "unauthorized" if exc.status == 401 else "forbidden" if exc.status == 403
                          else "bad_gateway", exc.reason)
    response.del_cookie(COOKIE, path=COOKIE_PATH)
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    psc = request.app.get(PRO_SANTE_CONNECT)
    svc = request.app.get(SIGNALLING)
    if psc is None or svc is None:
        return json_error(404, "not_found", "sign-in through an OpenID provider is not configured")
    query = request.query
    try:
        if "error" in query:
            raise SignInRefused(401, "provider_error", f"the identity provider refused the sign-in "
                                f"({query['error'][:64]})")
        state, code = query.get("state", ""), query.get("code", "")
        cookie = request.cookies.get(COOKIE, "")
        if not state or not cookie or not hmac.compare_digest(state, cookie):
            raise SignInRefused(401, "state", "this answer is not for a sign-in started in this browser")
        pending = await psc.take(state)
        if not code:
            raise SignInRefused(401, "no_code", "the identity provider sent no code")
        clinician, claims = await psc.finish(pending, code, redirect_uri(request), svc.directory)
    except SignInRefused as exc:
        return await _refuse(request, exc)
    token = request.app[appkeys.TOKENS].issue_access(Role.PHYSICIAN, clinician.id, specialties=clinician.specialties,
                                                     name=clinician.name)
    await svc.journal.append(Act.AUTH_SIGNIN, actor=clinician.id, acr=str(claims.get("acr", ""))[:32])
    logger.info("signed in through the identity provider", extra={"subject": clinician.id})
    # The page takes the token from the fragment (never sent to a server) and clears the address bar.
    response = _redirect(f"{pending.next}#token={token}")
    response.del_cookie(COOKIE, path=COOKIE_PATH)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{COOKIE_PATH}/login", login)
    app.router.add_get(f"{COOKIE_PATH}/callback", callback)
