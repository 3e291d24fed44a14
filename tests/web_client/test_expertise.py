"""The télé-expertise page (/expertise) in Chromium against the real server (docs/expertise.md,
docs/web_client.md): a nursing-home nurse sends a dermatology case from a finished consultation
with two photos uploaded from the browser (a HEIC one refused first, with the server's reason on
screen) and the consultation's dermatoscope still; the dermatologist's inbox shows it without a
reload, they take it, look at the images at full resolution, hand it back with a reason and take it
again, ask a question; the nurse answers;
the dermatologist answers with a recommendation, and the nurse reads it and closes the case. A
colleague's take shows "already taken". axe on both sides.

The still is a real one: the simulated dermatoscope of the device agent (``devices.registry``)
captures it at full sensor resolution, colour-corrected, and it is posted the way the agent posts
it (``POST /api/consultations/{id}/stills`` with the agent's room token) during a real
consultation at the nursing home, which then ends. The WebRTC call itself is left out: the
device panels have their own test (test_devices.py)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from config.settings import DevicesSettings
from devices.registry import create_adapter
from signalling.expertise.case import Recommendation
from tests.devices.agent_clients import VISIT, start_consultation
from tests.support import RunningServer
from tests.web_client.axe_check import axe_violations
from tests.web_client.conftest import Console, open_page, screenshot

SITE = "ehpad-demo"
NURSE = "nurse-ehpad-7"
QUESTION = "Does it itch at night? zqv-question"
REPLY = "Yes, every night for two weeks. zqv-reply"
DIAGNOSIS = "Nummular eczema, zqv-diagnosis"
OPINION = "Benign-looking lesion; no sign of melanoma on the dermatoscopy. zqv-opinion"
EXIF_GPS = 0x8825


def photo(path: Path, fmt: str, size: tuple[int, int], *, orientation: int | None = None) -> Path:
    """A real photo-like image: a smooth gradient with a darker lesion and noise; JPEGs carry
    EXIF as phones write it (maker, GPS, orientation), which the server must cut."""
    w, h = size
    rng = np.random.default_rng(w + h)
    y, x = np.mgrid[0:h, 0:w]
    skin = np.stack([200 + 30 * x / w, 150 + 20 * y / h, 130 + 0 * x], axis=-1)
    lesion = ((x - w / 2) ** 2 + (y - h / 2) ** 2) < (min(w, h) / 6) ** 2
    skin[lesion] = (110, 60, 50)
    rgb = np.clip(skin + rng.normal(0, 4, skin.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb)
    if fmt == "JPEG":
        exif = Image.Exif()
        exif[0x010F] = "PhoneMaker"
        exif.get_ifd(EXIF_GPS)[2] = (47.0, 19.0, 12.0)
        if orientation is not None:
            exif[0x0112] = orientation
        img.save(path, "JPEG", quality=92, exif=exif)
    else:
        img.save(path, "PNG")
    return path


def heic(path: Path) -> Path:
    """What an iPhone sends by default: an ISO-BMFF file of brand ``heic`` (header only)."""
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(2048))
    return path


async def dermatoscope_still(server: RunningServer, consultation_id: str, http: aiohttp.ClientSession) -> dict[str, Any]:
    """A full-resolution still of the simulated dermatoscope, posted as the device agent posts it."""
    adapter = create_adapter("dermatoscope", DevicesSettings(), simulate=True, seed=7)
    try:
        still = await adapter.still()
    finally:
        await adapter.close()
    grant = server.tokens.issue_room(consultation_id, "agent", role="agent", publish=["dermatoscope"])
    async with http.post(f"{server.url}/api/consultations/{consultation_id}/stills", data=still.data,
                         headers={"Authorization": f"Bearer {grant}", "Content-Type": still.mime,
                                  "X-Device": "dermatoscope"}) as r:
        assert r.status == 201, await r.text()
        return dict(await r.json())


async def signed_in(server: RunningServer, browser, path: str, role: str, sub: str, console: Console,  # type: ignore[no-untyped-def]
                    **claims: Any):
    token = server.tokens.issue_access(role, sub, **claims)
    page = await open_page(browser, f"{server.url}{path}#token={token}", console=console)
    await page.wait_for_function("window.teleconsult?.expertise && window.teleconsult.signalling.state === 'open'",
                                 timeout=15000)
    return page


async def state_is(page, state: str, timeout: float = 10000) -> None:  # type: ignore[no-untyped-def]
    await page.locator(f"#case[data-state={state}]").wait_for(timeout=timeout)


async def test_a_dermatology_case_from_the_nursing_home_to_the_dermatologist_and_back(  # type: ignore[no-untyped-def]
        server: RunningServer, chromium, tmp_path: Path) -> None:
    console = Console()
    found: dict[str, list[str]] = {}
    async with aiohttp.ClientSession() as http:
        # A consultation at the nursing home, a dermatoscope still taken in it, then its end.
        consultation = await start_consultation(server, site=SITE, physician="dr-general", nurse=NURSE)
        still = await dermatoscope_still(server, consultation.id, http)
        assert (still["width"], still["height"]) == (1920, 1080)
        await consultation.end()
        await consultation.nurse.event("consultation.ended", consultation__id=consultation.id)
        await consultation.close()

        # The dermatologist's page is open before anything is sent.
        derma = await signed_in(server, chromium, "/expertise", "physician", "dr-derma", console,
                                specialties=["dermatology"])
        await derma.locator("#inbox:not([hidden]) #inbox-empty:not([hidden])").wait_for(timeout=10000)
        assert await derma.locator("#who").text_content() == "Dr Derma"
        await derma.evaluate("window.__notReloaded = true")

        # The nurse's end screen link: /expertise?consultation=<id> opens the case pre-filled.
        nurse = await signed_in(server, chromium, f"/expertise?as=nurse&consultation={consultation.id}", "nurse",
                                NURSE, console, site=SITE, name="Claire Martin")
        assert nurse.url == f"{server.url}/expertise?as=nurse&consultation={consultation.id}"  # no token left
        form = nurse.locator("#new-case-form")
        await form.wait_for(timeout=10000)
        assert await nurse.input_value("#x-patient-ref") == VISIT["patient_ref"]
        still_box = nurse.locator(f"#x-still-{still['still_id']}")
        await still_box.wait_for(timeout=10000)
        assert await still_box.is_checked()
        await nurse.wait_for_function("document.querySelector('#x-specialty').value === 'dermatology'")
        await nurse.locator("#q-location").wait_for(timeout=10000)
        # The questionnaire is the data's: the body map's places, the ABCDE signs, the photos' views.
        assert await nurse.locator("#q-location option[value=arm_left]").text_content() == "Left arm"
        assert await nurse.locator("label[for=photo-close_up]").text_content() == "Close up"
        await nurse.select_option("#x-expert", "")  # any dermatologist: the specialty's pool
        # The place on the body map (a click on the figure chooses it in the list beside it).
        await nurse.locator(".bodymap-svg .region[data-code=arm_left]").first.click()
        assert await nurse.input_value("#q-location") == "arm_left"
        assert await nurse.locator(".bodymap-svg .region.on").count() == 2  # from the front and the back
        await nurse.fill("#q-location_detail", "outer forearm")
        await nurse.fill("#q-duration_weeks", "6")
        await nurse.click("label[for=q-evolution-growing]")
        for sign, value in (("asymmetry", "false"), ("border", "true"), ("colour", "false"), ("evolving", "true")):
            await nurse.click(f"label[for=q-abcde_{sign}-{value}]")
        await nurse.fill("#q-abcde_diameter_mm", "7")
        await nurse.check("#q-symptoms-itching")
        await nurse.fill("#q-history", "No personal history of melanoma.")
        # Required fields are marked, for the eye and for the screen reader.
        marker = await nurse.evaluate("getComputedStyle(document.querySelector('label[for=x-patient-ref]'), '::after').content")
        assert "*" in marker
        assert await nurse.get_attribute("#x-consent", "aria-required") == "true"
        found["nurse new case"] = await axe_violations(nurse)
        await screenshot(nurse, "expertise-new-case.png")

        # An iPhone's HEIC is refused by the server, which says what to do; the case waits as a draft.
        await nurse.set_input_files("#photo-close_up", str(heic(tmp_path / "IMG_0042.heic")))
        await nurse.set_input_files("#photo-distance", str(photo(tmp_path / "distance.jpg", "JPEG", (640, 480),
                                                                    orientation=6)))
        await nurse.check("#x-consent")
        await nurse.click("#x-send")
        await state_is(nurse, "draft")
        notice = await nurse.locator("#case-notice").text_content() or ""
        assert "HEIC" in notice and "Most Compatible" in notice, notice
        assert await nurse.locator("#case-attachments figure").count() == 2  # the still and the distance photo
        # A PNG instead, for the missing close-up (the form offers the view that is missing).
        assert await nurse.input_value("#add-photo-view") == "close_up"
        await nurse.set_input_files("#add-photo-file", str(photo(tmp_path / "close.png", "PNG", (800, 600))))
        await nurse.click("#add-photo")
        await nurse.wait_for_function("document.querySelectorAll('#case-attachments figure').length === 3")
        await nurse.click("#case-submit")
        await state_is(nurse, "submitted")
        case_id = await nurse.get_attribute("#case", "data-id")
        assert case_id
        await nurse.locator(f"#sent-body tr[data-id={case_id}][data-state=submitted]").wait_for(timeout=5000)

        # The dermatologist is told: the case appears in the inbox without a reload.
        row = derma.locator(f"#inbox-body tr[data-id={case_id}]")
        await row.wait_for(timeout=10000)
        assert await derma.evaluate("window.__notReloaded === true")
        assert "To take" in (await row.text_content() or "")
        await row.locator("button.open-case").click()
        await derma.locator("#case[data-party=pool] #case-take").wait_for(timeout=10000)
        await derma.click("#case-take")
        await derma.locator("#case[data-party=expert]").wait_for(timeout=10000)
        answers = await derma.locator("#case-answers").text_content() or ""
        assert "Left arm" in answers and "outer forearm" in answers and "Growing" in answers
        # The attachments side by side, at full resolution: the still is 1920 wide; click: 1:1.
        await derma.wait_for_function(
            "[...document.querySelectorAll('#case-attachments figure')].every((f) => f.dataset.loaded === 'true')",
            timeout=15000)
        figure = derma.locator("#case-attachments figure[data-kind=still]")
        assert await figure.get_attribute("data-width") == "1920"
        await derma.wait_for_function(
            "document.querySelector('#case-attachments figure[data-kind=still] img').naturalWidth === 1920")
        boxes = [await f.bounding_box() for f in await derma.locator("#case-attachments figure").all()]
        assert len({round(b["y"]) for b in boxes if b}) < len(boxes), "the images are not side by side"
        await figure.locator("button.att-zoom").click()
        assert await figure.locator(".att-frame").get_attribute("data-zoom") == "actual"
        assert await figure.locator("button.att-zoom").get_attribute("aria-pressed") == "true"
        # The phone's photo: turned upright (EXIF orientation 6) and its EXIF (GPS) gone.
        distance = derma.locator("#case-attachments figure[data-view=distance]")
        assert (await distance.get_attribute("data-width"), await distance.get_attribute("data-height")) == ("480", "640")
        found["expert case"] = await axe_violations(derma)
        await screenshot(derma, "expertise-expert-case.png")
        # The answer's vocabulary is the server's.
        values = await derma.eval_on_selector_all("input[name=answer-recommendation]", "els => els.map((e) => e.value)")
        assert values == [r.value for r in Recommendation]

        # Handed back with a reason (the nurse reads it), the case is in the pool again; taken again.
        await derma.click("details.decline summary")
        await derma.fill("#decline-reason", "Back from leave tomorrow only. zqv-decline")
        await derma.click("#case-decline")
        await derma.locator("#case[data-party=pool] #case-take").wait_for(timeout=10000)
        await nurse.locator("#case-thread li[data-kind=decline]").wait_for(timeout=10000)
        assert "zqv-decline" in (await nurse.locator("#case-thread").text_content() or "")
        await derma.click("#case-take")
        await derma.locator("#case[data-party=expert]").wait_for(timeout=10000)

        # A question; the nurse's page shows it by itself, with the form to answer it.
        await derma.fill("#thread-text", QUESTION)
        await derma.click("#thread-send")
        await state_is(derma, "question")
        await nurse.locator("#case[data-state=question] #thread-form[data-kind=reply]").wait_for(timeout=10000)
        assert QUESTION in (await nurse.locator("#case-thread").text_content() or "")
        await nurse.fill("#thread-text", REPLY)
        await nurse.click("#thread-send")
        await state_is(nurse, "submitted")

        # The dermatologist reads the reply (their typed answer kept across the refresh) and answers.
        await derma.fill("#answer-opinion", OPINION)
        await derma.locator("#case-thread li[data-kind=reply]").wait_for(timeout=10000)
        assert REPLY in (await derma.locator("#case-thread").text_content() or "")
        assert await derma.input_value("#answer-opinion") == OPINION
        await derma.fill("#answer-diagnosis", DIAGNOSIS)
        await derma.fill("#answer-code", "L30.0")
        await derma.click("label[for=answer-rec-referral]")
        await derma.fill("#answer-follow-up", "See a dermatologist within a month.")
        await derma.click("#answer-send")
        await state_is(derma, "answered")

        # The nurse reads the answer, then closes the case.
        answer = nurse.locator("#answer-view[data-recommendation=referral]")
        await answer.wait_for(timeout=10000)
        text = await answer.text_content() or ""
        assert DIAGNOSIS in text and "L30.0" in text and "In-person referral" in text and OPINION in text
        assert "Dr Derma" in text
        found["nurse answered"] = await axe_violations(nurse)
        await screenshot(nurse, "expertise-answered.png")
        await nurse.click("#case-close")
        await state_is(nurse, "closed")
        await nurse.locator(f"#sent-body tr[data-id={case_id}][data-state=closed]").wait_for(timeout=5000)

        # On the server: two uploads and the still by reference; the photo carries no EXIF any more.
        headers = {"Authorization": f"Bearer {server.tokens.issue_access('physician', 'dr-derma')}"}
        async with http.get(f"{server.url}/api/expertise/{case_id}", headers=headers) as r:
            body = await r.json()
        assert sorted((a["kind"], a["view"]) for a in body["attachments"]) == [
            ("still", None), ("upload", "close_up"), ("upload", "distance")]
        (dist,) = [a for a in body["attachments"] if a["view"] == "distance"]
        async with http.get(f"{server.url}/api/expertise/{case_id}/attachments/{dist['id']}", headers=headers) as r:
            data = await r.read()
        assert b"PhoneMaker" not in data and Image.open(io.BytesIO(data)).size == (480, 640)

        # A case a colleague takes while it is on the dermatologist's screen: "already taken".
        second = await second_case(server, http, tmp_path)
        await derma.locator(f"#inbox-body tr[data-id={second}]").wait_for(timeout=10000)
        await derma.locator(f"#inbox-body tr[data-id={second}] button.open-case").click()
        await derma.locator(f"#case[data-id={second}] #case-take").wait_for(timeout=10000)
        colleague = {"Authorization": f"Bearer {server.tokens.issue_access('physician', 'dr-demo')}"}
        async with http.post(f"{server.url}/api/expertise/{second}/take", headers=colleague) as r:
            assert r.status == 200
        await derma.click("#case-take")
        await derma.locator("#case-status.error").wait_for(timeout=10000)
        assert await derma.locator("#case-status").text_content() == "Already taken by a colleague."

        await nurse.context.close()
        await derma.context.close()
    problems = {page: lines for page, lines in found.items() if lines}
    assert not problems, problems
    assert "zqv-" not in console.text(), "patient data in the console"
    assert not console.errors, console.errors


async def second_case(server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path) -> str:
    """Another case of the nursing home, sent over REST, to the dermatology pool."""
    headers = {"Authorization": f"Bearer {server.tokens.issue_access('nurse', NURSE, site=SITE)}"}
    answers = {"location": "face", "duration_weeks": 2, "evolution": "stable", "abcde_asymmetry": False,
               "abcde_border": False, "abcde_colour": False, "abcde_diameter_mm": 3, "abcde_evolving": False}
    async with http.post(f"{server.url}/api/expertise", headers=headers, json={
            "specialty": "dermatology", "patient_ref": "P-2", "consent": True, "answers": answers}) as r:
        assert r.status == 201, await r.text()
        case_id = str((await r.json())["id"])
    for view in ("close_up", "distance"):
        data = photo(tmp_path / f"second-{view}.jpg", "JPEG", (320, 240)).read_bytes()
        async with http.post(f"{server.url}/api/expertise/{case_id}/attachments?view={view}", data=data,
                             headers={**headers, "Content-Type": "image/jpeg"}) as r:
            assert r.status == 201, await r.text()
    async with http.post(f"{server.url}/api/expertise/{case_id}/submit", headers=headers) as r:
        assert r.status == 200, await r.text()
    return case_id


async def test_expertise_signs_in_only_nurses_and_physicians(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    admin = server.tokens.issue_access("admin", "admin-1")
    page = await open_page(chromium, f"{server.url}/expertise#token={admin}")
    await page.locator("#signin-problem[data-kind=wrong_role]").wait_for(timeout=10000)
    assert await page.locator("#signin-problem a").get_attribute("href") == "/admin"
    await page.goto(f"{server.url}/expertise")  # this tab kept no token: sign in
    await page.locator("#signin-problem[data-kind=signed_out]").wait_for(timeout=10000)
    await page.context.close()
