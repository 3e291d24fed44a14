import time
from pathlib import Path

import jwt
import pytest

from config.settings import AuthSettings
from core.auth import AuthError, Role, TokenService, bearer_token

SECRET = "s" * 40


def service(tmp_path: Path, **kw: object) -> TokenService:
    return TokenService(AuthSettings(signing_key=SECRET, **kw), str(tmp_path))  # type: ignore[arg-type]


async def test_access_round_trip(tmp_path: Path) -> None:
    tokens = service(tmp_path)
    principal = await tokens.verify_access(tokens.issue_access("nurse", "n1", site="cabin-1"))
    assert (principal.subject, principal.role, principal.site) == ("n1", Role.NURSE, "cabin-1")


def test_nurse_needs_site(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a site"):
        service(tmp_path).issue_access("nurse", "n1")


def test_room_token_grants(tmp_path: Path) -> None:
    tokens = service(tmp_path)
    grant = tokens.verify_room(tokens.issue_room("r1", "agent-1", role="agent", publish=["stethoscope"]), "r1")
    assert grant.may_publish("stethoscope") and not grant.may_publish("camera")
    assert grant.subscribe is False and grant.command is False
    with pytest.raises(AuthError, match="another room"):
        tokens.verify_room(tokens.issue_room("r1", "a", role="nurse"), "r2")


def test_room_and_access_tokens_are_not_interchangeable(tmp_path: Path) -> None:
    tokens = service(tmp_path)
    with pytest.raises(AuthError, match="not a room token"):
        tokens.verify_room(tokens.issue_access("physician", "d1"))
    with pytest.raises(AuthError, match="not an access token"):
        tokens.verify_access_local(tokens.issue_room("r", "d1", role="physician"))


def test_identity_must_be_msid_safe(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="msid token"):
        service(tmp_path).issue_room("r", "dr smith", role="physician")


def claims(**over: object) -> dict[str, object]:
    now = int(time.time())
    body: dict[str, object] = {"iss": "teleconsult", "aud": "teleconsult", "sub": "d1", "iat": now,
                               "exp": now + 3600, "typ": "access", "role": "physician"}
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize(("body", "reason"), [
    (claims(exp=int(time.time()) - 60), "expired"),
    (claims(nbf=int(time.time()) + 600), "not yet valid"),
    (claims(aud="other"), "wrong audience"),
    (claims(iss="evil"), "wrong issuer"),
    (claims(exp=None), "'exp'"),
    (claims(sub=None), "'sub'"),
    (claims(role="god"), "no valid role"),
])
async def test_bad_claims_refused(tmp_path: Path, body: dict[str, object], reason: str) -> None:
    token = jwt.encode(body, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match=reason):
        await service(tmp_path).verify_access(token)


async def test_alg_none_and_tampering_refused(tmp_path: Path) -> None:
    tokens = service(tmp_path)
    none_token = jwt.encode(claims(), "", algorithm="none")
    with pytest.raises(AuthError):
        await tokens.verify_access(none_token)
    good = tokens.issue_access("physician", "d1")
    head, body, sig = good.split(".")
    forged = jwt.encode(claims(role="admin"), "x" * 40, algorithm="HS256").split(".")[1]
    with pytest.raises(AuthError, match="signature"):
        await tokens.verify_access(f"{head}.{forged}.{sig}")


def test_development_key_is_shared_between_instances(tmp_path: Path) -> None:
    a = TokenService(AuthSettings(), str(tmp_path))
    b = TokenService(AuthSettings(), str(tmp_path))
    assert b.verify_access_local(a.issue_access("admin", "root")).role is Role.ADMIN
    assert (tmp_path / "dev-signing.key").stat().st_mode & 0o777 == 0o600


def test_bearer_header() -> None:
    assert bearer_token("Bearer abc") == "abc"
    for bad in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(AuthError):
            bearer_token(bad)


@pytest.mark.parametrize(("over", "claim"), [
    ({"specialties": 5}, "specialties"),
    ({"specialties": [1, 2]}, "specialties"),
    ({"site": ["cabin-1"]}, "site"),
    ({"name": {"first": "x"}}, "name"),
    ({"role": ["physician"]}, "role"),
    ({"typ": 1}, "typ"),
])
async def test_claims_of_the_wrong_type_are_refused(tmp_path: Path, over: dict[str, object], claim: str) -> None:
    """A signed token whose claims have the wrong JSON type is an AuthError (a 401), never a TypeError."""
    token = jwt.encode(claims(**over), SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match=claim):
        await service(tmp_path).verify_access(token)


def test_room_token_claims_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    body = claims(typ="room", room={"r": 1}, publish=["camera"], subscribe=True)
    with pytest.raises(AuthError, match="room"):
        service(tmp_path).verify_room(jwt.encode(body, SECRET, algorithm="HS256"))
    body = claims(typ="room", room="r1", publish="camera")
    with pytest.raises(AuthError, match="publish"):
        service(tmp_path).verify_room(jwt.encode(body, SECRET, algorithm="HS256"))


async def test_token_lifetime_is_capped(tmp_path: Path) -> None:
    tokens = service(tmp_path, max_token_lifetime_s=3600)
    year_5000 = 95_617_584_000
    for body in (claims(exp=year_5000), claims(exp=int(time.time()) + 7200),
                 claims(iat=int(time.time()) - 3000, exp=int(time.time()) + 3000)):
        with pytest.raises(AuthError, match="max_token_lifetime_s"):
            await tokens.verify_access(jwt.encode(body, SECRET, algorithm="HS256"))
    with pytest.raises(AuthError, match="max_token_lifetime_s"):
        tokens.verify_room(jwt.encode(claims(typ="room", room="r", exp=year_5000), SECRET, algorithm="HS256"))
    assert (await tokens.verify_access(tokens.issue_access("physician", "d1", ttl=3600))).subject == "d1"
    with pytest.raises(ValueError, match="max_token_lifetime_s"):
        tokens.issue_access("physician", "d1", ttl=3601)
    # The default allows a day, not the year 5000.
    with pytest.raises(AuthError, match="max_token_lifetime_s"):
        await service(tmp_path).verify_access(jwt.encode(claims(exp=year_5000), SECRET, algorithm="HS256"))


async def test_tokens_that_are_not_ascii_are_refused(tmp_path: Path) -> None:
    """A lone surrogate (a JSON ``\\ud800`` in a hello) or a header byte that is not UTF-8
    (aiohttp decodes it as one) is a malformed token (401), not a UnicodeEncodeError (500)."""
    tokens = service(tmp_path)
    good = tokens.issue_access("physician", "d1")
    for bad in (good[:24] + "\ud800" + good[24:], good + "\udcff", "é" + good):
        with pytest.raises(AuthError, match="malformed"):
            await tokens.verify_access(bad)
        with pytest.raises(AuthError, match="malformed"):
            tokens.verify_room(bad)


@pytest.mark.parametrize(("over", "claim"), [
    ({"sub": "x" * 129}, "sub"),
    ({"sub": ""}, "sub"),
    ({"sub": "doc\n1"}, "sub"),
    ({"site": "s" * 500}, "site"),
    ({"name": "n" * 5000}, "name"),
])
async def test_ids_too_long_or_unprintable_are_refused(tmp_path: Path, over: dict[str, object], claim: str) -> None:
    """A signed subject of 129 characters went as far as the journal, which refused it: a 500
    after the request's work (bench.fuzz rest, GET .../stills and /fhir/Encounter)."""
    token = jwt.encode(claims(**over), SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match=claim):
        await service(tmp_path).verify_access(token)


@pytest.mark.parametrize(("over", "claim"), [
    ({"iat": str(int(time.time()))}, "iat"),
    ({"exp": str(int(time.time()) + 60)}, "exp"),
    ({"nbf": str(int(time.time()))}, "nbf"),
    ({"iat": True}, "iat"),
    ({"exp": 10 ** 400}, "exp"),
    ({"iat": -(10 ** 400)}, "iat"),
])
async def test_time_claims_of_the_wrong_type_are_refused(tmp_path: Path, over: dict[str, object], claim: str) -> None:
    """PyJWT takes ``"iat": "1796284348"`` (it calls ``int()``) and ``10**400``: the comparison
    with the clock then raised TypeError or OverflowError (a 500 on every route)."""
    token = jwt.encode(claims(**over), SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match=claim):
        await service(tmp_path).verify_access(token)
    room = jwt.encode(claims(typ="room", room="r1", **over), SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match=claim):
        service(tmp_path).verify_room(room)
