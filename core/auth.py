"""Tokens: who a request is (Principal) and what a room token allows (RoomGrant).

Two kinds of JWT, both with ``iss``, ``aud``, ``sub``, ``iat`` and ``exp``
required and a ``typ`` claim that keeps one kind from being used as the other:

* access tokens (``typ=access``): ``role`` (nurse, physician, agent, admin),
  ``site`` for nurses and device agents, ``specialties`` for physicians;
* room tokens (``typ=room``): ``room``, ``role``, ``publish`` (the sources the
  holder may publish, default none), ``subscribe`` (default false),
  ``subscribe_sources`` (the sources it may receive when it subscribes; absent:
  every one) and ``command`` (may send device commands, default false);
* guest access tokens (``typ=guest``, issue 14): what an invitation link gives once
  claimed: ``role`` (interpreter, specialist, guest), ``consultation`` (the one it
  opens) and ``name``; the subject is the invitation's id. Only the routes that say
  so take one (``verify_access(..., guest=True)``): every other refuses it as not
  an access token, and no other kind of token may carry a guest role.

The accepted algorithm is the one in settings, never the token's header. Tokens
of an external OpenID provider are accepted as access tokens when settings name
its issuer and JWKS URL; their keys are fetched asynchronously and cached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization

from config.settings import AuthSettings
from core.vocabulary import DEVICES, Role, Source

logger = logging.getLogger(__name__)

ACCESS = "access"
ROOM = "room"
GUEST = "guest"

# msid tokens (RFC 8830 / RFC 4566 token chars): identities end up in a=msid lines.
_IDENTITY = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`{|}~]{1,64}$")


class AuthError(Exception):
    """A token was refused; ``reason`` is safe to show to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    """Who an access token says the caller is."""

    subject: str
    role: Role
    site: str | None = None
    """The assisted site of a nurse or device agent."""
    specialties: tuple[str, ...] = ()
    name: str = ""
    expires_at: float = 0.0
    issuer: str = ""
    consultation: str | None = None
    """The one consultation a guest's token opens (None for everyone else)."""


@dataclass(frozen=True)
class RoomGrant:
    """What a room token allows its holder in one room (default deny)."""

    room: str
    identity: str
    role: Role
    publish: tuple[str, ...] = ()
    subscribe: bool = False
    command: bool = False
    expires_at: float = 0.0
    subscribe_sources: tuple[str, ...] | None = None
    """The sources it may receive when ``subscribe``; None: every one."""

    def may_publish(self, source: str) -> bool:
        return source in self.publish

    def may_subscribe(self, source: str) -> bool:
        return self.subscribe and (self.subscribe_sources is None or source in self.subscribe_sources)

    @property
    def sees_devices(self) -> bool:
        """Whether the devices' data (status, vitals, still previews, commands) is for this seat: it
        publishes a device (the agent) or may receive one."""
        return any(Source(s).is_device for s in self.publish) or any(self.may_subscribe(d.value) for d in DEVICES)


_CLAIM_TYPES: dict[str, tuple[type, ...]] = {
    "sub": (str,), "typ": (str,), "jti": (str,), "site": (str,), "name": (str,),
    "specialties": (list, str), "room": (str,), "publish": (list,), "subscribe": (bool,), "command": (bool,),
    "subscribe_sources": (list,), "consultation": (str,),
    "iat": (int, float), "exp": (int, float), "nbf": (int, float),
}
"""Claims whose values we read, and the JSON types they may have (absent or null: not given)."""
_LIST_CLAIMS = ("specialties", "publish", "subscribe_sources")
"""List claims hold strings only."""
_TIME_CLAIMS = ("iat", "exp", "nbf")
_ID_CLAIMS = ("sub", "site", "jti", "room", "consultation")
MAX_ID_CHARS = 128
"""Ids in claims go into the journal and logs as they are (``signalling.journal`` holds ids of at
most 128 characters): a longer or unprintable one is refused at the door, not at the journal
(where it was a 500 after the work was done)."""
MAX_NAME_CHARS = 256
_TIME_LIMIT = 1e12
"""Unix times beyond this (year 33658) are refused before any arithmetic: PyJWT accepts
``"iat": "5"`` (it calls ``int()``) and ``10**400`` (which no float can hold)."""


def check_claim_types(claims: dict[str, Any], role_claim: str = "role") -> None:
    """Refuse (``AuthError``: a 401 or ``auth_failed``) a signed token whose claims have the
    wrong JSON type (``specialties: 5``), instead of failing later on them."""
    types = {**_CLAIM_TYPES, role_claim: (str,)}
    for name, allowed in types.items():
        value = claims.get(name)
        if value is None:
            continue
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise AuthError(f"token claim {name!r} has the wrong type")
        if name in _LIST_CLAIMS and isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise AuthError(f"token claim {name!r} must be a list of strings")
        if isinstance(value, (int, float)) and name in _TIME_CLAIMS and not -_TIME_LIMIT < value < _TIME_LIMIT:
            raise AuthError(f"token claim {name!r} is out of range")
        if name in _ID_CLAIMS and isinstance(value, str) and not (0 < len(value) <= MAX_ID_CHARS
                                                                and value.isprintable()):
            raise AuthError(f"token claim {name!r} must be 1-{MAX_ID_CHARS} printable characters")
        if name == "name" and isinstance(value, str) and len(value) > MAX_NAME_CHARS:
            raise AuthError(f"token claim 'name' is longer than {MAX_NAME_CHARS} characters")


def _check_ascii(token: str) -> None:
    """A JWT is base64url and dots: anything else (a lone surrogate from a JSON escape or a
    header byte that is not UTF-8) is refused here, where PyJWT would raise
    ``UnicodeEncodeError`` (a 500, an ``internal`` error)."""
    if not token.isascii():
        raise AuthError("token malformed")


def validate_identity(identity: str) -> str:
    if not _IDENTITY.match(identity):
        raise ValueError(f"identity {identity!r} must be 1-64 msid token characters")
    return identity


def _parse_sources(sources: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for s in sources:
        name = Source.parse(s).value
        if name not in out:
            out.append(name)
    return tuple(out)


DEVELOPMENT_SIGNING_KEY_FILE = "dev-signing.key"
"""Under ``server.data_dir``; refused in production (``teleconsult.production``)."""


def development_key(data_dir: str) -> str:
    """A signing secret made once under ``data_dir`` so that the CLI and the server agree."""
    path = Path(data_dir) / DEVELOPMENT_SIGNING_KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.encode())
    finally:
        os.close(fd)
    logger.warning("generated a development signing key", extra={"path": str(path)})
    return key


@dataclass
class _Keys:
    signing: Any
    verifying: Any


def _load_keys(settings: AuthSettings, data_dir: str) -> _Keys:
    if settings.algorithm.startswith("HS"):
        secret = settings.signing_key or development_key(data_dir)
        return _Keys(secret, secret)
    if not settings.signing_key and not settings.verify_key:
        raise AuthError(f"auth.algorithm {settings.algorithm} needs auth.signing_key (a PEM file)")
    private = None
    if settings.signing_key:
        private = serialization.load_pem_private_key(Path(settings.signing_key).read_bytes(), None)
    if settings.verify_key:
        public = serialization.load_pem_public_key(Path(settings.verify_key).read_bytes())
    else:
        assert private is not None
        public = private.public_key()
    return _Keys(private, public)


JwksFetcher = Callable[[str], Awaitable[dict[str, Any]]]


async def fetch_jwks(url: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(url) as response:
            response.raise_for_status()
            data: dict[str, Any] = await response.json(content_type=None)
            return data


@dataclass
class TokenService:
    """Signs and verifies our tokens; verifies an external provider's access tokens."""

    settings: AuthSettings
    data_dir: str
    jwks_fetcher: JwksFetcher = fetch_jwks
    clock: Callable[[], float] = time.time
    _keys: _Keys = field(init=False)
    _jwks: jwt.PyJWKSet | None = field(default=None, init=False)
    _jwks_fetched_at: float = field(default=0.0, init=False)
    _jwks_lock: asyncio.Lock | None = field(default=None, init=False)
    guest_standing: Callable[[Principal], Awaitable[bool]] | None = field(default=None, init=False)
    """Whether a guest's invitation still stands (set by signalling, which keeps invitations): a
    refused, revoked or removed guest's token, or one of a consultation that ended, opens nothing
    though it has not expired. None: no guest token is accepted."""

    def __post_init__(self) -> None:
        self._keys = _load_keys(self.settings, self.data_dir)

    # -- issuing ---------------------------------------------------------
    def _sign(self, claims: dict[str, Any], ttl: int) -> str:
        if ttl > self.settings.max_token_lifetime_s:
            raise ValueError(f"a token lives at most auth.max_token_lifetime_s "
                             f"({self.settings.max_token_lifetime_s} s), not {ttl} s")
        now = int(self.clock())
        body = {
            "iss": self.settings.issuer,
            "aud": self.settings.audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
            "jti": secrets.token_hex(8),
            **claims,
        }
        return jwt.encode(body, self._keys.signing, algorithm=self.settings.algorithm)

    def issue_access(
        self,
        role: Role | str,
        subject: str,
        *,
        site: str | None = None,
        specialties: Iterable[str] = (),
        name: str = "",
        ttl: int | None = None,
    ) -> str:
        role = Role(role)
        if role.invited:
            raise ValueError(f"a {role.value} gets a guest token (issue_guest), not an access token")
        if role in (Role.NURSE, Role.AGENT) and not site:
            raise ValueError(f"a {role.value} token needs a site")
        if not subject:
            raise ValueError("a token needs a subject")
        claims: dict[str, Any] = {"typ": ACCESS, "sub": subject, "role": role.value}
        if site:
            claims["site"] = site
        specs = [s for s in specialties if s]
        if specs:
            claims["specialties"] = specs
        if name:
            claims["name"] = name
        return self._sign(claims, ttl or self.settings.access_ttl_s)

    def issue_guest(self, role: Role | str, invitation: str, consultation: str, *, name: str = "",
                    ttl: int | None = None) -> str:
        """A guest's access token: the invitation ``invitation`` claimed, for ``consultation`` only."""
        role = Role(role)
        if not role.invited:
            raise ValueError(f"{role.value} is not a guest role")
        if not invitation or not consultation:
            raise ValueError("a guest token needs its invitation and consultation")
        claims: dict[str, Any] = {"typ": GUEST, "sub": invitation, "role": role.value, "consultation": consultation}
        if name:
            claims["name"] = name
        return self._sign(claims, ttl or self.settings.access_ttl_s)

    def issue_room(
        self,
        room: str,
        identity: str,
        *,
        role: Role | str,
        publish: Iterable[str] = (),
        subscribe: bool = False,
        command: bool = False,
        subscribe_sources: Iterable[str] | None = None,
        ttl: int | None = None,
    ) -> str:
        validate_identity(identity)
        if not room:
            raise ValueError("a room token needs a room")
        claims = {
            "typ": ROOM,
            "sub": identity,
            "room": room,
            "role": Role(role).value,
            "publish": list(_parse_sources(publish)),
            "subscribe": bool(subscribe),
            "command": bool(command),
        }
        if subscribe_sources is not None:
            claims["subscribe_sources"] = list(_parse_sources(subscribe_sources))
        return self._sign(claims, ttl or self.settings.room_ttl_s)

    # -- verifying -------------------------------------------------------
    def _decode_local(self, token: str) -> dict[str, Any]:
        _check_ascii(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._keys.verifying,
                algorithms=[self.settings.algorithm],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_s,
                options={"require": ["exp", "iat", "aud", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token has the wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token has the wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("token algorithm not accepted") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature invalid") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"token invalid: {exc}") from None
        check_claim_types(claims)
        if claims.get("iat", 0) > self.clock() + self.settings.leeway_s:
            raise AuthError("token issued in the future")
        self._check_lifetime(claims)
        return claims

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        """A token may live at most ``auth.max_token_lifetime_s``: from its ``iat``, and from now
        (an ``exp`` in the year 5000 is refused, whatever ``iat`` says)."""
        cap = self.settings.max_token_lifetime_s + self.settings.leeway_s
        exp = float(claims["exp"])
        if exp - self.clock() > cap or exp - float(claims.get("iat", exp)) > cap:
            raise AuthError("token lifetime exceeds auth.max_token_lifetime_s")

    def verify_room(self, token: str, room: str | None = None) -> RoomGrant:
        """A room token's grant; ``room`` given: it must be that room's."""
        claims = self._decode_local(token)
        if claims.get("typ") != ROOM:
            raise AuthError("not a room token")
        try:
            grant = RoomGrant(
                room=str(claims["room"]),
                identity=validate_identity(str(claims["sub"])),
                role=Role(claims["role"]),
                publish=_parse_sources(claims.get("publish") or ()),
                subscribe=claims.get("subscribe") is True,
                command=claims.get("command") is True,
                expires_at=float(claims["exp"]),
                subscribe_sources=None if claims.get("subscribe_sources") is None
                else _parse_sources(claims["subscribe_sources"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise AuthError(f"room token malformed: {exc}") from None
        if room is not None and grant.room != room:
            raise AuthError("room token is for another room")
        return grant

    async def verify_access(self, token: str, *, guest: bool = False) -> Principal:
        """An access token's principal, ours or the external provider's; ``guest``: a guest's
        access token (``issue_guest``) is taken too."""
        _check_ascii(token)
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise AuthError("token malformed") from None
        if self.settings.oidc_issuer and unverified.get("iss") == self.settings.oidc_issuer:
            return await self._verify_oidc(token)
        principal = self.verify_access_local(token, guest=guest)
        if principal.role.invited and (self.guest_standing is None or not await self.guest_standing(principal)):
            raise AuthError("this invitation no longer stands")
        return principal

    def verify_access_local(self, token: str, *, guest: bool = False) -> Principal:
        """Synchronous check of one of our own access tokens (CLI, tests)."""
        claims = self._decode_local(token)
        typ = claims.get("typ")
        if typ == GUEST and guest:
            return self._guest(claims)
        if typ != ACCESS:
            raise AuthError("a guest token does not open this" if typ == GUEST else "not an access token")
        return self._principal(claims)

    def _guest(self, claims: dict[str, Any]) -> Principal:
        principal = self._principal(claims, guest=True)
        consultation = claims.get("consultation")
        if not isinstance(consultation, str):
            raise AuthError("a guest token must name its consultation")
        return replace(principal, consultation=consultation)

    def _principal(self, claims: dict[str, Any], role_claim: str = "role", guest: bool = False) -> Principal:
        try:
            role = Role(claims[role_claim])
        except (KeyError, ValueError):
            raise AuthError("token has no valid role") from None
        if role.invited is not guest:  # a guest role only from a guest token, and only a guest role there
            raise AuthError("token has no valid role")
        site = claims.get("site")
        if role in (Role.NURSE, Role.AGENT) and not isinstance(site, str):
            raise AuthError(f"a {role.value} token must name its site")
        specialties = claims.get("specialties") or ()
        if isinstance(specialties, str):
            specialties = specialties.split(",")
        return Principal(
            subject=str(claims["sub"]),
            role=role,
            site=site if isinstance(site, str) else None,
            specialties=tuple(str(s) for s in specialties),
            name=str(claims.get("name", "")),
            expires_at=float(claims["exp"]),
            issuer=str(claims.get("iss", "")),
        )

    async def _oidc_keys(self, force: bool = False) -> jwt.PyJWKSet:
        if self._jwks_lock is None:
            self._jwks_lock = asyncio.Lock()
        async with self._jwks_lock:
            fresh = self.clock() - self._jwks_fetched_at < 300
            if self._jwks is None or (force and not fresh):
                try:
                    data = await self.jwks_fetcher(self.settings.oidc_jwks_url)
                    self._jwks = jwt.PyJWKSet.from_dict(data)
                    self._jwks_fetched_at = self.clock()
                except Exception as exc:  # network, JSON, key format: all mean "cannot verify"
                    logger.warning("cannot fetch the provider's JWKS: %s", exc)
                    raise AuthError("identity provider keys unavailable") from None
            return self._jwks

    async def _verify_oidc(self, token: str) -> Principal:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise AuthError("token malformed") from None
        keys = await self._oidc_keys()
        key = next((k for k in keys.keys if k.key_id == kid), None)
        if key is None:  # the provider may have rotated its keys
            keys = await self._oidc_keys(force=True)
            key = next((k for k in keys.keys if k.key_id == kid), None)
        if key is None:
            raise AuthError("token signed by an unknown provider key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=list(self.settings.oidc_algorithms),
                audience=self.settings.oidc_audience or self.settings.audience,
                issuer=self.settings.oidc_issuer,
                leeway=self.settings.leeway_s,
                options={"require": ["exp", "iat", "aud", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"provider token invalid: {exc}") from None
        check_claim_types(claims, self.settings.oidc_role_claim)
        self._check_lifetime(claims)
        return self._principal(claims, role_claim=self.settings.oidc_role_claim)


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header."""
    if not header:
        raise AuthError("missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return token.strip()
