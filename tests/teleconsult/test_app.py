import time

import aiohttp
import jwt

from core import appkeys
from tests.support import RunningServer


async def test_health_ready_metrics(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
            assert r.headers["X-Request-Id"]
        async with http.get(server.url + "/readyz") as r:
            body = await r.json()
            assert r.status == 200, body
            assert body["checks"]["accepting"] is True
        async with http.get(server.url + "/metrics") as r:
            text = await r.text()
            assert r.status == 200
            assert "process_cpu_seconds_total" in text
            assert 'teleconsult_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text


async def test_readyz_unready_while_draining(server: RunningServer) -> None:

    server.app[appkeys.LIFECYCLE].signal()
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/readyz") as r:
            assert r.status == 503
            assert (await r.json())["checks"]["accepting"] is False


async def whoami(server: RunningServer, token: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/api/whoami", headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, await r.json()


async def test_tokens_accepted_and_attacks_refused(server: RunningServer) -> None:
    good = server.tokens.issue_access("physician", "dr-1", specialties=["cardiology"], name="Dr Une")
    status, body = await whoami(server, good)
    assert status == 200 and body["sub"] == "dr-1" and body["specialties"] == ["cardiology"]
    assert body["name"] == "Dr Une", "the pages greet the person by name"

    key = server.tokens._keys.signing
    now = int(time.time())
    base = {"iss": "teleconsult", "aud": "teleconsult", "sub": "dr-1", "typ": "access", "role": "physician"}
    attacks = {
        "tampered": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "expired": jwt.encode({**base, "iat": now - 100, "exp": now - 50}, key, algorithm="HS256"),
        "wrong audience": jwt.encode({**base, "aud": "x", "iat": now, "exp": now + 60}, key, algorithm="HS256"),
        "alg none": jwt.encode({**base, "iat": now, "exp": now + 60}, "", algorithm="none"),
        "room token": server.tokens.issue_room("r1", "dr-1", role="physician"),
    }
    for name, token in attacks.items():
        status, body = await whoami(server, token)
        assert status == 401, name
        assert body["error"] == "unauthorized" and body["reason"], name


async def test_missing_authorization_is_401(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/api/whoami") as r:
            assert r.status == 401
            assert (await r.json())["reason"] == "missing Authorization header"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
