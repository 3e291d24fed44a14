"""Pro Santé Connect sign-in: the OpenID Connect authorization code flow, run by the server.

The flow (routes in :mod:`interop.psc_http`)::

    browser → GET /auth/oidc/login?next=/physician
            ← 302 provider's authorize URL (response_type=code, client_id, redirect_uri, scope,
              state, nonce, code_challenge = BASE64URL(SHA-256(verifier)), method S256, acr_values)
              + cookie tc_oidc=<state> (HttpOnly, SameSite=Lax, Path=/auth/oidc, 10 min)
    browser → provider (the professional signs in: CPS card, e-CPS app)
            ← 302 /auth/oidc/callback?code=...&state=...
    server  → token endpoint (code, code_verifier, redirect_uri; client secret by HTTP Basic)
            → the ID token checked against the provider's JWKS: signature (``auth.oidc_algorithms``),
              iss, aud (and azp), exp/iat, nonce, acr in ``auth.oidc_acr_values``
            → userinfo (same ``sub``): the RPPS number → the directory's clinician
            ← 302 <next>#token=<our access token>  (the page takes it from the fragment)

What a sign-in started here keeps until its callback (:class:`PendingSignIn`: state,
nonce, PKCE verifier, where to go) lives in the store's session records under
``oidc:<state>`` for :data:`PENDING_TTL_S`, so that any process may take the
callback, and is taken once: a replayed callback finds nothing. The cookie binds the
state to the browser that started the sign-in (no login CSRF).

A refusal is :class:`SignInRefused` (a ``cause`` code for the journal, a reason for
the person); nothing the provider sends is logged but codes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable
from urllib.parse import urlencode

import aiohttp
import jwt

from config.settings import AuthSettings
from signalling.directory import Clinician, Directory
from signalling.store import Store

logger = logging.getLogger(__name__)

PENDING_PREFIX = "oidc:"
PENDING_TTL_S = 600.0
"""How long a started sign-in waits for its callback."""
HTTP_TIMEOUT_S = 10.0
PHYSICIAN_PROFESSION = "10"
"""Pro Santé Connect's ``codeProfession`` of a médecin (TRE_G15-ProfessionSante)."""


class SignInRefused(Exception):
    """A sign-in refused: ``status`` (401, 403, 502), ``cause`` (a code for the journal), ``reason`` (for the person)."""

    def __init__(self, status: int, cause: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.cause = cause
        self.reason = reason


@dataclass(frozen=True)
class PendingSignIn:
    state: str
    nonce: str
    verifier: str
    next: str
    started_at: float

    @classmethod
    def new(cls, next_path: str, now: float) -> PendingSignIn:
        # 43+ characters of base64url: RFC 7636's minimum for a verifier, and unguessable state/nonce.
        return cls(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                   verifier=secrets.token_urlsafe(48), next=next_path, started_at=now)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PendingSignIn:
        return cls(**{k: data[k] for k in ("state", "nonce", "verifier", "next", "started_at")})


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA-256(verifier)) without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


def authorize_url(settings: AuthSettings, redirect_uri: str, pending: PendingSignIn) -> str:
    query = {
        "response_type": "code", "client_id": settings.oidc_client_id, "redirect_uri": redirect_uri,
        "scope": " ".join(settings.oidc_scopes), "state": pending.state, "nonce": pending.nonce,
        "code_challenge": pkce_challenge(pending.verifier), "code_challenge_method": "S256",
        "acr_values": " ".join(settings.oidc_acr_values),
    }
    separator = "&" if "?" in settings.oidc_authorize_url else "?"
    return settings.oidc_authorize_url + separator + urlencode(query)


def check_id_token_claims(claims: dict[str, Any], settings: AuthSettings, nonce: str) -> None:
    """What the signature check leaves to us: nonce, acr, azp (OpenID Connect Core §3.1.3.7)."""
    if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(claims["nonce"], nonce):
        raise SignInRefused(401, "nonce", "the ID token's nonce is not this sign-in's")
    if claims.get("acr") not in settings.oidc_acr_values:
        raise SignInRefused(401, "acr", f"authentication level {str(claims.get('acr'))[:32]!r} is not one of "
                            f"{', '.join(settings.oidc_acr_values)}")
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != settings.oidc_client_id:
        raise SignInRefused(401, "azp", "the ID token was issued to another client")


def rpps_of(userinfo: dict[str, Any]) -> str:
    """The RPPS number in Pro Santé Connect's userinfo: ``SubjectNameID`` (else ``preferred_username``)
    is the national id, ``8`` + RPPS."""
    national = userinfo.get("SubjectNameID") or userinfo.get("preferred_username") or ""
    if not isinstance(national, str):
        return ""
    if len(national) == 12 and national.startswith("8") and national.isdigit():
        return national[1:]
    return national if len(national) == 11 and national.isdigit() else ""


def professions_of(userinfo: dict[str, Any]) -> set[str]:
    """The ``codeProfession`` of each practice in ``SubjectRefPro.exercices`` (empty when not given)."""
    ref_pro = userinfo.get("SubjectRefPro")
    practices = ref_pro.get("exercices") if isinstance(ref_pro, dict) else None
    if not isinstance(practices, list):
        return set()
    return {str(p["codeProfession"]) for p in practices if isinstance(p, dict) and "codeProfession" in p}


def physician_of(userinfo: dict[str, Any], directory: Directory) -> Clinician:
    """The directory's clinician who signed in (by RPPS); a clear refusal otherwise."""
    rpps = rpps_of(userinfo)
    if not rpps:
        raise SignInRefused(403, "no_rpps", "the identity provider gave no RPPS number for this person")
    professions = professions_of(userinfo)
    if professions and PHYSICIAN_PROFESSION not in professions:
        raise SignInRefused(403, "not_physician", "this sign-in is for physicians (profession code 10)")
    clinician = directory.by_rpps(rpps)
    if clinician is None:
        raise SignInRefused(403, "unknown_rpps", f"RPPS {rpps} is not in this service's directory: ask an "
                            "administrator to add it to your clinician entry")
    return clinician


@dataclass
class ProSanteConnect:
    """The client side of the flow, for one process (its store is the one all processes share)."""

    settings: AuthSettings
    store: Store
    client_secret: str = ""
    clock: Callable[[], float] = time.time
    _jwks: jwt.PyJWKClient | None = None

    @property
    def jwks(self) -> jwt.PyJWKClient:
        if self._jwks is None:
            self._jwks = jwt.PyJWKClient(self.settings.oidc_jwks_url, cache_jwk_set=True, lifespan=300,
                                         timeout=HTTP_TIMEOUT_S)
        return self._jwks

    # -- login ---------------------------------------------------------------------------------
    async def begin(self, next_path: str, redirect_uri: str) -> tuple[str, PendingSignIn]:
        """Where to send the browser, and what was kept for the callback."""
        pending = PendingSignIn.new(next_path, self.clock())
        await self.store.put_session(PENDING_PREFIX + pending.state, pending.to_dict(), PENDING_TTL_S)
        return authorize_url(self.settings, redirect_uri, pending), pending

    async def take(self, state: str) -> PendingSignIn:
        """The sign-in started with ``state``, taken once (a second callback finds nothing)."""
        key = PENDING_PREFIX + state
        data = await self.store.get_session(key)
        await self.store.delete_session(key)
        if data is None:
            raise SignInRefused(401, "no_pending", "no sign-in is waiting for this answer (it expired, or was "
                                "already used): sign in again")
        return PendingSignIn.from_dict(data)

    # -- callback ------------------------------------------------------------------------------
    async def finish(self, pending: PendingSignIn, code: str, redirect_uri: str,
                     directory: Directory) -> tuple[Clinician, dict[str, Any]]:
        """Exchange ``code``, check the ID token and the userinfo: the clinician, and the ID token's claims."""
        tokens = await self._exchange(code, pending.verifier, redirect_uri)
        claims = await self._id_token_claims(str(tokens.get("id_token", "")), pending.nonce)
        access = tokens.get("access_token")
        if not isinstance(access, str) or not access:
            raise SignInRefused(502, "no_access_token", "the identity provider returned no access token")
        userinfo = await self._userinfo(access)
        if userinfo.get("sub") != claims["sub"]:
            raise SignInRefused(401, "sub", "the userinfo is not about the person the ID token names")
        return physician_of(userinfo, directory), claims

    async def _exchange(self, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": verifier, "client_id": self.settings.oidc_client_id}
        auth = aiohttp.BasicAuth(self.settings.oidc_client_id, self.client_secret) if self.client_secret else None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as http:
                async with http.post(self.settings.oidc_token_url, data=form, auth=auth) as response:
                    body = await response.json(content_type=None)
                    status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            logger.warning("token endpoint unreachable: %s", type(exc).__name__)
            raise SignInRefused(502, "token_endpoint", "the identity provider could not be reached") from None
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise SignInRefused(401, "code_refused", f"the identity provider refused the code "
                                f"({str(error or status)[:64]})")
        return body

    async def _id_token_claims(self, id_token: str, nonce: str) -> dict[str, Any]:
        if not id_token:
            raise SignInRefused(502, "no_id_token", "the identity provider returned no ID token")
        try:
            key = await asyncio.to_thread(self.jwks.get_signing_key_from_jwt, id_token)
        except jwt.PyJWKClientError as exc:
            logger.warning("provider keys: %s", type(exc).__name__)
            raise SignInRefused(502, "jwks", "the identity provider's keys could not be read") from None
        except jwt.InvalidTokenError:
            raise SignInRefused(401, "id_token", "the ID token is malformed") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token, key.key, algorithms=list(self.settings.oidc_algorithms),
                audience=self.settings.oidc_client_id, issuer=self.settings.oidc_issuer,
                leeway=self.settings.leeway_s, options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.InvalidTokenError as exc:
            raise SignInRefused(401, "id_token", f"the ID token is not valid: {exc}") from None
        if float(claims["exp"]) - self.clock() > self.settings.max_token_lifetime_s + self.settings.leeway_s:
            raise SignInRefused(401, "id_token", "the ID token lives longer than auth.max_token_lifetime_s")
        check_id_token_claims(claims, self.settings, nonce)
        return claims

    async def _userinfo(self, access_token: str) -> dict[str, Any]:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as http:
                async with http.get(self.settings.oidc_userinfo_url,
                                    headers={"Authorization": f"Bearer {access_token}"}) as response:
                    status = response.status
                    kind = response.content_type
                    raw = await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            logger.warning("userinfo endpoint unreachable: %s", type(exc).__name__)
            raise SignInRefused(502, "userinfo", "the identity provider's userinfo could not be read") from None
        if status != 200:
            raise SignInRefused(502, "userinfo", f"the identity provider's userinfo answered {status}")
        if kind == "application/jwt":  # a signed userinfo: checked like the ID token (no nonce)
            try:
                key = await asyncio.to_thread(self.jwks.get_signing_key_from_jwt, raw.decode("ascii"))
                info: Any = jwt.decode(raw.decode("ascii"), key.key, algorithms=list(self.settings.oidc_algorithms),
                                       audience=self.settings.oidc_client_id, issuer=self.settings.oidc_issuer,
                                       leeway=self.settings.leeway_s)
            except (jwt.InvalidTokenError, jwt.PyJWKClientError, UnicodeDecodeError):
                raise SignInRefused(401, "userinfo", "the signed userinfo is not valid") from None
        else:
            try:
                info = json.loads(raw)
            except ValueError:
                raise SignInRefused(502, "userinfo", "the identity provider's userinfo is not JSON") from None
        if not isinstance(info, dict):
            raise SignInRefused(502, "userinfo", "the identity provider's userinfo is not an object")
        return info
