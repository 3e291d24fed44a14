"""A whole consultation through the pages, real server, real Chromium: the
nurse checks a patient in, the physician sees the request, accepts the offer,
both see and hear each other, the report is saved and read back, the call ends
on both pages; a dropped socket comes back by itself."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from core.auth import TokenService
from tests.signalling.client import SigClient
from tests.support import RunningServer, wait_for
from tests.web_client.axe_check import axe_violations
from tests.web_client.conftest import Console, open_page, screenshot

PATIENT_REF = "PAT-7731-XQ"
REASON = "Chest pain since this morning, zqv-marker"

FRAMES_DECODED = """
async () => {
  const pc = window.teleconsult.call.pc;
  let frames = 0;
  (await pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded || 0; });
  return frames;
}
"""


class Serving(Protocol):
    """Where the pages are and who signs the tokens: a RunningServer, or processes (:class:`Pages`)."""

    @property
    def url(self) -> str: ...

    @property
    def tokens(self) -> TokenService: ...


@dataclass(frozen=True)
class Pages:
    """The pages of a deployment of processes (``serve --media-workers``, several hosts)."""

    url: str
    tokens: TokenService


async def signed_in(server: Serving, browser, role: str, console: Console, **claims):  # type: ignore[no-untyped-def]
    token = server.tokens.issue_access(role, claims.pop("sub"), **claims)
    page = await open_page(browser, f"{server.url}/{role}#token={token}", console=console)
    await page.wait_for_function("window.teleconsult && window.teleconsult.signalling.state === 'open'", timeout=15000)
    return page, token


async def decoded_frames_grow(page) -> int:  # type: ignore[no-untyped-def]
    first = await page.evaluate(FRAMES_DECODED)
    await page.wait_for_function(f"({FRAMES_DECODED})().then((n) => n > {first} + 10)", timeout=15000, polling=250)
    return int(await page.evaluate(FRAMES_DECODED))


async def end_call(page) -> None:  # type: ignore[no-untyped-def]
    """End the consultation for everyone: the button asks first, the page confirms."""
    await page.click("#end-call")
    await page.locator("#end-dialog").wait_for(timeout=5000)
    assert await page.evaluate("document.activeElement.id") == "end-cancel"  # the safe choice first
    await page.click("#end-confirm")


async def check_in(nurse, priority: str = "urgent", record: bool = False, *,  # type: ignore[no-untyped-def]
                   ref: str = PATIENT_REF, reason: str = REASON, waiting_ms: int = 10000) -> None:
    await nurse.fill("#patient-ref", ref)
    await nurse.fill("#reason", reason)
    await nurse.wait_for_function("document.querySelectorAll('#specialty option').length > 1")
    await nurse.select_option("#specialty", "general")
    await nurse.click(f"label[for=priority-{priority}]")
    await nurse.check("#consent-tele")
    if record:
        await nurse.check("#consent-rec")
    await nurse.click("#checkin-submit")
    await nurse.locator("#waiting").wait_for(timeout=waiting_ms)


async def test_consultation_from_check_in_to_end(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    console = Console()
    physician, dr_token = await signed_in(server, chromium, "physician", console, sub="dr-demo",
                                          specialties=["general", "cardiology", "dermatology"])
    await physician.click("label[for=presence-busy]")
    await physician.wait_for_function("document.querySelector('#presence').dataset.status === 'busy'")
    nurse, _ = await signed_in(server, chromium, "nurse", console, sub="nurse-1", site="cabin-demo")
    await nurse.locator("#precheck[data-verdict=ok]").wait_for(timeout=30000)

    # Check in while the physician is busy: the request waits in the queue.
    await check_in(nurse, record=True)
    assert await nurse.locator("#queue-position").text_content() == "1"
    row = physician.locator("#queue-body tr[data-priority=urgent]")
    await row.wait_for(timeout=10000)
    # Names, not ids: the site as the directory names it.
    assert "Demo cabin" in await row.text_content() and "General medicine" in await row.text_content()
    await screenshot(nurse, "nurse-waiting.png")
    await screenshot(physician, "physician-queue.png")

    # Available: the offer rings, with a countdown; accept with the keyboard.
    await physician.click("label[for=presence-available]")
    offer = physician.locator("#offer")
    await offer.wait_for(timeout=10000)
    assert REASON in await offer.text_content()
    assert int(await physician.locator("#offer-countdown").text_content()) > 0
    assert await physician.evaluate("document.activeElement.id") == "offer-accept"
    await screenshot(physician, "physician-offer.png", full_page=False)
    await physician.keyboard.press("Enter")

    # Both pages in the call; each decodes the other's camera.
    await physician.locator("#call").wait_for(timeout=15000)
    await nurse.locator("#call").wait_for(timeout=15000)
    for page in (physician, nurse):
        await page.wait_for_function("document.querySelector('#remote-video').videoWidth > 0", timeout=20000)
        await decoded_frames_grow(page)
    await physician.wait_for_function(
        "document.querySelector('#remote-audio').srcObject !== null", timeout=10000)
    await physician.wait_for_function("document.querySelector('#participants [data-role=nurse]') !== null",
                                      timeout=10000)
    await physician.locator("#quality summary").click()
    await physician.wait_for_function("document.querySelectorAll('#quality tbody tr').length >= 2", timeout=10000)
    # The patient consented to recording: the physician starts it, both pages show it.
    await physician.click("#record")
    for page in (physician, nurse):
        await page.locator("#recording").wait_for(timeout=10000)
    assert await physician.get_attribute("#record", "aria-pressed") == "true"
    await screenshot(nurse, "nurse-call.png")
    await screenshot(physician, "physician-call.png")
    for page, who in ((nurse, "nurse in a call"), (physician, "physician in a call")):
        problems = await axe_violations(page)
        assert not problems, (who, problems)
    await physician.click("#record")
    await nurse.locator("#recording").wait_for(state="hidden", timeout=10000)

    # The report: saved to the consultation, read back from the server.
    consultation_id = await physician.evaluate("window.teleconsult.view.consultation.id")
    assert await physician.input_value("#report-reason") == REASON
    await physician.fill("#report-findings", "Regular rhythm, no murmur.")
    await physician.fill("#report-conclusion", "Non-cardiac chest pain.")
    await physician.fill("#report-prescriptions", "Paracetamol 1 g\nRest")
    await physician.fill("#report-follow-up", "GP in one week.")
    await physician.click("#report-save")
    await physician.wait_for_function("document.querySelector('#report-form').dataset.saved", timeout=10000)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/consultations/{consultation_id}/report",
                            headers={"Authorization": f"Bearer {dr_token}"}) as r:
            stored = await r.json()
    assert stored["report"]["prescriptions"] == ["Paracetamol 1 g", "Rest"]
    assert stored["report"]["findings"] == "Regular rhythm, no murmur."

    # End: both pages leave the call.
    await end_call(physician)
    await physician.locator("#ended").wait_for(timeout=10000)
    await nurse.locator("#ended").wait_for(timeout=10000)
    assert await nurse.get_attribute("#ended", "data-state") == "ended"
    assert await physician.locator("#report-form").is_visible()  # still editable after the end
    # Both end screens offer an expert opinion on this consultation (tests/web_client/test_expertise.py).
    for page, role in ((nurse, "nurse"), (physician, "physician")):
        assert await page.get_attribute("#ended-expertise", "href") == \
            f"/expertise?as={role}&consultation={consultation_id}"
        assert await page.locator("#ended-expertise").is_visible()
    await screenshot(nurse, "nurse-ended.png")
    assert not await axe_violations(nurse), "nurse, the end"

    # Patient data never reaches the console.
    assert PATIENT_REF not in console.text() and "zqv-marker" not in console.text()
    assert not console.errors, console.errors
    await nurse.context.close()
    await physician.context.close()


async def into_call(server: Serving, chromium, console: Console, *, record: bool = False,  # type: ignore[no-untyped-def]
                    timeout_ms: int = 20000):
    """A nurse and an available physician in an active consultation (``record``: with the
    patient's consent to record), each page showing the other's camera within ``timeout_ms``."""
    physician, _ = await signed_in(server, chromium, "physician", console, sub="dr-demo",
                                   specialties=["general"])
    await physician.click("label[for=presence-available]")
    await physician.wait_for_function("document.querySelector('#presence').dataset.status === 'available'")
    nurse, _ = await signed_in(server, chromium, "nurse", console, sub="nurse-1", site="cabin-demo")
    await check_in(nurse, "routine", record)
    await physician.locator("#offer").wait_for(timeout=timeout_ms)
    await physician.click("#offer-accept")
    for page in (physician, nurse):
        await page.locator("#call").wait_for(timeout=timeout_ms)
        await page.wait_for_function("document.querySelector('#remote-video').videoWidth > 0", timeout=timeout_ms)
    return nurse, physician


RECORD_BANNER = """
() => {
  window.__banners = [];
  new MutationObserver(() => {
    const b = document.querySelector('#banner');
    if (!b.hidden) window.__banners.push(b.dataset.key);
  }).observe(document.querySelector('#banner'), {attributes: true, childList: true, characterData: true});
}
"""


async def test_dropped_socket_shows_banner_and_resumes(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    console = Console()
    nurse, physician = await into_call(server, chromium, console)
    session = await nurse.evaluate("window.teleconsult.signalling.session")
    await nurse.evaluate(RECORD_BANNER)
    await physician.evaluate("window.__peer = []; window.teleconsult.signalling.addEventListener("
                             "'peer.connection', (e) => window.__peer.push(e.detail.state))")
    await nurse.evaluate("window.teleconsult.signalling.ws.close(4000, 'test drop')")
    await nurse.wait_for_function("window.__banners.includes('conn.banner.lost')", timeout=5000)
    await nurse.wait_for_function("document.querySelector('#banner').dataset.key === 'conn.banner.back'",
                                  timeout=15000)
    assert await nurse.locator("#banner").text_content() == "Connection restored."
    assert await nurse.evaluate("window.teleconsult.signalling.session") == session  # resumed, not new
    assert await nurse.evaluate("window.teleconsult.signalling.hello.resumed") is True
    # The physician saw the nurse drop and come back; the call goes on.
    await physician.wait_for_function("window.__peer.includes('dropped') && window.__peer.includes('resumed')",
                                      timeout=10000)
    assert await physician.get_attribute("#participants [data-role=nurse]", "data-state") == "resumed"
    assert await nurse.locator("#call").is_visible()
    await decoded_frames_grow(physician)
    await decoded_frames_grow(nurse)
    # Still a working socket: the nurse may end the consultation.
    await end_call(nurse)
    await physician.locator("#ended").wait_for(timeout=10000)
    await nurse.locator("#ended").wait_for(timeout=10000)
    await nurse.context.close()
    await physician.context.close()


async def test_nurse_cancels_a_waiting_request(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    console = Console()
    nurse, _ = await signed_in(server, chromium, "nurse", console, sub="nurse-2", site="ehpad-demo", )
    await check_in(nurse, "emergency")
    assert await nurse.get_attribute("#waiting-state", "data-state") == "requested"
    assert await nurse.locator("#queue-wait").text_content() != "–"
    # No physician online: the page says it cannot estimate the wait, not a made-up figure.
    assert await nurse.locator("#queue-wait").text_content() == "cannot estimate"
    await nurse.click("#cancel-visit")
    await nurse.locator("#ended[data-state=cancelled]").wait_for(timeout=10000)
    assert await nurse.locator("#ended-text").text_content() == "The request was cancelled."
    await nurse.click("#new-checkin")
    assert await nurse.locator("#checkin").is_visible()
    assert await nurse.evaluate("document.activeElement.id") == "patient-ref"
    await nurse.context.close()


async def test_a_check_in_retried_after_a_lost_reply_queues_the_patient_once(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    """The server took the request but its reply was lost (here: replaced by ``unavailable`` on the
    way to the page). The nurse submits again: the page sends the same ``request_key``, so the
    patient is queued once; a new check-in afterwards has a new key."""
    token = server.tokens.issue_access("nurse", "nurse-3", site="ehpad-demo")
    context = await chromium.new_context(bypass_csp=True)
    page = await context.new_page()
    keys: list[str] = []
    lost: list[str] = []

    def route(ws):  # type: ignore[no-untyped-def]
        upstream = ws.connect_to_server()

        def to_server(message: str | bytes) -> None:
            data = json.loads(message)
            if data.get("type") == "visit.request":
                keys.append(data.get("request_key"))
            upstream.send(message)

        def to_page(message: str | bytes) -> None:
            data = json.loads(message)
            if data.get("type") == "visit.request.ok" and not lost:
                lost.append(data["consultation"]["id"])
                ws.send(json.dumps({"type": "error", "id": data["id"], "code": "unavailable",
                                    "message": "the store did not answer"}))
                return
            ws.send(message)

        ws.on_message(to_server)
        upstream.on_message(to_page)

    await page.route_web_socket("**/ws", route)
    await page.goto(f"{server.url}/nurse#token={token}")
    await page.wait_for_function("window.teleconsult && window.teleconsult.signalling.state === 'open'", timeout=15000)
    await page.fill("#patient-ref", PATIENT_REF)
    await page.fill("#reason", REASON)
    await page.wait_for_function("document.querySelectorAll('#specialty option').length > 1")
    await page.select_option("#specialty", "general")
    await page.check("#consent-tele")
    await page.click("#checkin-submit")
    await page.locator("#checkin-error").wait_for(timeout=10000)
    await page.click("#checkin-submit")  # the nurse tries again
    await page.locator("#waiting").wait_for(timeout=10000)
    assert len(keys) == 2 and keys[0] == keys[1] and re.fullmatch(r"[0-9a-f]{32}", keys[0]), keys
    doctor = await SigClient.connect(server.url.replace("http", "ws", 1) + "/ws",
                                     server.tokens.issue_access("physician", "dr-q", specialties=["general"]))
    try:
        waiting = (await doctor.request("queue.list"))["waiting"]
    finally:
        await doctor.close()
    # Queued once: the consultation the lost reply was about, which the retry got back.
    assert [w["consultation_id"] for w in waiting if w["site"] == "ehpad-demo"] == lost, waiting
    await page.click("#cancel-visit")
    await page.click("#new-checkin")
    await page.fill("#patient-ref", PATIENT_REF)
    await page.fill("#reason", REASON)
    await page.select_option("#specialty", "general")
    await page.check("#consent-tele")
    await page.click("#checkin-submit")
    await page.locator("#waiting").wait_for(timeout=10000)
    assert len(keys) == 3 and keys[2] != keys[0], keys
    await context.close()
