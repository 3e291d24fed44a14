"""The interop component's typed app keys."""

from __future__ import annotations

from aiohttp import web

from interop.psc import ProSanteConnect

PRO_SANTE_CONNECT = web.AppKey("pro_sante_connect", ProSanteConnect)
"""The sign-in client, when ``auth.oidc_token_url`` is set (absent otherwise)."""
