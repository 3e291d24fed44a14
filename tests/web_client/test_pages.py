"""The pages load in French and English, sign in from a link, and say clearly
when the session expired or the page is the wrong one."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import aiohttp
import jwt

from signalling.appkeys import SIGNALLING
from tests.support import RunningServer, loopback_settings, start_server, wait_for
from tests.web_client.conftest import Console, open_page, screenshot
from tests.web_client.test_consultation import RECORD_BANNER
from web_client.pages import SECURITY_HEADERS


async def _text_is(page, selector: str, text: str) -> bool:  # type: ignore[no-untyped-def]
    return bool(await page.locator(selector).text_content() == text)


async def test_landing_in_english_then_french_by_switch(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    console = Console()
    page = await open_page(chromium, server.url + "/", locale="en-US", console=console, enforce_csp=True)
    # Polled from Python: Playwright's in-page predicates need eval, which this page's CSP forbids.
    await wait_for(lambda: _text_is(page, "h1", "Teleconsultation"), what="English title")
    assert await page.get_attribute("html", "lang") == "en"
    await screenshot(page, "landing-en.png")
    switch = page.locator("#lang-switch")
    assert await switch.text_content() == "Français"
    await switch.focus()
    await page.keyboard.press("Enter")  # keyboard-usable
    await wait_for(lambda: _text_is(page, "h1", "Téléconsultation"), what="French title")
    assert await page.get_attribute("html", "lang") == "fr"
    assert await page.locator("#link-nurse").text_content() == "Infirmier·e"
    assert not console.errors and "Content Security Policy" not in console.text(), console.text()
    await page.context.close()


async def test_pages_follow_the_browser_language(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    token = server.tokens.issue_access("nurse", "nurse-fr", site="cabin-demo")
    page = await open_page(chromium, f"{server.url}/nurse#token={token}", locale="fr-FR")
    await page.wait_for_function("document.querySelector('#checkin-title').textContent === 'Enregistrer un patient'")
    assert await page.locator("label[for=patient-ref]").text_content() == "Référence du patient"
    assert await page.get_attribute("html", "lang") == "fr"
    await page.context.close()
    page = await open_page(chromium, f"{server.url}/nurse#token={token}", locale="en-GB")
    await page.wait_for_function("document.querySelector('#checkin-title').textContent === 'Check a patient in'")
    await page.context.close()


async def test_sign_in_from_a_link_keeps_the_token_out_of_the_url(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    token = server.tokens.issue_access("physician", "dr-demo", specialties=["general", "cardiology"])
    page = await open_page(chromium, f"{server.url}/physician#token={token}")
    # A name, not an id: the token has none, the directory names dr-demo "Dr Demo".
    await page.wait_for_function("document.querySelector('#who').textContent === 'Dr Demo'")
    assert await page.get_attribute("#who", "data-sub") == "dr-demo"
    assert page.url == server.url + "/physician"
    assert "token" not in await page.evaluate("location.href + history.state")
    assert await page.evaluate("sessionStorage.getItem('tc.token.physician')") == token
    assert await page.locator("#my-specialties").text_content() == "General medicine, Cardiology"
    await page.reload()  # the tab remembers the sign-in
    await page.wait_for_function("document.querySelector('#who').textContent === 'Dr Demo'")
    await page.context.close()


async def test_expired_token_shows_sign_in_again(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time())
    expired = jwt.encode({"iss": "teleconsult", "aud": "teleconsult", "sub": "nurse-1", "typ": "access",
                          "role": "nurse", "site": "cabin-demo", "iat": now - 100, "exp": now - 50},
                         server.tokens._keys.signing, algorithm="HS256")
    page = await open_page(chromium, f"{server.url}/nurse#token={expired}")
    problem = page.locator("#signin-problem[data-kind=expired]")
    await problem.wait_for(timeout=10000)
    assert "Session expired" in await problem.text_content()
    assert await page.evaluate("sessionStorage.getItem('tc.token.nurse')") is None
    assert page.url == server.url + "/nurse"
    await screenshot(page, "session-expired.png")
    await page.context.close()


async def test_no_token_and_wrong_role(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    page = await open_page(chromium, f"{server.url}/physician")
    await page.locator("#signin-problem[data-kind=signed_out]").wait_for(timeout=10000)
    assert "teleconsult token access --role physician" in await page.locator("#signin-problem code").text_content()
    nurse = server.tokens.issue_access("nurse", "nurse-1", site="cabin-demo")
    await page.goto(f"{server.url}/physician#token={nurse}")
    await page.locator("#signin-problem[data-kind=wrong_role]").wait_for(timeout=10000)
    assert await page.locator("#signin-problem a").get_attribute("href") == "/nurse"
    await page.context.close()


async def test_auth_config_and_openid_redirect(tmp_path: Path, chromium) -> None:  # type: ignore[no-untyped-def]
    # The page no longer runs the implicit flow: it sends the person to /auth/oidc/login, where the
    # server runs the code flow with PKCE (issue 16; the whole flow: tests/interop/test_psc_http.py).
    sso = "https://sso.example.test"
    settings = loopback_settings(tmp_path / "data", auth={
        "oidc_authorize_url": f"{sso}/authorize", "oidc_client_id": "teleconsult-web", "oidc_issuer": sso,
        "oidc_jwks_url": f"{sso}/jwks", "oidc_token_url": f"{sso}/token", "oidc_userinfo_url": f"{sso}/userinfo"})
    running = await start_server(settings)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(running.url + "/api/auth/config") as r:
                assert await r.json() == {"oidc_authorize_url": f"{sso}/authorize",
                                          "oidc_client_id": "teleconsult-web", "issuer": sso}
        context = await chromium.new_context(bypass_csp=True)
        page = await context.new_page()
        requested: list[str] = []

        async def login(route) -> None:  # type: ignore[no-untyped-def]
            # The server's answer, without following it to the provider: nothing leaves the machine.
            response = await route.fetch(max_redirects=0)
            requested.append(response.headers["location"])
            await route.fulfill(body="the provider's sign-in page", content_type="text/plain")

        await page.route("**/auth/oidc/login?next=%2Fphysician", login)
        await page.goto(running.url + "/physician")
        await page.wait_for_url("**/auth/oidc/login?next=%2Fphysician", timeout=10000)
        url = requested[0]
        assert url.startswith(f"{sso}/authorize?")
        assert "response_type=code" in url and "client_id=teleconsult-web" in url
        assert "code_challenge_method=S256" in url and "acr_values=eidas1" in url
        assert "redirect_uri=" + running.url.replace(":", "%3A").replace("/", "%2F") + "%2Fauth%2Foidc%2Fcallback" in url
        # The server's callback sends the person back with our token in the fragment.
        token = running.tokens.issue_access("physician", "dr-sso", specialties=["general"])
        await page.goto(f"{running.url}/physician#token={token}")
        await page.wait_for_function("document.querySelector('#who').textContent === 'dr-sso'")
        assert page.url == running.url + "/physician"
        await context.close()
    finally:
        await running.server.close()


async def test_auth_config_empty_without_provider(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/api/auth/config") as r:
            assert await r.json() == {"oidc_authorize_url": "", "oidc_client_id": "", "issuer": ""}
        async with http.get(server.url + "/nurse") as r:
            assert r.status == 200
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        async with http.get(server.url + "/static/nurse.js") as r:
            assert r.status == 200 and "javascript" in r.content_type
        async with http.get(server.url + "/static/") as r:
            assert r.status in (403, 404)


async def test_token_expiring_during_the_session_shows_sign_in_again(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    # The session is at its maximum age: auth.renew is refused (the renewal itself: test_rejoin.py).
    service = server.app[SIGNALLING]
    service.sig = dataclasses.replace(service.sig, max_session_s=30.0)
    token = server.tokens.issue_access("physician", "dr-demo", specialties=["general"], ttl=3)
    page = await open_page(chromium, f"{server.url}/physician#token={token}")
    await page.wait_for_function("window.teleconsult && window.teleconsult.signalling.state === 'open'",
                                 timeout=10000)
    await page.evaluate(RECORD_BANNER)
    # auth.expiring, renewal refused: the warning; then token_expired and the socket closed (4401).
    problem = page.locator("#signin-problem[data-kind=expired]")
    await problem.wait_for(timeout=20000)
    assert "signin.expiring" in await page.evaluate("window.__banners")
    # The expired screen alone: no "your session ends in 1 min" next to "Session expired".
    await page.wait_for_timeout(300)
    assert await page.locator("#banner").is_hidden()
    await page.wait_for_function("window.teleconsult.signalling.state === 'closed'", timeout=5000)
    assert await page.evaluate("sessionStorage.getItem('tc.token.physician')") is None
    await page.wait_for_timeout(1500)  # and it does not try to reconnect with the dead token
    assert await page.evaluate("window.teleconsult.signalling.state") == "closed"
    await page.context.close()


async def test_static_names_the_file_system_refuses_are_404(server: RunningServer) -> None:
    """``/static/`` + a name longer than the file system allows: aiohttp's static route let
    ``OSError: File name too long`` out, a 500 and a traceback (bench.fuzz, rest)."""
    async with aiohttp.ClientSession() as http:
        for name in ("a" * 300, "\x1b[31mred" * 40, "x/" * 2100 + "y"):
            async with http.get(server.url + "/static/" + name) as r:
                assert r.status == 404, (name[:20], r.status, await r.text())
                assert (await r.json())["error"] == "not_found"
        async with http.get(server.url + "/static/common.js") as r:
            assert r.status == 200


async def test_expertise_page_is_served_with_the_pages_headers(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    """/expertise (télé-expertise) is a page like the others: the strict CSP and security headers,
    its modules served, and it signs in and runs under that CSP with no violation."""
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/expertise") as r:
            assert r.status == 200 and r.content_type == "text/html"
            for name, value in SECURITY_HEADERS.items():
                assert r.headers[name] == value, name
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert '<script type="module" src="/static/expertise.js"></script>' in await r.text()
        for module in ("expertise.js", "expertise_case.js", "expertise_request.js", "expertise_inbox.js"):
            async with http.get(f"{server.url}/static/{module}") as r:
                assert r.status == 200 and "javascript" in r.content_type, module
    console = Console()
    token = server.tokens.issue_access("nurse", "nurse-1", site="ehpad-demo")
    page = await open_page(chromium, f"{server.url}/expertise#token={token}", locale="fr-FR", console=console,
                           enforce_csp=True)
    # Polled from Python: Playwright's in-page predicates need eval, which the page's CSP forbids.
    await wait_for(lambda: _text_is(page, "#sent-empty", "Aucune demande pour l'instant."), what="the site's cases")
    assert page.url == server.url + "/expertise"
    await page.locator("#new-case").wait_for(state="visible", timeout=10000)
    assert await page.locator("#inbox").is_hidden()  # a nurse has no inbox
    assert not console.errors and "Content Security Policy" not in console.text(), console.text()
    await page.context.close()


async def test_csp_lets_the_pages_reach_the_configured_media_nodes(tmp_path: Path, server: RunningServer) -> None:
    """``server.media_origins`` (``serve --media-workers`` adds its workers') join connect-src, read
    from the settings the app was made with; without them the policy is this origin's and sockets'."""
    def connect_src(csp: str) -> list[str]:
        return next(d for d in csp.split("; ") if d.startswith("connect-src")).split()[1:]

    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/nurse") as r:
            assert connect_src(r.headers["Content-Security-Policy"]) == ["'self'", "ws:", "wss:"]
    nodes = ["http://127.0.0.1:8081", "https://media.example.org:8443"]
    running = await start_server(loopback_settings(tmp_path / "nodes", server={"media_origins": nodes}))
    try:
        async with aiohttp.ClientSession() as http:
            for page in ("/", "/nurse", "/physician", "/join", "/expertise", "/admin"):
                async with http.get(running.url + page) as r:
                    assert r.status == 200
                    assert connect_src(r.headers["Content-Security-Policy"]) == ["'self'", *nodes, "ws:", "wss:"]
                    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    finally:
        await running.server.close()
