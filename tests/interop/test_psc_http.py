"""Pro Santé Connect sign-in, the whole flow against a provider the test starts on loopback: code flow with
PKCE (S256), state, nonce and acr checks, RPPS → directory; a wrong nonce, a replayed code, a missing PKCE
verifier, a wrong acr, an unknown RPPS and a forged state are refused. Then the page, in Chromium."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from interop.psc import pkce_challenge
from signalling.appkeys import SIGNALLING
from signalling.directory import load_directory
from signalling.store.redis import RedisStore
from tests.interop.provider import CLIENT_ID, CLIENT_SECRET, Provider, physician_userinfo
from tests.support import RunningServer, loopback_settings, start_server

RPPS = "10000000009"


@pytest.fixture
async def psc(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[RunningServer, Provider]]:
    """The app with sign-in through the test provider; ``redis`` as the parameter: on a Redis store
    (the pending sign-ins are shared by every process)."""
    store: dict[str, object] = {}
    if getattr(request, "param", "memory") == "redis":
        store = {"backend": "redis", "redis_url": request.getfixturevalue("redis_url")}
    provider = await Provider(userinfo=physician_userinfo(RPPS)).start()
    async with aiohttp.ClientSession() as http:  # configured from the provider's discovery document
        async with http.get(provider.url + "/.well-known/openid-configuration") as r:
            meta = await r.json()
    secret = tmp_path / "client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    directory = load_directory().to_dict()
    for clinician in directory["clinicians"]:
        if clinician["id"] == "dr-cardio":
            clinician["rpps"] = RPPS
    (tmp_path / "directory.json").write_text(json.dumps(directory))
    settings = loopback_settings(tmp_path / "data", auth={
        "signing_key": "k" * 40, "oidc_issuer": meta["issuer"], "oidc_jwks_url": meta["jwks_uri"],
        "oidc_authorize_url": meta["authorization_endpoint"], "oidc_token_url": meta["token_endpoint"],
        "oidc_userinfo_url": meta["userinfo_endpoint"], "oidc_client_id": CLIENT_ID,
        "oidc_client_secret_file": str(secret)}, signalling={"directory_file": str(tmp_path / "directory.json")},
        store=store)
    running = await start_server(settings)
    provider.redirect_uri = running.url + "/auth/oidc/callback"
    try:
        yield running, provider
    finally:
        await running.server.close()
        await provider.close()


def browser() -> aiohttp.ClientSession:
    # unsafe: keep cookies of an IP host (127.0.0.1), as a browser does.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(http: aiohttp.ClientSession, server: RunningServer) -> str:
    """/auth/oidc/login → the provider's authorize URL."""
    async with http.get(server.url + "/auth/oidc/login?next=/physician", allow_redirects=False) as r:
        assert r.status == 302, await r.text()
        return r.headers["Location"]


async def authorize(http: aiohttp.ClientSession, url: str) -> str:
    """The provider signs the person in: the callback URL it sends the browser to."""
    async with http.get(url, allow_redirects=False) as r:
        assert r.status == 302, await r.text()
        return r.headers["Location"]


async def callback(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any] | str]:
    async with http.get(url, allow_redirects=False) as r:
        if r.status == 302:
            return 302, r.headers["Location"]
        return r.status, await r.json()


async def journal(server: RunningServer) -> list[dict[str, Any]]:
    """Every entry of the journal (sign-ins are about no consultation: read it whole)."""
    if server.settings.store.backend == "redis":
        store = server.app[SIGNALLING].store
        assert isinstance(store, RedisStore)
        rows = await store.redis.xrange(server.settings.store.key_prefix + "journal") or []
        return [json.loads(fields["e"]) for _, fields in rows if fields]
    lines = (Path(server.settings.server.data_dir) / "journal.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("psc", ["memory", "redis"], indirect=True)
async def test_the_whole_flow_mints_our_token(psc: tuple[RunningServer, Provider]) -> None:
    server, provider = psc
    async with browser() as http:
        to_provider = await login(http, server)
        query = {k: v[0] for k, v in parse_qs(urlsplit(to_provider).query).items()}
        assert to_provider.startswith(provider.url + "/authorize?")
        assert (query["response_type"], query["client_id"], query["redirect_uri"], query["scope"],
                query["code_challenge_method"], query["acr_values"]) == \
            ("code", CLIENT_ID, server.url + "/auth/oidc/callback", "openid scope_all", "S256", "eidas1")
        assert len(query["state"]) >= 43 and len(query["nonce"]) >= 43 and len(query["code_challenge"]) == 43
        back = await authorize(http, to_provider)
        status, location = await callback(http, back)
    assert status == 302 and isinstance(location, str) and location.startswith("/physician#token=")
    token = location.split("#token=", 1)[1]
    principal = server.tokens.verify_access_local(token)
    assert (principal.subject, principal.role.value, principal.specialties, principal.name) == \
        ("dr-cardio", "physician", ("cardiology",), "Dr Cardio")
    # The code went back with the verifier whose S256 the authorize request carried; the browser never saw it.
    (exchange,) = provider.token_requests
    assert pkce_challenge(exchange["code_verifier"]) == query["code_challenge"]
    assert exchange["code_verifier"] not in to_provider + back + location
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/api/whoami", headers={"Authorization": f"Bearer {token}"}) as r:
            assert (await r.json())["sub"] == "dr-cardio"
    (signin,) = [e for e in await journal(server) if e["act"] == "auth.signin"]
    assert signin["actor"] == "dr-cardio" and signin["acr"] == "eidas1"


async def test_a_wrong_nonce_is_refused(psc: tuple[RunningServer, Provider]) -> None:
    server, provider = psc
    provider.nonce_override = "the-nonce-of-another-sign-in"
    async with browser() as http:
        status, body = await callback(http, await authorize(http, await login(http, server)))
    assert status == 401 and isinstance(body, dict) and "nonce" in body["reason"]


async def test_a_wrong_acr_is_refused(psc: tuple[RunningServer, Provider]) -> None:
    server, provider = psc
    provider.acr = "eidas0"
    async with browser() as http:
        status, body = await callback(http, await authorize(http, await login(http, server)))
    assert status == 401 and isinstance(body, dict) and "eidas0" in body["reason"] and "eidas1" in body["reason"]


async def test_a_replayed_code_is_refused(psc: tuple[RunningServer, Provider]) -> None:
    server, provider = psc
    async with browser() as http:
        back = await authorize(http, await login(http, server))
        state_cookie = {c.key: c.value for c in http.cookie_jar}
        status, _ = await callback(http, back)
        assert status == 302
        # The same answer again, cookie and all: the sign-in it belonged to is used up.
        http.cookie_jar.update_cookies(state_cookie, response_url=aiohttp.client.URL(server.url + "/auth/oidc/"))
        status, body = await callback(http, back)
        assert status == 401 and isinstance(body, dict) and "already used" in body["reason"]
        # The old code under a fresh sign-in's state: the provider refuses it (one use).
        fresh = await login(http, server)
        state = parse_qs(urlsplit(fresh).query)["state"][0]
        code = parse_qs(urlsplit(back).query)["code"][0]
        status, body = await callback(http, f"{server.url}/auth/oidc/callback?code={code}&state={state}")
    assert status == 401 and isinstance(body, dict) and "invalid_grant" in body["reason"]
    assert len(provider.token_requests) == 2


async def test_a_code_without_its_pkce_verifier_is_useless(psc: tuple[RunningServer, Provider]) -> None:
    server, provider = psc
    async with browser() as http:
        back = await authorize(http, await login(http, server))
    code, state = (parse_qs(urlsplit(back).query)[k][0] for k in ("code", "state"))
    # Stolen on its way, redeemed without the verifier (only this server holds it): the provider refuses.
    async with aiohttp.ClientSession() as thief:
        async with thief.post(provider.url + "/token", auth=aiohttp.BasicAuth(CLIENT_ID, CLIENT_SECRET), data={
                "grant_type": "authorization_code", "code": code, "redirect_uri": provider.redirect_uri}) as r:
            assert r.status == 400 and (await r.json())["error_description"] == "code_verifier missing"
    # A callback for a sign-in this server never started (a forged state cookie): no verifier is kept for it,
    # so nothing goes to the provider.
    async with browser() as http:
        second = await authorize(http, await login(http, server))
    code2 = parse_qs(urlsplit(second).query)["code"][0]
    async with browser() as forger:
        forger.cookie_jar.update_cookies({"tc_oidc": "forged-state"},
                                         response_url=aiohttp.client.URL(server.url + "/auth/oidc/"))
        asked = len(provider.token_requests)
        status, body = await callback(forger, f"{server.url}/auth/oidc/callback?code={code2}&state=forged-state")
        assert status == 401 and isinstance(body, dict) and "no sign-in is waiting" in body["reason"]
        # Someone else's state without its browser cookie: refused too.
        status, body = await callback(forger, f"{server.url}/auth/oidc/callback?code={code2}&state={state}")
        assert status == 401 and isinstance(body, dict) and "not for a sign-in started in this browser" in body["reason"]
    assert len(provider.token_requests) == asked
    causes = [e["cause"] for e in await journal(server) if e["act"] == "auth.refused"]
    assert causes == ["no_pending", "state"]


async def test_an_unknown_rpps_or_profession_is_refused_clearly(psc: tuple[RunningServer, Provider]) -> None:
    server, provider = psc
    provider.userinfo = physician_userinfo("10000123454")
    async with browser() as http:
        status, body = await callback(http, await authorize(http, await login(http, server)))
    assert status == 403 and isinstance(body, dict)
    assert "RPPS 10000123454 is not in this service's directory" in body["reason"]
    nurse = physician_userinfo(RPPS)
    nurse["SubjectRefPro"]["exercices"][0]["codeProfession"] = "60"
    provider.userinfo = nurse
    async with browser() as http:
        status, body = await callback(http, await authorize(http, await login(http, server)))
    assert status == 403 and isinstance(body, dict) and "physicians" in body["reason"]


async def test_the_provider_saying_no_and_an_unconfigured_server(psc: tuple[RunningServer, Provider],
                                                                 server: RunningServer) -> None:
    running, _ = psc
    async with browser() as http:
        await login(http, running)
        async with http.get(running.url + "/auth/oidc/callback?error=access_denied&state=x",
                            allow_redirects=False) as r:
            assert r.status == 401 and "access_denied" in (await r.json())["reason"]
        async with http.get(running.url + "/auth/oidc/login?next=//evil.example/x", allow_redirects=False) as r:
            assert r.status == 302  # a foreign "next" is replaced by the physician's page
        async with http.get(server.url + "/auth/oidc/login", allow_redirects=False) as r:
            assert r.status == 404 and (await r.json())["error"] == "not_found"


async def test_the_page_signs_in_through_the_provider(psc: tuple[RunningServer, Provider], chromium) -> None:  # type: ignore[no-untyped-def]
    server, provider = psc
    context = await chromium.new_context(bypass_csp=True)  # wait_for_function evaluates a string
    page = await context.new_page()
    try:
        await page.goto(server.url + "/physician")
        await page.wait_for_function("document.querySelector('#who')?.dataset.sub === 'dr-cardio'", timeout=20000)
        assert page.url == server.url + "/physician"  # the token left the address bar
        assert len(provider.authorize_requests) == 1 and len(provider.token_requests) == 1
    finally:
        await context.close()
