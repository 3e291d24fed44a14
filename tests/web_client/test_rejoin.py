"""Coming back into a call: the physician's page reloads mid-call (the patient's video plays
again, the device panels and the recording badge come back), the room moves to a new node
(``room.moved``: both pages start over and play again), and the pages renew their access
token on ``auth.expiring`` instead of ending the session. Real server, real device agent,
real Chromium."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from config.settings import Settings
from devices.agent import AgentConfig, DeviceAgent
from signalling.appkeys import SIGNALLING
from tests.support import RunningServer, loopback_settings
from tests.web_client.conftest import Console, open_page, screenshot
from tests.web_client.test_consultation import check_in, decoded_frames_grow, end_call, signed_in

CALL_STATE = """() => { const c = window.teleconsult.call; return {role: window.teleconsult.role, pc: c.pc.connectionState,
  sig: c.pc.signalingState, subs: [...c.subscriptions.entries()].map(([id, s]) => [id, s.publication.source,
  s.announced, s.negotiated, s.transceiver.mid, s.transceiver.currentDirection]),
  sending: c.sending.map((s) => [s.source, s.negotiated, s.transceiver.mid]), resyncs: c.resyncs,
  errors: window.__errs || []}; }"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return loopback_settings(tmp_path / "data", devices={"framerate": 5})


async def test_reload_and_room_moved_mid_call(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    agent = DeviceAgent(server.settings, AgentConfig(
        server=server.url, devices=("stethoscope", "dermatoscope"), simulate=True,
        site_token=server.tokens.issue_access("agent", "agent-cabin-demo", site="cabin-demo")))
    task = asyncio.create_task(agent.run())
    console = Console()
    try:
        await asyncio.wait_for(agent.connected.wait(), 15)
        physician, _ = await signed_in(server, chromium, "physician", console, sub="dr-demo", specialties=["general"])
        await physician.click("label[for=presence-available]")
        await physician.wait_for_function("document.querySelector('#presence').dataset.status === 'available'")
        nurse, _ = await signed_in(server, chromium, "nurse", console, sub="nurse-1", site="cabin-demo")
        await check_in(nurse, "routine", record=True)
        await physician.locator("#offer").wait_for(timeout=10000)
        await physician.click("#offer-accept")
        for page in (physician, nurse):
            await page.locator("#call").wait_for(timeout=15000)
        await decoded_frames_grow(physician)
        for source in ("stethoscope", "dermatoscope"):
            await physician.locator(f"#devices [data-source={source}]").wait_for(timeout=30000)
        await physician.click("#record")
        await physician.locator("#recording").wait_for(timeout=10000)

        # The physician reloads: no room.event was ever seen by the new page.
        await physician.reload()
        await physician.wait_for_function("window.teleconsult && window.teleconsult.signalling.state === 'open'",
                                          timeout=15000)
        await physician.locator("#call").wait_for(timeout=15000)
        await physician.wait_for_function("document.querySelector('#remote-video').videoWidth > 0", timeout=20000)
        await decoded_frames_grow(physician)
        for source in ("stethoscope", "dermatoscope"):
            await physician.locator(f"#devices [data-source={source}]").wait_for(timeout=30000)
        await physician.locator("#recording").wait_for(timeout=5000)  # the badge, from the consultation object
        assert await physician.get_attribute("#record", "aria-pressed") == "true"
        await decoded_frames_grow(nurse)  # the nurse plays the physician's new camera publication
        await screenshot(physician, "physician-reloaded.png")

        # The room is re-placed (as when its node dies): room.moved with new room tokens.
        for page in (physician, nurse):
            await page.evaluate("window.__errs = []; window.teleconsult.call.addEventListener('error', "
                                "(e) => window.__errs.push(String(e.detail.error.code) + ' ' + e.detail.error.message))")
        await physician.evaluate("() => { window.__pc = window.teleconsult.call.pc; }")
        service = server.app[SIGNALLING]
        cid = await physician.evaluate("window.teleconsult.view.consultation.id")
        await service.rooms.move(cid, service.node_id)
        for page in (physician, nurse):
            await page.wait_for_function("document.querySelector('#call').dataset.moved === '1'", timeout=10000)
        await physician.wait_for_function("window.teleconsult.call.pc !== window.__pc", timeout=10000)
        for page in (physician, nurse):
            try:
                await page.wait_for_function("document.querySelector('#remote-video').videoWidth > 0", timeout=20000)
            except Exception:
                print("DEBUG", await page.evaluate(CALL_STATE))
                raise
            await decoded_frames_grow(page)
        await physician.locator("#devices [data-source=stethoscope]").wait_for(timeout=30000)

        await end_call(physician)
        await nurse.locator("#ended").wait_for(timeout=10000)
        assert not console.errors, console.errors
        await nurse.context.close()
        await physician.context.close()
    finally:
        agent.stop()
        await asyncio.wait_for(task, 20)


async def test_page_renews_its_token_before_expiry(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    short = server.tokens.issue_access("nurse", "nurse-1", site="cabin-demo", ttl=12)
    page = await open_page(chromium, f"{server.url}/nurse#token={short}")
    await page.wait_for_function("window.teleconsult && window.teleconsult.signalling.state === 'open'",
                                 timeout=10000)
    # auth.expiring comes ~1 s before expiry; the page asks auth.renew and keeps the new token.
    await page.wait_for_function(f"window.teleconsult.signalling.token !== {short!r}", timeout=15000, polling=200)
    renewed = await page.evaluate("window.teleconsult.signalling.token")
    assert await page.evaluate("sessionStorage.getItem('tc.token.nurse')") == renewed
    await page.wait_for_timeout(2500)  # past the first token's expiry: still signed in
    assert await page.evaluate("window.teleconsult.signalling.state") == "open"
    assert await page.locator("#signin-problem").count() == 0
    # A reload signs in with the renewed token.
    await page.reload()
    await page.wait_for_function("window.teleconsult && window.teleconsult.signalling.state === 'open'",
                                 timeout=10000)
    assert await page.locator("#signin-problem").count() == 0
    await page.context.close()
