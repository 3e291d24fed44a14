"""Interoperability with the health system: the report as PDF, FHIR R4, Pro Santé Connect sign-in.

Above signalling (it reads consultations, reports, the directory and the records
through the signalling service, and the stills through the recording component's
store), below the assembly. ``setup(app)`` adds:

* ``GET /api/consultations/{id}/report.pdf`` and ``GET /fhir/Encounter/{id}``,
  ``GET /fhir/Bundle/{id}`` (:mod:`interop.http`);
* ``GET /auth/oidc/login`` and ``GET /auth/oidc/callback`` (:mod:`interop.psc_http`), whose
  client (:class:`interop.psc.ProSanteConnect`) starts with the app when
  ``auth.oidc_token_url`` is set, on the store signalling opened.

Details: docs/interop.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

from aiohttp import web

from core.appkeys import SETTINGS
from interop import http, psc_http
from interop.appkeys import PRO_SANTE_CONNECT
from interop.psc import ProSanteConnect
from signalling.appkeys import STORE


def read_client_secret(path: str) -> str:
    """The client secret kept in ``path`` ("" when no file is named: a public client)."""
    if not path:
        return ""
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"auth.oidc_client_secret_file: cannot read {path}: {exc.strerror or exc}") from None
    if not secret:
        raise ValueError(f"auth.oidc_client_secret_file: {path} is empty")
    return secret


def setup(app: web.Application) -> None:
    async def sign_in(app: web.Application) -> AsyncIterator[None]:
        auth = app[SETTINGS].auth
        if auth.oidc_token_url:
            app[PRO_SANTE_CONNECT] = ProSanteConnect(auth, app[STORE], read_client_secret(auth.oidc_client_secret_file))
        yield

    app.cleanup_ctx.append(sign_in)
    http.add_routes(app)
    psc_http.add_routes(app)
