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
