"""A third and a fourth participant (issue 14) through the pages, real server, real Chromium,
the real device agent (simulated devices): the physician invites an interpreter (the link
copied from the page) and a specialist (the link e-mailed through a local SMTP server and read
from the message that arrived); both open /join, give their name, pass the camera and
microphone check and wait; the nurse confirms the patient's consent, the physician admits.
All four see each other's cameras play and hear each other (live audio tracks); the specialist
gets the stethoscope, the interpreter does not and its device command is refused by the SFU.
The physician removes the interpreter, whose page says so, and the consultation goes on. The
journal lists the invitation's and the participants' acts. Screenshots of the 3- and 4-party
layouts at 1366×768 and 1024×768."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config.settings import Settings
from devices.agent import AgentConfig, DeviceAgent
from tests.support import ARTIFACTS, RunningServer, SmtpSink, loopback_settings
from tests.web_client.axe_check import axe_violations
from tests.web_client.conftest import Console, open_page, screenshot
from tests.web_client.test_consultation import end_call, into_call
from web_client.pages import SECURITY_HEADERS

pytestmark = pytest.mark.timeout(480)  # four pages and the device agent on two cores

SPECIALIST_EMAIL = "dr.cardio@example.org"
SIZES = [(1366, 768), (1024, 768)]
LINK = re.compile(r"https?://[^\s<>\"]+/join#invite=[A-Za-z0-9._~-]+")

# Every remote camera and microphone the page plays: the large tile and the other people's tiles.
REMOTE_MEDIA = """() => {
  const tiles = [document.querySelector('#stage .tile.primary'), ...document.querySelectorAll('#stage .tile.guest')];
  return tiles.map((tile) => {
    const video = tile.querySelector('video');
    const audio = tile.classList.contains('primary') ? document.querySelector('#remote-audio') : tile.querySelector('audio');
    return {label: tile.querySelector('.tile-label').textContent, identity: tile.dataset.identity || '',
      role: tile.dataset.role || '', width: video.videoWidth, time: video.currentTime,
      audio: (audio.srcObject ? audio.srcObject.getAudioTracks() : []).map((t) => t.readyState)};
  });
}"""
# What the page's call knows, for a failure's message.
CALL_STATE = """() => { const c = window.teleconsult.call; if (!c) return null;
  return {identity: c.identity, pc: c.pc?.connectionState, channel: c.channel?.readyState, session: c.mediaSession,
    publications: [...c.publications.values()].map((p) => [p.id, p.identity, p.role, p.source]),
    subscriptions: [...c.subscriptions.values()].map((s) => [s.publication.id, s.announced, s.negotiated])}; }"""
# What the socket said about the room, and the call's errors: for a failure's message.
RECORD_ROOM = """() => {
  window.__room = [];
  const note = (what) => window.__room.push([Date.now() % 100000, what]);
  const s = window.teleconsult.signalling;
  for (const type of ['room.event', 'room.moved', 'consultation.started', 'ready', 'invitation.updated']) {
    s.addEventListener(type, (e) => { const m = e.detail; const d = m.data || {};
      note([type, m.event || '', (d.publication || d.participant || {}).identity || '', (d.publication || {}).source || '',
        (d.publication || {}).id || '', m.resumed ?? '', (m.invitation || {}).state || ''].join(' ')); });
  }
  const watch = () => { const c = window.teleconsult.call;
    if (!c || c.__watched) return; c.__watched = true;
    c.addEventListener('error', (e) => note('call error ' + (e.detail.error.code || '') + ' ' + e.detail.error.message));
    c.addEventListener('track-removed', (e) => note('track-removed ' + e.detail.publication.identity + ' ' + e.detail.publication.source));
  };
  setInterval(watch, 200);
  // An answer the browser refuses: kept whole, for the report.
  const set = RTCPeerConnection.prototype.setRemoteDescription;
  RTCPeerConnection.prototype.setRemoteDescription = async function (description) {
    try { return await set.call(this, description); } catch (error) {
      window.__refused = (window.__refused || []).concat([description.sdp]); throw error; }
  };
}"""
FITS = """() => ({height: document.documentElement.scrollHeight, innerHeight: innerHeight,
  width: document.documentElement.scrollWidth, innerWidth: innerWidth})"""
# A device command on the room channel; the SFU's answer (an error envelope) or null after 10 s.
COMMAND_ANSWER = """() => new Promise((resolve) => {
  const call = window.teleconsult.call;
  const timer = setTimeout(() => resolve(null), 10000);
  call.addEventListener('message', (event) => {
    const m = event.detail;
    if (m.data && m.data.type === 'error') { clearTimeout(timer); resolve(m); }
  });
  call.command('stethoscope', 'set_mode', {mode: 'bell'});
})"""


@pytest.fixture
def settings(tmp_path: Path, smtp_server: SmtpSink) -> Settings:
    # Five device frames a second keeps the simulated devices' encoders affordable on two cores;
    # the invitation e-mails go to the test's own SMTP server.
    return loopback_settings(tmp_path / "data", devices={"framerate": 5},
                             smtp={"url": smtp_server.url, "sender": "Téléconsultation <noreply@teleconsult.example.org>"})


def invitation_id(link: str) -> str:
    """``.../join#invite=<consultation>.<invitation>.<secret>``: the invitation's id."""
    return link.split("#invite=", 1)[1].rsplit(".", 2)[1]


async def invite(physician, role: str, label: str, email: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """The physician's "Invite…" dialog; returns the link it shows."""
    await physician.click("#invite-open")
    await physician.locator("#invite-dialog").wait_for(timeout=5000)
    await physician.select_option("#invite-role", role)
    await physician.fill("#invite-label", label)
    await physician.select_option("#invite-ttl", "3600")
    if email:
        await physician.fill("#invite-email", email)
    await physician.click("#invite-create")
    await physician.locator("#invite-result").wait_for(timeout=10000)
    link = await physician.input_value("#invite-link")
    await physician.click("#invite-copy")
    await physician.locator("#invite-copied:not(:empty)").wait_for(timeout=5000)
    await physician.click("#invite-done")
    return str(link)


async def join(chromium, link: str, name: str, console: Console, found: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    """A guest opens the link, gives a name, passes the check, claims: it waits to be admitted."""
    page = await open_page(chromium, link, console=console, viewport={"width": 1366, "height": 768})
    await page.locator("#join-form").wait_for(timeout=15000)
    await page.locator("#precheck [data-check=camera][data-state=ok]").wait_for(timeout=30000)
    await page.locator("#precheck [data-check=microphone][data-state=ok]").wait_for(timeout=10000)
    if not found:
        found["join form"] = await axe_violations(page)
        await screenshot(page, "guest-join.png")
    await page.fill("#guest-name", name)
    await page.click("#join-submit")
    await page.locator("#join-waiting").wait_for(timeout=15000)
    # The invitation token leaves the address bar once claimed; the access token stays in this tab.
    assert "invite" not in page.url and "#" not in page.url, page.url
    await page.wait_for_function("window.teleconsult.signalling && window.teleconsult.signalling.state === 'open'",
                                 timeout=15000)
    await page.evaluate(RECORD_ROOM)
    return page


MICROPHONES = """async () => {
  const out = {};
  for (const sub of window.teleconsult.call.subscriptions.values()) {
    if (sub.publication.source !== 'microphone') continue;
    const report = await sub.transceiver.receiver.getStats();
    for (const s of report.values()) {
      if (s.type !== 'inbound-rtp') continue;
      out[sub.publication.role] = {received: s.packetsReceived || 0, lost: s.packetsLost || 0, jitter: s.jitter || 0,
        concealed: s.concealedSamples || 0, samples: s.totalSamplesReceived || 0, energy: s.totalAudioEnergy || 0,
        codec: s.codecId && report.get(s.codecId) ? report.get(s.codecId).mimeType : ''};
    }
  }
  return out;
}"""


async def audio_clarity(page, window_ms: int) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Each remote microphone's reception over ``window_ms``, by its publisher's role: packets received,
    loss and concealment fractions, jitter, audio energy and codec (WebRTC's inbound-rtp statistics)."""
    before = await page.evaluate(MICROPHONES)
    await page.wait_for_timeout(window_ms)
    after = await page.evaluate(MICROPHONES)
    out: dict[str, dict[str, Any]] = {}
    for role, now in after.items():
        was = before.get(role, {})
        received = now["received"] - was.get("received", 0)
        lost = max(0, now["lost"] - was.get("lost", 0))
        samples = now["samples"] - was.get("samples", 0)
        out[role] = {"received": received, "loss": lost / max(1, received + lost),
                     "concealment": (now["concealed"] - was.get("concealed", 0)) / max(1, samples),
                     "jitter_ms": round(1000 * now["jitter"], 1), "energy": now["energy"] - was.get("energy", 0),
                     "codec": now["codec"]}
    return out


async def media_plays(page, count: int, what: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """``count`` remote cameras with frames, each advancing, and as many live microphones."""
    try:
        await page.wait_for_function(
            f"({REMOTE_MEDIA})().filter((m) => m.width > 0 && m.audio.includes('live')).length >= {count}",
            timeout=40000, polling=250)
    except Exception:
        raise AssertionError((what, await page.evaluate(REMOTE_MEDIA), await page.evaluate(CALL_STATE))) from None
    first = await page.evaluate(REMOTE_MEDIA)
    await page.wait_for_timeout(1500)
    second = await page.evaluate(REMOTE_MEDIA)
    assert len(second) == count, (what, second)
    before = {m["label"]: m["time"] for m in first}
    for m in second:
        assert m["width"] > 0 and m["audio"] == ["live"], (what, m)
        assert m["time"] > before.get(m["label"], 0), (what, "a video stopped", first, second)
    return list(second)


async def layouts(page, who: str, parties: int) -> None:  # type: ignore[no-untyped-def]
    for width, height in SIZES:
        await page.set_viewport_size({"width": width, "height": height})
        await page.wait_for_timeout(400)
        if who == "physician":  # the workstation fits the screen, nothing below it
            fits = await page.evaluate(FITS)
            assert fits["height"] <= fits["innerHeight"] + 1 and fits["width"] <= fits["innerWidth"] + 1, \
                (who, parties, width, fits)
        await screenshot(page, f"{who}-{parties}-party-{width}x{height}.png", full_page=who != "physician")
    await page.set_viewport_size({"width": 1400, "height": 900})


async def test_interpreter_and_specialist_invited_admitted_and_one_removed(
        server: RunningServer, chromium, smtp_server: SmtpSink,
        caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="sfu")  # a failure shows the media sessions' lives
    agent_token = server.tokens.issue_access("agent", "agent-cabin-demo", site="cabin-demo")
    agent = DeviceAgent(server.settings, AgentConfig(
        # The stethoscope (the device track the roles differ on) and vitals only: the agent encodes its
        # video devices in this process, beside the SFU forwarding four parties and four Chromium
        # instances, all on the CI's 2 cores (tests/web_client/test_devices.py covers every device).
        server=server.url, devices=("stethoscope", "vitals"), simulate=True,
        site_token=agent_token))
    task = asyncio.create_task(agent.run())
    pages: dict[str, Any] = {}
    try:
        await asyncio.wait_for(agent.connected.wait(), 15)
        console = Console()
        nurse, physician = await into_call(server, chromium, console)
        cid = await physician.evaluate("window.teleconsult.view.consultation.id")
        for page in (nurse, physician):
            await page.evaluate(RECORD_ROOM)
        await physician.locator("#call .call-actions #invite-open").wait_for(timeout=10000)
        assert not await physician.locator("#guests-title").is_visible()  # no guest: no list taking room

        # Two invitations: the interpreter's link copied from the page, the specialist's e-mailed.
        interpreter_link = await invite(physician, "interpreter", "Portuguese interpreter")
        assert interpreter_link.startswith(f"{server.url}/join#invite="), interpreter_link
        shown_link = await invite(physician, "specialist", "Cardiology opinion", SPECIALIST_EMAIL)
        (message,) = await smtp_server.wait_for(1)
        assert message["To"] == SPECIALIST_EMAIL
        body = message.get_body(preferencelist=("plain",))
        assert body is not None, message
        mailed = LINK.findall(str(body.get_content()))
        assert mailed and mailed[0] == shown_link, (mailed, shown_link)
        specialist_link = mailed[0]
        iv_interpreter, iv_specialist = invitation_id(interpreter_link), invitation_id(specialist_link)
        for iv in (iv_interpreter, iv_specialist):
            await physician.locator(f"#guest-list li[data-id='{iv}'][data-state=pending]").wait_for(timeout=10000)

        found: dict[str, list[str]] = {}  # axe's serious and critical violations, by screen
        interpreter = await join(chromium, interpreter_link, "Ana Silva", console, found)
        specialist = await join(chromium, specialist_link, "Dr Cardio", console, found)
        found["join waiting"] = await axe_violations(specialist)
        # A link works once: opened again, it says so.
        again = await open_page(chromium, interpreter_link, console=console)
        await again.fill("#guest-name", "Someone else")
        await again.click("#join-submit")
        await again.locator("#join-problem[data-kind=used]").wait_for(timeout=15000)
        found["join used"] = await axe_violations(again)
        await again.context.close()
        # /join is served like the other pages (CSP, no referrer...); the fragment never reaches it.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/join") as r:
                assert r.status == 200
                for name, value in SECURITY_HEADERS.items():
                    assert r.headers.get(name) == value, name

        # Both wait; the physician sees that the patient's consent is still awaited.
        for iv in (iv_interpreter, iv_specialist):
            row = physician.locator(f"#guest-list li[data-id='{iv}'][data-state=waiting]")
            await row.wait_for(timeout=10000)
            assert await row.locator(".guest-consent[data-consent=false]").count() == 1
        # The physician admits the interpreter first: it still waits for the consent.
        await physician.click(f"#guest-list li[data-id='{iv_interpreter}'] button.admit")
        await interpreter.wait_for_function(
            "document.querySelector('#join-waiting-state').dataset.i18n === 'join.waiting.state.consent'",
            timeout=10000)
        # The nurse sees who waits and their role, and confirms the patient's consent for both.
        for iv, role, name in ((iv_interpreter, "interpreter", "Ana Silva"), (iv_specialist, "specialist", "Dr Cardio")):
            row = nurse.locator(f"#guest-list li[data-id='{iv}'][data-role={role}]")
            await row.wait_for(timeout=10000)
            assert name in await row.locator(".name").text_content()
            await row.locator("button.consent").click()
            await nurse.locator(f"#guest-list li[data-id='{iv}'] .guest-consent[data-consent=true]").wait_for(
                timeout=10000)
        await physician.click(f"#guest-list li[data-id='{iv_specialist}'] button.admit")

        # Four parties: each page plays the three others' cameras and microphones, labelled.
        for page in (interpreter, specialist):
            await page.locator("#call").wait_for(timeout=20000)
        for iv in (iv_interpreter, iv_specialist):
            await physician.locator(f"#guest-list li[data-id='{iv}'][data-state=admitted][data-present=true]").wait_for(
                timeout=20000)
        pages.update(nurse=nurse, physician=physician, interpreter=interpreter, specialist=specialist)
        seen = {who: await media_plays(page, 3, who) for who, page in pages.items()}
        physician_labels = " | ".join(m["label"] for m in seen["physician"])
        assert "Ana Silva" in physician_labels and "Interpreter" in physician_labels, physician_labels
        assert "Dr Cardio" in physician_labels and "Specialist" in physician_labels, physician_labels
        assert {m["role"] for m in seen["interpreter"]} >= {"nurse", "physician", "specialist"}, seen["interpreter"]
        # An interpreter's voice is as clear at the cabin as the physician's: the same codec, no more
        # loss, concealment or jitter, as many packets, and sound in it (Chromium's fake microphone beeps).
        clarity = await audio_clarity(nurse, 4000)
        print("audio at the nurse's page over 4 s:", clarity)
        doc, interp = clarity["physician"], clarity["interpreter"]
        assert interp["codec"] == doc["codec"] and interp["energy"] > 0, clarity
        assert interp["received"] >= 0.9 * doc["received"] > 0, clarity
        assert interp["loss"] <= doc["loss"] + 0.01 and interp["concealment"] <= doc["concealment"] + 0.02, clarity
        assert interp["jitter_ms"] <= doc["jitter_ms"] + 20, clarity

        # The specialist hears the stethoscope; the interpreter gets no device track at all.
        await specialist.locator("#devices [data-source=stethoscope]").wait_for(timeout=30000)
        await specialist.wait_for_function(
            "window.teleconsult.view.board.panels.get('stethoscope').pcg.peak > 0.01", timeout=20000)
        await physician.locator("#devices [data-source=stethoscope]").wait_for(timeout=30000)
        sources = await interpreter.evaluate(
            "[...window.teleconsult.call.publications.values()].map((p) => p.source)")
        assert not {"stethoscope", "dermatoscope", "otoscope"} & set(sources), sources
        assert await interpreter.locator("#devices .device").count() == 0
        # A device command from the interpreter: the SFU refuses it (an error envelope from "sfu").
        answer = await interpreter.evaluate(COMMAND_ANSWER)
        assert answer and answer["from"] == "sfu" and answer["data"]["type"] == "error", \
            (answer, await interpreter.evaluate(CALL_STATE), await interpreter.evaluate("window.__room"))

        for who in ("physician", "nurse", "specialist"):
            found[f"{who}, 4 parties"] = await axe_violations(pages[who])
        for who in ("physician", "nurse"):
            await layouts(pages[who], who, 4)
        await screenshot(specialist, "specialist-4-party-1366x768.png")

        # The physician removes the interpreter: its page says so; the others go on.
        await physician.click(f"#guest-list li[data-id='{iv_interpreter}'] button.remove")
        await interpreter.locator("#join-left[data-reason=removed]").wait_for(timeout=15000)
        found["join removed"] = await axe_violations(interpreter)
        assert await interpreter.locator("#call").count() == 0 or not await interpreter.locator("#call").is_visible()
        await physician.locator(f"#guest-list li[data-id='{iv_interpreter}'][data-state=removed]").wait_for(
            timeout=10000)
        for who in ("nurse", "physician", "specialist"):
            page = pages[who]
            await page.wait_for_function(f"({REMOTE_MEDIA})().length === 2", timeout=40000)
            after = await media_plays(page, 2, f"{who} after the removal")
            assert not any(m["identity"].startswith("interpreter-") for m in after), (who, after)
        for who in ("physician", "nurse"):
            await layouts(pages[who], who, 3)

        # The journal: the invitations' steps and the guests' comings and goings.
        dr_token = server.tokens.issue_access("physician", "dr-demo", specialties=["general"])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/api/consultations/{cid}/journal",
                                headers={"Authorization": f"Bearer {dr_token}"}) as r:
                assert r.status == 200, await r.text()
                acts = [e["act"] for e in (await r.json())["entries"]]
        for act in ("invitation.create", "invitation.send", "invitation.claim", "invitation.admit",
                    "invitation.consent", "participant.join", "participant.leave", "participant.remove"):
            assert act in acts, (act, acts)

        # The end: the specialist's page says the consultation is over.
        await end_call(physician)
        for page in (nurse, physician, specialist):
            await page.locator("#ended").wait_for(timeout=15000)
        assert not console.errors, console.errors
        problems = {screen: lines for screen, lines in found.items() if lines}
        assert not problems, problems
        for page in pages.values():
            await page.context.close()
    except Exception as failed:
        if not pages:
            raise
        # What each page's call knew and what its socket said of the room: the failure's story.
        states = {}
        for who, page in pages.items():
            try:
                states[who] = [await page.evaluate(CALL_STATE), await page.evaluate("window.__room")]
                refused = await page.evaluate("window.__refused || []")
                if refused:
                    (ARTIFACTS / f"guests-refused-answer-{who}.sdp").write_text(refused[0])
            except Exception as gone:  # a page already closed
                states[who] = [repr(gone)]
        raise AssertionError((failed, states)) from failed
    finally:
        agent.stop()
        await asyncio.wait_for(task, 20)
