"""The pre-call device and network check: passes with Chromium's fake camera
and microphone, says clearly when the camera is denied or the media path blocked."""

from __future__ import annotations

from tests.support import RunningServer
from tests.web_client.conftest import open_page, screenshot


async def test_precheck_passes_with_fake_devices(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    token = server.tokens.issue_access("nurse", "nurse-1", site="cabin-demo")
    page = await open_page(chromium, f"{server.url}/nurse#token={token}")
    await page.locator("#precheck[data-verdict=ok]").wait_for(timeout=30000)
    for name in ("camera", "microphone", "network"):
        assert await page.get_attribute(f"[data-check={name}]", "data-state") == "ok"
    verdict = await page.locator("#verdict-network").text_content()
    assert verdict.startswith("connected (") and "ms round trip" in verdict
    # The preview plays and the level meter moves with the fake microphone's beeps.
    await page.wait_for_function("document.querySelector('#precheck-video').videoWidth > 0", timeout=10000)
    await page.wait_for_function("window.teleconsult.precheck.meter === null || "
                                 "window.teleconsult.precheck.meter.peak > 0.01", timeout=10000)
    network = await page.evaluate("window.teleconsult.precheck.network")
    assert network["frames"] and network["frames"].get("video", 0) > 0  # media reached the SFU's addresses
    assert await page.locator("#precheck-advice").is_hidden()
    await screenshot(page, "nurse-precheck.png")
    await page.context.close()


async def test_precheck_camera_denied(server: RunningServer, denied_chromium) -> None:  # type: ignore[no-untyped-def]
    token = server.tokens.issue_access("physician", "dr-demo", specialties=["general"])
    page = await open_page(denied_chromium, f"{server.url}/physician#token={token}", locale="fr-FR")
    await page.locator("#precheck[data-verdict=problem]").wait_for(timeout=30000)
    assert await page.get_attribute("[data-check=camera]", "data-state") == "fail"
    assert await page.locator("#verdict-camera").text_content() == "accès refusé"
    advice = await page.locator("#precheck-advice").text_content()
    assert "La caméra est bloquée pour ce site" in advice
    # The network check does not need the camera.
    assert await page.get_attribute("[data-check=network]", "data-state") == "ok"
    await screenshot(page, "physician-precheck-denied.png")
    await page.context.close()


async def test_precheck_media_path_blocked(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    # ?ice=relay: media only through a TURN relay, and this server offers none, as
    # behind a firewall that drops UDP: the media path cannot open.
    token = server.tokens.issue_access("nurse", "nurse-1", site="cabin-demo")
    page = await open_page(chromium, f"{server.url}/nurse?ice=relay#token={token}")
    await page.locator("#precheck[data-verdict=problem]").wait_for(timeout=30000)
    assert await page.get_attribute("[data-check=network]", "data-state") == "fail"
    assert await page.locator("#verdict-network").text_content() == "blocked"
    assert "firewall" in await page.locator("#precheck-advice").text_content()
    assert await page.get_attribute("[data-check=camera]", "data-state") == "ok"
    await screenshot(page, "nurse-precheck-blocked.png")
    await page.context.close()
