"""A clinic day in Chromium: one nurse, physician A at 1366×768 (English) and physician B at
1024×768 (French), six consultations in a row on the same page sessions, with reloads of
each side at seeded random points (the seed is printed; CLINIC_DAY_SEED=<n> replays a day).

In every consultation: both videos play within 2 s of the accept; the devices answer (the
real device agent, simulated devices); the report with its stills and vitals is saved and
read back; presence is right throughout (available, in consultation, available again; a
reload never makes it "away"); no banner is stale 5 s after the state it describes ended.
Along the day: a declined request goes back to the queue and the nurse is told, the
physician takes it from the queue; a draft typed just before a reload comes back; a second
nurse tab does not silently join; a language switch mid-call re-renders the screen; the
workstation fits 1366×768 and 1024×768 without scrolling (screenshots), and axe finds no
serious or critical violation on the screens in a call.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config.settings import Settings
from tests.support import ROOT, RunningServer, loopback_settings
from tests.web_client.axe_check import axe_violations
from tests.web_client.conftest import Console, open_page, screenshot
from tests.web_client.test_consultation import check_in as check_in_form, end_call

pytestmark = pytest.mark.timeout(600)  # six consultations; under 5 min on an idle two-core machine

CONSULTATIONS = 6
FIRST_VIDEO_MS = 2000  # both videos play within 2 s of the accept
STALE_BANNER_MS = 5000  # no banner outlives the state it describes by more than this
NBSP = "\u00a0"
RELOADS = ["physician_idle", "nurse_waiting", "physician_call", "nurse_call", "physician_typing", "nurse_call"]

# What the page's banner and participants list say now: a warning, and who is shown as away.
BANNER_STATE = """() => {
  const b = document.querySelector('#banner');
  const away = [...document.querySelectorAll('#participants li')].filter((li) => li.offsetParent !== null)
    .filter((li) => ['dropped', 'left', 'lost'].includes(li.dataset.state)).map((li) => li.dataset.role);
  return {warn: !b.hidden && b.dataset.kind === 'warn' ? b.dataset.key : null, away};
}"""
STILL_BUTTON_LOG = """() => {
  const button = document.querySelector('#dermatoscope-still');
  window.__stillButton = [];
  new MutationObserver(() => window.__stillButton.push({at: performance.now(), disabled: button.disabled,
    status: button.closest('.device').querySelector('.device-status').dataset.i18n || ''}))
    .observe(button, {attributes: true, attributeFilter: ['disabled']});
}"""
CAMERA_LOST = """() => { const track = window.teleconsult.view.stream.getVideoTracks()[0];
  track.stop(); track.dispatchEvent(new Event('ended')); }"""
REMOTE_FRAMES = "() => document.querySelector('#remote-video').getVideoPlaybackQuality().totalVideoFrames"
CALL_STATE = """() => { const v = window.teleconsult.view; if (!v) return null;
  return {now: Date.now(), peers: [...v.peers.entries()], media: v.call?.pc?.connectionState,
    participants: [...(v.call?.participants.values() || [])], log: v.peerLog}; }"""
FITS = """() => ({height: document.documentElement.scrollHeight, width: document.documentElement.scrollWidth,
  innerHeight: innerHeight, innerWidth: innerWidth})"""
VIEW_OF = "(cid) => window.teleconsult.view && window.teleconsult.view.consultation.id === cid"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Five device frames a second keeps the simulated devices' encoders affordable on two cores.
    return loopback_settings(tmp_path / "data", devices={"framerate": 5})


@dataclass
class Physician:
    name: str  # "A", "B"
    sub: str
    display: str  # the directory's name
    page: Any
    token: str
    lang: str
    seen_offers: int = 0
    screenshots: list[str] = field(default_factory=list)


@dataclass
class Day:
    server: RunningServer
    nurse: Any
    nurse_token: str
    physicians: list[Physician]
    rng: random.Random
    figures: list[dict[str, Any]] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    bp_seen: bool = False
    second_tab: Any = None


async def ready(page) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_function("window.teleconsult && window.teleconsult.signalling.state === 'open'",
                                 timeout=30000)


async def server_presence(day: Day) -> dict[str, str]:
    """Presence as the server lists it (asked on the nurse's socket)."""
    reply = await day.nurse.evaluate("window.teleconsult.signalling.request('presence.list')")
    return {p["physician"]: p["status"] for p in reply["physicians"]}


async def presence_is(day: Day, doctor: Physician, status: str) -> None:
    """The page shows ``status`` and the server agrees (never "away" by surprise)."""
    await doctor.page.wait_for_function(f"document.querySelector('#presence').dataset.status === {status!r}",
                                        timeout=15000)
    deadline = time.monotonic() + 10
    while True:
        listed = await server_presence(day)
        if listed.get(doctor.sub) == status:
            break
        assert time.monotonic() < deadline, (doctor.name, status, listed)
        await asyncio.sleep(0.2)
    badge = doctor.page.locator("#presence-now")
    if status == "in_consultation":
        assert await badge.is_visible()
        assert await badge.text_content() == ("En consultation" if doctor.lang == "fr" else "In consultation")
        assert await doctor.page.locator("#presence input:checked").count() == 0  # not green "Available"
    else:
        assert await doctor.page.is_checked(f"#presence-{status}")


async def set_presence(doctor: Physician, status: str) -> None:
    if await doctor.page.get_attribute("#presence", "data-status") != status:
        await doctor.page.click(f"label[for=presence-{status}]")
    await doctor.page.wait_for_function(f"document.querySelector('#presence').dataset.status === {status!r}",
                                        timeout=15000)


async def no_stale_banner(page, what: str) -> float:  # type: ignore[no-untyped-def]
    """No banner, and nobody shown as away, outlives by more than 5 s (the page's clock) the state
    it describes: the socket down (it is open), the media path down (it is connected), the other
    party away (their camera plays here). A party really away (a media restart on a loaded
    machine) is waited for, 30 s at most. Returns how long it took (s); polled in the page."""
    result = await page.evaluate(f"""async () => {{
      const state = {BANNER_STATE};
      const started = performance.now();
      const frames = (selector) => document.querySelector(selector)?.getVideoPlaybackQuality().totalVideoFrames ?? 0;
      const playing = {{}}; const seen = {{}};
      let staleSince = null, sampled = 0;
      for (;;) {{
        const now = performance.now();
        if (now - sampled >= 500) {{
          for (const [who, selector] of [['other', '#remote-video'], ['agent', '[data-source=dermatoscope] video']]) {{
            const n = frames(selector);
            playing[who] = who in seen && n > seen[who];
            seen[who] = n;
          }}
          sampled = now;
        }}
        const s = state();
        if (s.warn === null && s.away.length === 0) return {{waited: now - started}};
        const view = window.teleconsult.view;
        const otherAway = s.away.some((r) => r !== 'agent') || s.warn === 'call.banner.peer_away';
        const stale = (s.warn === 'conn.banner.lost' && window.teleconsult.signalling.state === 'open')
          || (s.warn === 'call.banner.media' && view?.call?.pc?.connectionState === 'connected')
          || (otherAway && playing.other) || (s.away.includes('agent') && playing.agent);
        if (stale) {{
          staleSince ??= now;
          if (now - staleSince > {STALE_BANNER_MS}) return {{stale: s}};
        }} else staleSince = null;
        if (now - started > 30000) return {{away: s}};
        await new Promise((resolve) => setTimeout(resolve, 100));
      }}
    }}""")
    if "waited" not in result:
        raise AssertionError(f"banner after {what}: {result} {await page.evaluate(CALL_STATE)}")
    return float(result["waited"]) / 1000


async def plays(page, cid: str, timeout: float = 30000) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_function(f"({VIEW_OF})({cid!r}) && window.teleconsult.view.timeline.firstRemoteFrame",
                                 timeout=timeout)


def lap(laps: dict[str, float], name: str, began: float) -> None:
    laps[name] = round(time.monotonic() - began, 1)
    print(f"  {name}: {laps[name]} s", flush=True)


async def remote_publication(page) -> str:  # type: ignore[no-untyped-def]
    return str(await page.evaluate("window.teleconsult.view.remoteVideo.dataset.publication || ''"))


async def plays_again(page, old: str) -> None:  # type: ignore[no-untyped-def]
    """The other side came back (a reload): its new camera publication plays here."""
    await page.wait_for_function(
        "(old) => { const v = window.teleconsult.view.remoteVideo; return v.dataset.publication !== old"
        " && v.videoWidth > 0 && v.getVideoPlaybackQuality().totalVideoFrames > 0; }", arg=old, timeout=30000)


async def in_call(page) -> None:  # type: ignore[no-untyped-def]
    try:
        await page.locator("#call").wait_for(timeout=30000)
    except Exception:
        print("NOT IN CALL", await page.evaluate("document.body.dataset.screen"))
        raise


async def reload_physician(day: Day, doctor: Physician) -> None:
    await doctor.page.reload()
    await ready(doctor.page)


async def reload_nurse(day: Day) -> None:
    await day.nurse.reload()
    await ready(day.nurse)


async def check_in(day: Day, ref: str, reason: str) -> None:
    nurse = day.nurse
    await nurse.locator("#checkin").wait_for(timeout=15000)
    # The camera came back from the last call: a live preview, ready for this patient.
    await nurse.wait_for_function("document.querySelector('#precheck').dataset.media === 'preview'"
                                  " && document.querySelector('#precheck-video').videoWidth > 0", timeout=20000)
    await check_in_form(nurse, "routine", ref=ref, reason=reason, waiting_ms=15000)


async def first_video_ms(day: Day, doctor: Physician, cid: str) -> tuple[int, int]:
    """Milliseconds from the accept to the first frame of the other's camera, on each side."""
    for page in (doctor.page, day.nurse):
        await plays(page, cid)
    accepted = await doctor.page.evaluate("window.__acceptAt")
    physician_ms = await doctor.page.evaluate("window.teleconsult.view.timeline.firstRemoteFrame") - accepted
    nurse_ms = await day.nurse.evaluate("window.teleconsult.view.timeline.firstRemoteFrame") - accepted
    return int(physician_ms), int(nurse_ms)


async def devices_answer(day: Day, doctor: Physician) -> int:
    """A dermatoscope still asked for (it takes a while: first), a stethoscope command confirmed
    by the agent. Returns how many stills the gallery had before."""
    page = doctor.page
    for source in ("stethoscope", "dermatoscope"):
        await page.locator(f"#devices [data-source={source}]").wait_for(timeout=30000)
    await page.wait_for_function("document.querySelector('[data-source=dermatoscope] video').videoWidth > 0",
                                 timeout=30000)
    before = await page.locator("[data-source=dermatoscope] .gallery li").count()
    # Each change of the capture button, with what the status line said then (page clock).
    await page.evaluate(STILL_BUTTON_LOG)
    await page.evaluate("window.__msgs = []; window.teleconsult.call.addEventListener('message', (e) => "
                        "window.__msgs.push([performance.now(), e.detail.data && e.detail.data.type, e.detail.data && e.detail.data.device]))")
    await page.click("#dermatoscope-still")
    assert await page.is_disabled("#dermatoscope-still")  # no duplicates: disabled until the still arrives
    await page.wait_for_function("document.querySelector('#steth-mode input:checked') !== null", timeout=30000)
    modes = ["bell", "diaphragm", "wide"]
    now = await page.evaluate("document.querySelector('#steth-mode input:checked').value")
    mode = modes[(modes.index(now) + 1) % 3]
    await page.click(f"label[for=steth-mode-{mode}]")
    # The agent confirms: the status line says the new mode (in the page's language).
    await page.wait_for_function(
        "(m) => (document.querySelector('[data-source=stethoscope] .device-status')?.dataset.i18nParams || '')"
        ".includes('steth.mode.' + m)", arg=mode, timeout=20000)
    return int(before)


async def still_arrived(doctor: Physician, before: int) -> str:
    page = doctor.page
    try:
        await page.wait_for_function(
            f"document.querySelectorAll('[data-source=dermatoscope] .gallery li[data-width]').length > {before}",
            timeout=90000)
    except Exception:
        print("STILL DEBUG", await page.evaluate("""() => ({stills: window.teleconsult.stills?.list(),
          viewStills: window.teleconsult.view?.stills?.list(), same: window.teleconsult.stills === window.teleconsult.view?.stills,
          gallery: document.querySelector('[data-source=dermatoscope] .gallery')?.outerHTML.slice(0, 600),
          status: document.querySelector('[data-source=dermatoscope] .device-status')?.textContent,
          log: window.__stillButton, msgs: window.__msgs})"""))
        raise
    # Ours arrived (a still asked for before a reload may arrive too, without ending the wait).
    await page.wait_for_function("!document.querySelector('#dermatoscope-still').disabled", timeout=90000)
    # The button came back when the still arrived (3–7 s; much more on a loaded machine), or after
    # the page gave up waiting (20 s), never on a short timer of its own.
    log = await page.evaluate("window.__stillButton")
    disabled = [entry for entry in log if entry["disabled"]]
    enabled = [entry for entry in log if not entry["disabled"]]
    assert disabled and enabled, log
    waited = enabled[0]["at"] - disabled[0]["at"]
    assert enabled[0]["status"] == "still.received" or waited >= 20000, log
    return str(await page.evaluate("[...document.querySelectorAll('[data-source=dermatoscope] .gallery li')]"
                                   ".map((li) => li.dataset.stillId)[0]"))


async def vitals_read_as_a_clinician(day: Day, doctor: Physician) -> None:
    page = doctor.page
    await page.locator("#devices [data-source=vitals] tr[data-name=heart_rate]").wait_for(timeout=30000)
    # The cuff reads once in 30 s; its last reading comes with the devices' status when the page joins.
    await page.locator("#devices [data-source=vitals] tr[data-name=blood_pressure]").wait_for(timeout=10000)
    rows = await page.evaluate("""() => [...document.querySelectorAll('[data-source=vitals] tbody tr')].map((tr) =>
        ({name: tr.dataset.name, value: tr.children[1].textContent, nowrap: getComputedStyle(tr.children[1]).whiteSpace,
          lines: tr.children[1].getClientRects().length}))""")
    names = [r["name"] for r in rows]
    assert names.count("heart_rate") == 1 and "pulse_rate" not in names, rows  # one heart rate
    assert not {"systolic", "diastolic", "mean_arterial_pressure"} & set(names), rows  # pressure on one row
    for row in rows:
        assert row["nowrap"] == "nowrap", row
        if row["name"] == "heart_rate":
            assert re.fullmatch(rf"\d+{NBSP}/min", row["value"]), row
        if row["name"] == "blood_pressure":
            assert re.fullmatch(rf"\d+/\d+{NBSP}mmHg", row["value"]), row
            day.bp_seen = True
        if row["name"] == "spo2":
            assert re.fullmatch(r"\d+[\u00a0\u202f]?%", row["value"]), row


async def read_report(day: Day, doctor: Physician, cid: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{day.server.url}/api/consultations/{cid}/report",
                            headers={"Authorization": f"Bearer {doctor.token}"}) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())


async def workstation_fits(doctor: Physician) -> None:
    size = await doctor.page.evaluate(FITS)
    assert size["height"] <= size["innerHeight"] and size["width"] <= size["innerWidth"], (doctor.name, size)


async def one_consultation(day: Day, index: int, reload_kind: str) -> None:
    doctor = day.physicians[index % 2]
    other = day.physicians[1 - index % 2]
    rng = day.rng
    figures: dict[str, Any] = {"n": index + 1, "physician": doctor.name, "reload": reload_kind}
    began = time.monotonic()
    ref = f"PAT-{index + 1:02d}-{rng.randrange(1000, 9999)}"
    findings = f"Consultation {index + 1}: regular rhythm, no murmur; lesion 4 mm, regular border."

    # Who takes it: the other physician is busy; a reload while idle keeps "available".
    await set_presence(other, "busy")
    await set_presence(doctor, "available")
    if reload_kind == "physician_idle":
        await asyncio.sleep(rng.uniform(0, 1.0))
        await reload_physician(day, doctor)
    await presence_is(day, doctor, "available")
    await presence_is(day, other, "busy")

    await check_in(day, ref, "Chest pain and a skin lesion")
    if reload_kind == "nurse_waiting":
        await asyncio.sleep(rng.uniform(0, 0.8))
        await reload_nurse(day)
        await day.nurse.locator("#waiting, #call").first.wait_for(timeout=20000)

    offer = doctor.page.locator("#offer")
    await offer.wait_for(timeout=30000)
    assert ref in await doctor.page.locator("#offer-patient").text_content()  # the patient's reference
    assert "Claire Martin" in await doctor.page.locator("#offer-nurse").text_content()  # a name, not an id
    assert await other.page.locator("#offer").is_hidden()
    cid = await doctor.page.get_attribute("#offer", "data-consultation")
    laps = figures["laps"] = {}
    lap(laps, "offer", began)

    if index == 2:
        # A decline: the request goes back to the queue, the nurse is told, the physician takes it.
        await doctor.page.keyboard.press("Escape")  # Escape does not decline
        assert await offer.is_visible()
        await doctor.page.click("#offer-decline")
        note = day.nurse.locator("#waiting-note[data-status=declined]")
        await note.wait_for(timeout=15000)
        assert doctor.display in await note.text_content()
        row = doctor.page.locator(f"#queue-body tr[data-id='{cid}'][data-declined=true] button.pick")
        await row.wait_for(timeout=15000)
        await doctor.page.wait_for_function(f"!document.querySelector(\"#queue-body tr[data-id='{cid}'] button.pick\").disabled",
                                            timeout=10000)
        await doctor.page.evaluate("window.__acceptAt = Date.now()")
        await row.click()
    else:
        await doctor.page.evaluate("window.__acceptAt = Date.now()")
        await doctor.page.click("#offer-accept")

    # Both videos within 2 s of the accept.
    physician_ms, nurse_ms = await first_video_ms(day, doctor, cid)
    figures.update(physician_first_video_ms=physician_ms, nurse_first_video_ms=nurse_ms)
    lap(laps, "video", began)
    await presence_is(day, doctor, "in_consultation")
    await presence_is(day, other, "busy")
    assert ref in await doctor.page.locator("#call-patient").text_content()
    assert ref in await doctor.page.locator("#report-patient").text_content()

    if index == 1:
        # The nurse's camera stops mid-call (unplugged, taken by another application): the page
        # notices, opens it again, says so, and the physician sees the patient again.
        await day.nurse.evaluate(CAMERA_LOST)
        await day.nurse.wait_for_function("window.teleconsult.view.timeline.localTrackRestarts === 1", timeout=20000)
        assert await day.nurse.get_attribute("#local-media", "data-i18n") == "call.local.back.camera"
        await doctor.page.wait_for_function(f"({REMOTE_FRAMES})() > 0", timeout=5000)
        frames = await doctor.page.evaluate(REMOTE_FRAMES)
        await doctor.page.wait_for_function(f"({REMOTE_FRAMES})() > {frames} + 5", timeout=20000)

    if index == 4:
        # A second tab of the nurse does not join silently: it says the call is open elsewhere.
        # It stays open for the rest of the day (the next call does not take it either).
        day.second_tab = await day.nurse.context.new_page()
        await day.second_tab.goto(f"{day.server.url}/nurse#token={day.nurse_token}")
        await day.second_tab.locator("#elsewhere").wait_for(timeout=20000)
        assert await day.second_tab.locator("#call").count() == 0
    elif day.second_tab is not None:
        await day.second_tab.locator("#elsewhere").wait_for(timeout=20000)
        assert await day.second_tab.locator("#call").count() == 0

    before = await devices_answer(day, doctor)
    await doctor.page.fill("#report-findings", findings)
    if reload_kind == "physician_typing":
        # Reloaded a moment after typing: the page warns (beforeunload), the draft comes back.
        await asyncio.sleep(rng.uniform(0, 0.4))
        old = await remote_publication(day.nurse)
        await reload_physician(day, doctor)
        await doctor.page.locator("#call").wait_for(timeout=30000)
        await doctor.page.wait_for_function(
            "(text) => document.querySelector('#report-findings').value === text", arg=findings, timeout=15000)
        await plays(doctor.page, cid)
        await plays_again(day.nurse, old)
        figures["stale_after_reload_s"] = round(await no_stale_banner(day.nurse, "the physician's reload"), 2)
        await presence_is(day, doctor, "in_consultation")
        before = await devices_answer(day, doctor)
    await vitals_read_as_a_clinician(day, doctor)
    lap(laps, "devices", began)
    still_id = await still_arrived(doctor, before)
    lap(laps, "still", began)

    if reload_kind in ("physician_call", "nurse_call"):
        await asyncio.sleep(rng.uniform(0, 1.5))
        if reload_kind == "physician_call":
            old = await remote_publication(day.nurse)
            await reload_physician(day, doctor)
            await doctor.page.locator("#call").wait_for(timeout=30000)
            await plays(doctor.page, cid)
            await plays_again(day.nurse, old)
            figures["stale_after_reload_s"] = round(await no_stale_banner(day.nurse, "the physician's reload"), 2)
            await no_stale_banner(doctor.page, "its own reload")
            await presence_is(day, doctor, "in_consultation")  # never "away" after a reload
            # The stills and the report come back with the page.
            await doctor.page.locator(f"[data-source=dermatoscope] .gallery li[data-still-id='{still_id}']").wait_for(
                timeout=30000)
            await doctor.page.wait_for_function(
                "(text) => document.querySelector('#report-findings').value === text", arg=findings, timeout=15000)
            await vitals_read_as_a_clinician(day, doctor)
        else:
            old = await remote_publication(doctor.page)
            await reload_nurse(day)
            await in_call(day.nurse)
            await plays(day.nurse, cid)
            await plays_again(doctor.page, old)
            figures["stale_after_reload_s"] = round(await no_stale_banner(doctor.page, "the nurse's reload"), 2)
            await no_stale_banner(day.nurse, "its own reload")
    await no_stale_banner(doctor.page, "nothing")
    lap(laps, "reloads", began)

    if not doctor.screenshots:
        if doctor.name == "A":
            # A language switch mid-call: everything on screen in the new language, numbers too.
            await doctor.page.click("#lang-switch")
            await doctor.page.wait_for_function("document.documentElement.lang === 'fr'")
            assert await doctor.page.locator("#presence-now").text_content() == "En consultation"
            assert await doctor.page.locator("[data-source=vitals] tr[data-name=heart_rate] th").text_content() == \
                "Fréquence cardiaque"
            assert await doctor.page.locator("#quality summary").text_content() == "Qualité de connexion"
            await doctor.page.wait_for_function("document.querySelectorAll('#quality tbody tr').length > 0",
                                                timeout=10000)
            loss = await doctor.page.locator("#quality tbody tr td:nth-child(3)").first.text_content()
            assert re.fullmatch(r"\d+,\d[\u00a0\u202f]%", loss), loss  # "0,0 %": French numbers
            status = await doctor.page.locator("[data-source=stethoscope] .device-status").text_content()
            assert status.startswith("Allumé"), status
            await doctor.page.click("#lang-switch")
            await doctor.page.wait_for_function("document.documentElement.lang === 'en'")
            assert await doctor.page.locator("#presence-now").text_content() == "In consultation"
            # The still viewer: fit to the screen, 1:1, labelled.
            await doctor.page.click(f"[data-source=dermatoscope] .gallery li[data-still-id='{still_id}'] button")
            await doctor.page.wait_for_function("document.querySelector('#still-full')?.naturalWidth === 1920",
                                                timeout=15000)
            fit = await doctor.page.evaluate("document.querySelector('#still-full').getBoundingClientRect().width")
            assert fit < 1366, fit  # fit to the screen
            await doctor.page.click("#still-zoom")
            assert await doctor.page.evaluate("document.querySelector('#still-full').getBoundingClientRect().width") == 1920
            await doctor.page.fill("#still-label", "Lesion, left forearm")
            await doctor.page.click(".still-label button[type=submit]")
            await doctor.page.wait_for_function(
                "document.querySelector('#still-label-status').dataset.i18n === 'still.label_saved'", timeout=10000)
            await doctor.page.click("#still-close")
        await doctor.page.fill("#report-conclusion", "Benign naevus; non-cardiac chest pain.")
        await workstation_fits(doctor)
        width = 1366 if doctor.name == "A" else 1024
        await doctor.page.evaluate("document.querySelector('.device-stack').scrollTop = 0")  # the picker in view
        await screenshot(doctor.page, f"workstation-{width}.png", full_page=False)
        doctor.screenshots.append(f"workstation-{width}.png")
        problems = await axe_violations(doctor.page)
        assert not problems, (doctor.name, problems)
        if index == 0:
            assert not await axe_violations(day.nurse), "nurse in a call"
            await screenshot(day.nurse, "nurse-day-call.png", full_page=False)

    lap(laps, "screens", began)
    # The report with its stills and vitals: saved, read back.
    await doctor.page.fill("#report-prescriptions", f"Paracetamol 1 g\nReview in {index + 1} weeks")
    await doctor.page.click("#report-save")
    await doctor.page.wait_for_function("document.querySelector('#report-form').dataset.status === 'final'"
                                        " && document.querySelector('#report-form').dataset.saved", timeout=20000)
    stored = await read_report(day, doctor, cid)
    assert stored["status"] == "final", stored
    report = stored["report"]
    assert report["findings"] == findings
    assert report["prescriptions"] == ["Paracetamol 1 g", f"Review in {index + 1} weeks"]
    assert still_id in [s["still_id"] for s in report["stills"]], report["stills"]
    assert {"pulse_rate", "heart_rate"} & set(report["vitals"]), report.get("vitals")
    assert stored["patient_ref"] == ref
    await doctor.page.locator(f"#report-stills li[data-still-id='{still_id}']").wait_for(timeout=5000)

    lap(laps, "report", began)
    # The end, confirmed; the nurse's summary and next step; presence back to available.
    await end_call(doctor.page)
    await doctor.page.locator("#ended").wait_for(timeout=20000)
    await day.nurse.locator("#ended").wait_for(timeout=20000)
    summary = await day.nurse.locator("#ended-summary").text_content()
    assert ref in summary and doctor.display in summary, summary
    assert await day.nurse.locator("#ended-next").text_content()
    if index == 0:
        assert not await axe_violations(day.nurse), "nurse, the end"
        await screenshot(day.nurse, "nurse-day-ended.png", full_page=False)
    await presence_is(day, doctor, "available")
    await no_stale_banner(doctor.page, "the end")
    await no_stale_banner(day.nurse, "the end")
    await doctor.page.click("#back-to-queue")
    await day.nurse.click("#new-checkin")
    figures["seconds"] = round(time.monotonic() - began, 1)
    day.figures.append(figures)
    print("consultation", figures)


async def start_agent(server: RunningServer, tmp_path: Path) -> asyncio.subprocess.Process:
    """The site's device agent (simulated devices) in its own process: its encoders and stills
    run on the other core, not in the test's event loop with the server."""
    log = tmp_path / "agent.log"
    env = {**os.environ, "TELECONSULT_DEVICES__FRAMERATE": "5", "TELECONSULT_MEDIA__LISTEN_IP": "127.0.0.1",
           "TELECONSULT_MEDIA__ALLOWED_REMOTE_NETWORKS": "127.0.0.0/8",
           "TELECONSULT_SERVER__DATA_DIR": str(tmp_path / "agent-data"), "TELECONSULT_SERVER__LOG_LEVEL": "INFO"}
    token = server.tokens.issue_access("agent", "agent-cabin-demo", site="cabin-demo")
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "teleconsult", "agent", "--server", server.url, "--site-token", token,
            "--devices", "stethoscope,dermatoscope,vitals", "--simulate", env=env, cwd=ROOT,
            stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "signalling connected" not in log.read_text(errors="replace"):
        assert process.returncode is None, log.read_text(errors="replace")[-2000:]
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
        await asyncio.sleep(0.1)
    return process


async def stop_agent(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()


async def test_clinic_day(server: RunningServer, chromium, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seed = int(os.environ.get("CLINIC_DAY_SEED") or random.SystemRandom().randrange(1, 1_000_000))
    print(f"clinic day seed: {seed} (CLINIC_DAY_SEED={seed} replays it)")
    rng = random.Random(seed)
    reloads = RELOADS[:]
    rng.shuffle(reloads)
    started = time.monotonic()
    agent = await start_agent(server, tmp_path)
    console = Console()
    try:
        doctors = []
        for name, sub, display, width, locale in (("A", "dr-demo", "Dr Demo", 1366, "en-GB"),
                                                  ("B", "dr-general", "Dr General", 1024, "fr-FR")):
            token = server.tokens.issue_access("physician", sub, specialties=["general"])
            page = await open_page(chromium, f"{server.url}/physician#token={token}", locale=locale, console=console,
                                   viewport={"width": width, "height": 768})
            await ready(page)
            doctors.append(Physician(name=name, sub=sub, display=display, page=page, token=token, lang=locale[:2]))
        nurse_token = server.tokens.issue_access("nurse", "nurse-day", site="cabin-demo", name="Claire Martin")
        nurse = await open_page(chromium, f"{server.url}/nurse#token={nurse_token}", locale="fr-FR", console=console,
                                viewport={"width": 1366, "height": 768})
        await ready(nurse)
        await nurse.locator("#precheck[data-verdict=ok]").wait_for(timeout=30000)
        day = Day(server=server, nurse=nurse, nurse_token=nurse_token, physicians=doctors, rng=rng)
        for doctor in doctors:
            # The "unsaved text" warning on a reload: seen, and answered "leave".
            def on_dialog(dialog, d=doctor) -> None:  # type: ignore[no-untyped-def]
                day.dialogs.append(f"{d.name}:{dialog.type}")
                asyncio.ensure_future(dialog.accept())
            doctor.page.on("dialog", on_dialog)
        for index in range(CONSULTATIONS):
            await one_consultation(day, index, reloads[index])
        assert "physician_typing" not in reloads or any(d.endswith("beforeunload") for d in day.dialogs), day.dialogs
        if day.second_tab is not None:
            await day.second_tab.close()
        slowest = max(max(f["physician_first_video_ms"], f["nurse_first_video_ms"]) for f in day.figures)
        print(f"clinic day: {CONSULTATIONS} consultations in {time.monotonic() - started:.0f} s, "
              f"slowest first video {slowest} ms, blood pressure seen: {day.bp_seen}, seed {seed}")
        for f in day.figures:
            assert f["physician_first_video_ms"] <= FIRST_VIDEO_MS and f["nurse_first_video_ms"] <= FIRST_VIDEO_MS, f
        assert day.bp_seen
        assert not console.errors, console.errors
        assert "PAT-0" not in console.text()  # patient references never reach the console
    finally:
        await stop_agent(agent)
