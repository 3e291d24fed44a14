"""A small OpenID provider for the tests, on loopback: discovery, JWKS, authorize, token, userinfo.

It plays Pro Santé Connect: authorization code flow with PKCE (S256 only), ``acr`` in the ID
token, userinfo with ``SubjectNameID`` (``8`` + RPPS) and ``SubjectRefPro``. The person signs in
at once (no page). Knobs let a test make it misbehave (another nonce, another ``acr``) and see
what it was asked (``authorize_requests``, ``token_requests``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "teleconsult-test"
CLIENT_SECRET = "s3cret-of-the-test-client"
KID = "test-key-1"


def physician_userinfo(rpps: str, sub: str = "psc-sub-1") -> dict[str, Any]:
    return {"sub": sub, "SubjectNameID": "8" + rpps, "preferred_username": "8" + rpps,
            "given_name": "Camille", "family_name": "CŒUR",
            "SubjectRefPro": {"codeCivilite": "DR", "exercices": [{"codeProfession": "10",
                                                                   "codeSavoirFaire": "SM04"}]}}


@dataclass
class Provider:
    userinfo: dict[str, Any]
    acr: str = "eidas1"
    nonce_override: str | None = None
    """Put this nonce in the ID token instead of the one asked (an ID token of another sign-in)."""
    redirect_uri: str = ""
    url: str = ""
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    used_codes: set[str] = field(default_factory=set)
    access_tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    key: Any = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    server: TestServer | None = None

    # -- endpoints -----------------------------------------------------------------------------
    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token", "userinfo_endpoint": f"{self.url}/userinfo",
            "jwks_uri": f"{self.url}/jwks", "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"], "acr_values_supported": ["eidas1"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"]})

    async def jwks(self, request: web.Request) -> web.Response:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return web.json_response({"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]})

    async def authorize(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.authorize_requests.append(q)
        if q.get("client_id") != CLIENT_ID or q.get("redirect_uri") != self.redirect_uri:
            return web.json_response({"error": "invalid_request"}, status=400)
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return web.json_response({"error": "invalid_request", "error_description": "PKCE S256 required"},
                                     status=400)
        code = secrets.token_urlsafe(24)
        self.codes[code] = {"challenge": q["code_challenge"], "nonce": q.get("nonce"),
                            "redirect_uri": q["redirect_uri"]}
        raise web.HTTPFound(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q.get('state', '')})}")

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append(form)
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        code = form.get("code", "")
        grant = self.codes.get(code)
        if form.get("grant_type") != "authorization_code" or grant is None or code in self.used_codes:
            return web.json_response({"error": "invalid_grant"}, status=400)
        self.used_codes.add(code)  # one use, even a failed one (RFC 6749 §4.1.2)
        verifier = form.get("code_verifier")
        if not verifier:
            return web.json_response({"error": "invalid_request", "error_description": "code_verifier missing"},
                                     status=400)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if challenge != grant["challenge"] or form.get("redirect_uri") != grant["redirect_uri"]:
            return web.json_response({"error": "invalid_grant"}, status=400)
        now = int(time.time())
        claims = {"iss": self.url, "aud": CLIENT_ID, "sub": self.userinfo["sub"], "iat": now, "exp": now + 300,
                  "auth_time": now, "nonce": self.nonce_override or grant["nonce"], "acr": self.acr}
        id_token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})
        access = secrets.token_urlsafe(24)
        self.access_tokens[access] = self.userinfo
        return web.json_response({"access_token": access, "token_type": "Bearer", "expires_in": 300,
                                  "id_token": id_token, "scope": "openid scope_all"})

    async def userinfo_endpoint(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        info = self.access_tokens.get(token)
        if info is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response(info)

    # -- lifetime ------------------------------------------------------------------------------
    async def start(self) -> Provider:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_get("/userinfo", self.userinfo_endpoint)
        self.server = TestServer(app, host="127.0.0.1", port=0)
        await self.server.start_server()
        self.url = str(self.server.make_url("")).rstrip("/")
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
