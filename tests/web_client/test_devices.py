"""The device panels with the real device agent (simulated devices): a live
phonocardiogram drawn from the received stethoscope audio, stethoscope
controls, dermatoscope stills at full resolution, vitals as they arrive."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from devices.agent import AgentConfig, DeviceAgent
from sfu.appkeys import SFU
from tests.support import RunningServer, loopback_settings, wait_for
from tests.web_client.conftest import Console, screenshot
from tests.web_client.test_consultation import end_call, into_call

# The trace's colour in phonocardiogram.js (#5ee0a0): pixels of it are the drawn signal.
TRACE_PIXELS = """
() => {
  const canvas = document.querySelector('canvas.pcg');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let trace = 0, rows = new Set();
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] > 70 && data[i + 1] > 200 && data[i + 2] > 130) {
      trace += 1;
      rows.add(Math.floor(i / 4 / canvas.width));
    }
  }
  return {trace, rows: rows.size, url: canvas.toDataURL()};
}
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Five frames a second keeps the simulated devices' VP8 encoders affordable on two cores.
    return loopback_settings(tmp_path / "data", devices={"framerate": 5})


async def test_device_panels_with_the_device_agent(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    token = server.tokens.issue_access("agent", "agent-cabin-demo", site="cabin-demo")
    agent = DeviceAgent(server.settings, AgentConfig(
        server=server.url, devices=("stethoscope", "dermatoscope", "otoscope", "vitals"), simulate=True,
        site_token=token))
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 15)
        console = Console()
        nurse, physician = await into_call(server, chromium, console)
        for source in ("stethoscope", "dermatoscope", "otoscope"):
            await physician.locator(f"#devices [data-source={source}]").wait_for(timeout=30000)
        await physician.wait_for_function(
            "document.querySelector('[data-source=dermatoscope] video').videoWidth > 0", timeout=20000)

        # The phonocardiogram is drawn from the audio received: the analyser sees the
        # heart sounds (non-zero samples), the trace spans many rows and moves.
        await physician.wait_for_function(
            "window.teleconsult.view.board.panels.get('stethoscope').pcg.peak > 0.01", timeout=20000)
        first = await physician.evaluate(TRACE_PIXELS)
        await physician.wait_for_timeout(500)  # let it scroll
        second = await physician.evaluate(TRACE_PIXELS)
        assert second["trace"] > 200 and second["rows"] > 20, second
        assert first["url"] != second["url"]
        # The agent sends RED (RFC 2198) and Chromium, which offers it, gets RED and plays it.
        sfu = server.app[SFU]
        (room,) = [sfu.create_room(name) for name in sfu.rooms()]
        (steth,) = [p for p in room.publications.values() if p.info.source == "stethoscope"]
        assert steth.red_payload_type is not None
        red_legs = [s for participant in room.participants.values() for s in participant.subscriptions.values()
                    if s.publication_id == steth.id and s.red_payload_type is not None]
        assert red_legs, "no subscriber leg of the stethoscope negotiated RED"

        # Stethoscope controls: the agent confirms the new mode and gain.
        await physician.wait_for_function("document.querySelector('#steth-mode input:checked') !== null",
                                          timeout=15000)
        await physician.click("label[for=steth-mode-bell]")
        await physician.wait_for_function(
            "window.teleconsult.view.board.panels.get('stethoscope').status.textContent.includes('Bell')",
            timeout=10000)
        assert await physician.is_checked("#steth-mode-bell")
        await physician.wait_for_function("document.querySelector('#heart-rate').textContent !== '–'",
                                          timeout=20000)

        # A dermatoscope still: previewed, fetched at full resolution, opened full size.
        await physician.click("#dermatoscope-still")
        item = physician.locator("[data-source=dermatoscope] .gallery li[data-width]")
        await item.wait_for(timeout=20000)
        assert await item.get_attribute("data-width") == "1920"
        assert await item.get_attribute("data-height") == "1080"
        await item.locator("button").click()
        await physician.wait_for_function("document.querySelector('#still-full')?.naturalWidth === 1920",
                                          timeout=10000)
        await screenshot(physician, "physician-still.png", full_page=False)
        await physician.keyboard.press("Escape")

        # The physician examines the otoscope: the page tells the agent (`viewing`), whose uplink
        # gives that device's video first. The agent's `uplink` state shows on the page: a banner
        # while the cabin's network is weak, each device's target in the quality table.
        await physician.click("label[for=examine-otoscope]")
        (link,) = agent.links.values()
        await wait_for(lambda: link.uplink.controller.viewed == "otoscope", 10, what="the viewing message")
        weak = {"type": "uplink", "mode": "normal", "congested": True, "budget_kbps": 576, "viewing": "otoscope", "tracks": [
            {"device": "stethoscope", "kind": "audio", "target_kbps": 140, "paused": False, "reason": "full"},
            {"device": "dermatoscope", "kind": "video", "target_kbps": 0, "paused": True, "reason": "paused"},
            {"device": "otoscope", "kind": "video", "target_kbps": 436, "paused": False, "reason": "reduced"}]}
        await physician.click("#quality summary")
        # The agent's own `uplink` messages (each change of what it sends) may replace the weak one before
        # the page is read: it is sent again until the page shows it, and read in one go.
        shown: dict[str, Any] = {}
        for _ in range(10):
            link.send(weak)  # as the agent sends it on a weak uplink (tests/devices/test_agent_uplink.py)
            for _ in range(15):
                shown = await physician.evaluate("""() => ({
                  key: document.querySelector('#banner').dataset.key,
                  banner: document.querySelector('#banner').textContent,
                  otoscope: document.querySelector('#quality tr[data-source=otoscope] td:last-child')?.textContent,
                  dermatoscope: document.querySelector('#quality tr[data-source=dermatoscope] td:last-child')
                    ?.textContent})""")
                if shown["key"] == "call.banner.uplink_weak" and "436" in (shown["otoscope"] or ""):
                    break
                await asyncio.sleep(0.1)
            else:
                continue
            break
        assert shown["key"] == "call.banner.uplink_weak" and "436" in (shown["otoscope"] or ""), shown
        assert "stethoscope first" in shown["banner"] or "stéthoscope prioritaire" in shown["banner"], shown
        assert shown["dermatoscope"] in ("paused", "en pause"), shown
        message = link.uplink.message()
        assert message is not None
        link.send(message)  # the real state again
        # Loopback is no weak network: the banner goes. The CPU burst of the full-resolution
        # still above stalls the agent's loop, which its uplink measures and does not take for
        # congestion (issue 13: it latched congestion for 10 s, devices/uplink.py ``loop_lag``).
        assert message["congested"] is False, message
        await physician.wait_for_function(
            "document.querySelector('#banner').dataset.key !== 'call.banner.uplink_weak'", timeout=10000)

        # Vitals, and the nurse sees the device tracks as previews without controls.
        await physician.locator("#devices [data-source=vitals] tbody tr").first.wait_for(timeout=20000)
        await nurse.locator("#devices [data-source=dermatoscope] video").wait_for(timeout=20000)
        assert await nurse.locator("#dermatoscope-still").count() == 0
        await screenshot(physician, "physician-devices.png")
        await screenshot(nurse, "nurse-devices.png")
        await end_call(physician)
        await nurse.locator("#ended").wait_for(timeout=10000)
        await nurse.context.close()
        await physician.context.close()
    finally:
        agent.stop()
        await asyncio.wait_for(task, 20)
