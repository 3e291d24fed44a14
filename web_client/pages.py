"""Serve the browser pages: ``/`` (landing), ``/nurse``, ``/physician``, ``/admin``, ``/expertise``
(télé-expertise: the requester's cases and the expert's inbox), ``/join`` (a guest invited into
a consultation: ``/join#invite=<token>``), ``/static/``.

The pages are static files under ``web_client/static``: one HTML shell per page
and plain ES modules (no build step). Sign-in happens in the page: a
development link carries the access token in the URL fragment (never sent to
the server); in production the page asks ``GET /api/auth/config`` where the
OpenID provider is and sends the person there.

Every page response carries a strict Content-Security-Policy: scripts and
styles only from this origin, media only from this origin, HTTP requests only to
this origin and the media nodes of ``server.media_origins`` (``serve
--media-workers`` adds its workers'), sockets to ws:/wss:.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from aiohttp import web

from core import appkeys
from core.http import Handler

STATIC = Path(__file__).resolve().parent / "static"

PAGES = {
    "/": "index.html",
    "/nurse": "nurse.html",
    "/physician": "physician.html",
    "/admin": "admin.html",
    "/expertise": "expertise.html",
    "/join": "join.html",
}

def csp(media_origins: Sequence[str] = ()) -> str:
    """The pages' Content-Security-Policy; ``media_origins`` (``server.media_origins``: media nodes
    on other origins, the workers of ``serve --media-workers``) may be fetched from (WHIP/WHEP)
    besides this origin. Sockets may go to any ws:/wss: origin already (a node's ``/ws``)."""
    connect = " ".join(["'self'", *dict.fromkeys(o.rstrip("/") for o in media_origins), "ws:", "wss:"])
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        f"connect-src {connect}",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ])


CSP = csp()
"""The policy of a server whose media nodes are all on its own origin."""


def security_headers(media_origins: Sequence[str] = ()) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp(media_origins),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": "camera=(self), microphone=(self), geolocation=()",
        # The pages change with the server; ES modules are small: always revalidate.
        "Cache-Control": "no-cache",
    }


SECURITY_HEADERS = security_headers()


def _page(filename: str, headers: Mapping[str, str]):  # type: ignore[no-untyped-def]
    path = STATIC / filename

    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path, headers=headers)

    return handler


async def auth_config(request: web.Request) -> web.Response:
    """Where the pages send people to sign in; empty strings when no OpenID provider is set."""
    auth = request.app[appkeys.SETTINGS].auth
    return web.json_response({
        "oidc_authorize_url": auth.oidc_authorize_url if auth.oidc_issuer or auth.oidc_authorize_url else "",
        "oidc_client_id": auth.oidc_client_id,
        "issuer": auth.oidc_issuer,
    }, headers={"Cache-Control": "no-store"})


@web.middleware
async def _static_not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A static file name the file system refuses (longer than it allows: ``ENAMETOOLONG``; a
    loop of links) is a file that is not there: 404, where aiohttp lets the ``OSError`` out (a 500)."""
    if not request.path.startswith("/static/"):
        return await handler(request)
    try:
        return await handler(request)
    except OSError:
        raise web.HTTPNotFound() from None


async def _static_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/static/"):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-cache")


def setup(app: web.Application) -> None:
    headers = security_headers(app[appkeys.SETTINGS].server.media_origins)
    for route, filename in PAGES.items():
        app.router.add_get(route, _page(filename, headers))
    app.router.add_get("/api/auth/config", auth_config)
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    app.middlewares.append(_static_not_found)
    app.on_response_prepare.append(_static_headers)
