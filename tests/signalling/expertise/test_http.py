"""The télé-expertise REST API on a real server, both stores: a whole case from the nursing
home to the dermatologist and back, errors that name the field, upload limits, and each role
against each route."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import pytest
from PIL import Image

from core.vocabulary import CaseId
from signalling.appkeys import SIGNALLING
from signalling.expertise.appkeys import EXPERTISE
from signalling.journal import JournalKey
from tests.signalling.expertise.test_attachments import jpeg
from tests.signalling.expertise.test_questionnaire import DERMA
from tests.support import RunningServer

WHO: dict[str, tuple[str, str, dict[str, Any]]] = {
    "nurse": ("nurse", "nurse-1", {"site": "ehpad-demo"}),
    "next_shift": ("nurse", "nurse-2", {"site": "ehpad-demo"}),
    "other_site": ("nurse", "nurse-9", {"site": "cabin-demo"}),
    "derma": ("physician", "dr-derma", {"specialty": "dermatology"}),
    "derma2": ("physician", "dr-demo", {"specialty": "general,dermatology"}),
    "cardio": ("physician", "dr-cardio", {"specialty": "cardiology"}),
    "admin": ("admin", "admin-1", {}),
    "agent": ("agent", "agent-1", {"site": "ehpad-demo"}),
}


def auth(sig: RunningServer, who: str) -> dict[str, str]:
    role, sub, kw = WHO[who]
    if "specialty" in kw:
        kw = {"specialties": kw["specialty"].split(",")}
    return {"Authorization": f"Bearer {sig.tokens.issue_access(role, sub, **kw)}"}


class Api:
    def __init__(self, sig: RunningServer, http: aiohttp.ClientSession) -> None:
        self.sig, self.http = sig, http

    async def call(self, who: str, method: str, path: str, json: Any = None, data: bytes | None = None,
                   content_type: str | None = None) -> tuple[int, Any]:
        headers = auth(self.sig, who)
        if content_type:
            headers["Content-Type"] = content_type
        async with self.http.request(method, f"{self.sig.url}/api/expertise{path}", json=json, data=data,
                                     headers=headers) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.read()


def new_case(**changes: Any) -> dict[str, Any]:
    return {"specialty": "dermatology", "urgency": "standard", "patient_ref": "p-4711", "consent": True,
            "answers": DERMA, **changes}


async def draft_with_photos(api: Api) -> str:
    status, body = await api.call("nurse", "POST", "", new_case())
    assert status == 201, body
    cid = body["id"]
    assert body["state"] == "draft" and body["questionnaire"] == "dermatology@1"
    for view in ("close_up", "distance"):
        status, body = await api.call("nurse", "POST", f"/{cid}/attachments?view={view}", data=jpeg(orientation=6),
                                      content_type="image/jpeg")
        assert status == 201, body
    return cid


async def test_a_whole_case(sig: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        api = Api(sig, http)
        cid = await draft_with_photos(api)
        assert (await api.call("derma", "GET", f"/{cid}"))[0] == 404  # a draft is the site's only
        status, body = await api.call("nurse", "POST", f"/{cid}/submit")
        assert status == 200 and body["state"] == "submitted" and body["in_pool"]
        status, inbox = await api.call("derma", "GET", "?box=inbox")
        assert status == 200 and [c["id"] for c in inbox["cases"]] == [cid]
        assert (await api.call("cardio", "GET", "?box=inbox"))[1]["cases"] == []
        status, body = await api.call("derma", "POST", f"/{cid}/take")
        assert status == 200 and body["expert"] == "dr-derma" and body["party"] == "expert"
        assert (await api.call("derma2", "POST", f"/{cid}/take"))[0] == 409
        assert (await api.call("derma2", "GET", f"/{cid}"))[0] == 404
        status, body = await api.call("derma", "POST", f"/{cid}/messages", {"text": "Does it itch at night?"})
        assert status == 200 and body["state"] == "question" and body["messages"][-1]["kind"] == "question"
        status, body = await api.call("next_shift", "POST", f"/{cid}/messages", {"text": "Yes, every night."})
        assert status == 200 and body["state"] == "submitted" and body["messages"][-1]["kind"] == "reply"
        answer = {"opinion": "Probable nodular BCC.", "diagnosis": "basal cell carcinoma", "diagnosis_code": "C44.3",
                  "recommendation": "referral", "follow_up": "Excision within 4 weeks."}
        status, body = await api.call("derma", "POST", f"/{cid}/answer", answer)
        assert status == 200 and body["state"] == "answered" and body["answer"]["recommendation"] == "referral"
        status, body = await api.call("nurse", "GET", f"/{cid}")
        assert status == 200 and body["answer"]["by"] == "dr-derma" and body["answer"]["diagnosis_code"] == "C44.3"
        status, sent = await api.call("next_shift", "GET", "?box=sent")
        assert [c["id"] for c in sent["cases"]] == [cid] and sent["cases"][0]["recommendation"] == "referral"
        att = body["attachments"][0]
        assert (att["width"], att["height"], att["view"]) == (32, 64, "close_up")  # turned upright
        status, raw = await api.call("derma", "GET", f"/{cid}/attachments/{att['id']}")
        assert status == 200 and b"PhoneMaker" not in raw
        with Image.open(io.BytesIO(raw)) as img:
            assert img.size == (32, 64) and not img.getexif()
        status, body = await api.call("nurse", "POST", f"/{cid}/close")
        assert status == 200 and body["state"] == "closed"
        status, sent = await api.call("nurse", "GET", "?box=sent")  # over: in the history part of the list
        assert [(c["id"], c["state"]) for c in sent["cases"]] == [(cid, "closed")]
        assert [c["id"] for c in (await api.call("derma", "GET", "?box=inbox"))[1]["cases"]] == [cid]
        assert (await api.call("nurse", "POST", f"/{cid}/cancel"))[0] == 409
    entries = await sig.app[SIGNALLING].journal.read_about(JournalKey.case(CaseId(cid)))
    acts = [e["act"] for e in entries]
    assert acts == ["case.create", "case.attach", "case.attach", "case.submit", "case.take", "case.question",
                    "case.reply", "case.answer", "case.access", "case.close"]
    assert all("text" not in e and "patient_ref" not in e for e in entries)


async def test_errors_name_the_field(sig: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        api = Api(sig, http)
        status, body = await api.call("nurse", "POST", "", new_case(answers={**DERMA, "location": "moon"}))
        assert status == 400 and body["error"] == "bad_request" and body["reason"].startswith("answers.location:")
        status, body = await api.call("nurse", "POST", "", new_case(specialty="astrology"))
        assert status == 400 and "specialty" in body["reason"]
        status, body = await api.call("nurse", "POST", "", new_case(state="submitted"))
        assert status == 400 and "answers.photos" in body["reason"] and "close_up" in body["reason"]
        status, body = await api.call("nurse", "POST", "", new_case(expert="dr-cardio"))
        assert status == 400 and body["reason"].startswith("expert:")
        status, body = await api.call("nurse", "POST", "", data=b"{", content_type="application/json")
        assert status == 400 and body["error"] == "bad_request"
        status, body = await api.call("nurse", "POST", "", new_case())
        cid = body["id"]
        heic = b"\x00\x00\x00\x18ftypheic" + b"0" * 64
        status, body = await api.call("nurse", "POST", f"/{cid}/attachments", data=heic, content_type="image/heic")
        assert status == 415 and "HEIC" in body["reason"]
        big = b"\xff\xd8\xff" + b"0" * sig.app[EXPERTISE].settings.upload_max_bytes
        status, body = await api.call("nurse", "POST", f"/{cid}/attachments", data=big, content_type="image/jpeg")
        assert status == 413 and body["error"] == "too_large"
        status, body = await api.call("nurse", "POST", f"/{cid}/attachments?view=sideways", data=jpeg(),
                                      content_type="image/jpeg")
        assert status == 400 and body["reason"].startswith("view:")
        status, body = await api.call("nurse", "POST", f"/{cid}/answer", {"opinion": "x"})
        assert status == 403
        status, body = await api.call("nurse", "GET", "?box=mine")
        assert status == 400


async def test_questionnaires(sig: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        api = Api(sig, http)
        status, body = await api.call("nurse", "GET", "/questionnaires/dermatology")
        assert status == 200 and body["ref"] == "dermatology@1" and body["fields"][0]["id"] == "location"
        assert (await api.call("derma", "GET", "/questionnaires/wound_care"))[1]["ref"] == "wound_care@1"
        assert (await api.call("nurse", "GET", "/questionnaires/astrology"))[0] == 404
        async with http.get(f"{sig.url}/api/expertise/questionnaires/dermatology") as r:
            assert r.status == 401


# Each role against each route, on a submitted case taken by dr-derma, with one attachment.
# Only refusals and reads here: nothing in this table changes the case.
MATRIX: list[tuple[str, str, str, int]] = [
    ("GET", "", "nurse", 200), ("GET", "", "next_shift", 200), ("GET", "", "other_site", 404),
    ("GET", "", "derma", 200), ("GET", "", "derma2", 404), ("GET", "", "cardio", 404), ("GET", "", "agent", 404),
    ("GET", "", "admin", 400), ("GET", "?purpose=audit", "admin", 200),
    ("GET", "/attachments/{att}", "nurse", 200), ("GET", "/attachments/{att}", "derma", 200),
    ("GET", "/attachments/{att}", "other_site", 404), ("GET", "/attachments/{att}", "derma2", 404),
    ("GET", "/attachments/{att}", "cardio", 404), ("GET", "/attachments/{att}", "admin", 403),
    ("GET", "/attachments/nope", "nurse", 404),
    ("POST", "/submit", "nurse", 409), ("POST", "/submit", "derma", 403), ("POST", "/submit", "other_site", 404),
    ("POST", "/submit", "admin", 403),
    ("POST", "/messages", "other_site", 404), ("POST", "/messages", "derma2", 404),
    ("POST", "/messages", "cardio", 404), ("POST", "/messages", "admin", 403), ("POST", "/messages", "agent", 404),
    ("POST", "/answer", "nurse", 403), ("POST", "/answer", "derma2", 404), ("POST", "/answer", "cardio", 404),
    ("POST", "/answer", "admin", 403),
    ("POST", "/close", "nurse", 409), ("POST", "/close", "derma", 403), ("POST", "/close", "other_site", 404),
    ("POST", "/cancel", "derma", 403), ("POST", "/cancel", "cardio", 404), ("POST", "/cancel", "admin", 403),
    ("POST", "/take", "derma2", 409), ("POST", "/take", "cardio", 404), ("POST", "/take", "nurse", 403),
    ("POST", "/take", "admin", 403),
    ("POST", "/decline", "nurse", 403), ("POST", "/decline", "derma2", 404), ("POST", "/decline", "admin", 403),
    ("POST", "/escalate", "cardio", 404), ("POST", "/escalate", "other_site", 404),
    ("POST", "/escalate", "admin", 403),
    ("POST", "/attachments", "derma", 403), ("POST", "/attachments", "other_site", 404),
    ("POST", "/attachments", "admin", 403),
]


async def test_each_role_against_each_route(sig: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        api = Api(sig, http)
        cid = await draft_with_photos(api)
        assert (await api.call("nurse", "POST", f"/{cid}/submit"))[0] == 200
        status, body = await api.call("derma", "POST", f"/{cid}/take")
        assert status == 200
        att = body["attachments"][0]["id"]
        wrong = []
        for method, suffix, who, expected in MATRIX:
            path = f"/{cid}{suffix.format(att=att)}"
            if suffix == "/attachments":
                got, _ = await api.call(who, method, path + "?view=close_up", data=jpeg(), content_type="image/jpeg")
            else:
                got, _ = await api.call(who, method, path, json={"text": "x"} if method == "POST" else None)
            if got != expected:
                wrong.append(f"{method} {suffix} as {who}: {got}, expected {expected}")
        # Creating: nurses and physicians of a site; not admins or agents.
        for who, expected in [("admin", 403), ("agent", 403), ("derma", 403), ("other_site", 201)]:
            got, _ = await api.call(who, "POST", "", new_case())
            if got != expected:
                wrong.append(f"POST create as {who}: {got}, expected {expected}")
        assert not wrong, "\n".join(wrong)
        # The admin's view: metadata only, journaled with its purpose.
        status, meta = await api.call("admin", "GET", f"/{cid}?purpose=audit")
        assert status == 200 and "patient_ref" not in meta and "answers" not in meta and "messages" in meta
        assert (await api.call("admin", "GET", "?box=all"))[0] == 400
        status, listed = await api.call("admin", "GET", "?box=all&purpose=support")
        assert status == 200 and len(listed["cases"]) == 2 and all("patient_ref" not in c for c in listed["cases"])
    entries = await sig.app[SIGNALLING].journal.read_about(JournalKey.case(CaseId(cid)))
    assert [e.get("purpose") for e in entries if e["act"] == "case.admin_view"] == ["audit", "audit"]


async def test_decline_hands_it_back_and_escalate(sig: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        api = Api(sig, http)
        cid = await draft_with_photos(api)
        await api.call("nurse", "POST", f"/{cid}/submit")
        await api.call("derma", "POST", f"/{cid}/take")
        assert (await api.call("derma", "POST", f"/{cid}/decline", {}))[0] == 400  # a reason is needed
        status, body = await api.call("derma", "POST", f"/{cid}/decline", {"text": "On leave, sorry."})
        assert status == 200 and body["expert"] is None and body["in_pool"]
        status, body = await api.call("derma2", "POST", f"/{cid}/take")
        assert status == 200 and body["expert"] == "dr-demo"
        status, body = await api.call("derma2", "POST", f"/{cid}/escalate", {"specialty": "dermatology"})
        assert status == 200 and body["state"] == "escalated" and body["escalated_to"] == "dermatology"


async def test_named_expert_and_the_sweeper(sig: RunningServer) -> None:
    svc = sig.app[EXPERTISE]
    async with aiohttp.ClientSession() as http:
        api = Api(sig, http)
        status, body = await api.call("nurse", "POST", "", new_case(expert="dr-derma", urgency="urgent"))
        cid = body["id"]
        for view in ("close_up", "distance"):
            await api.call("nurse", "POST", f"/{cid}/attachments?view={view}", data=jpeg(), content_type="image/jpeg")
        status, body = await api.call("nurse", "POST", f"/{cid}/submit")
        assert status == 200 and not body["in_pool"]
        assert (await api.call("derma2", "GET", f"/{cid}"))[0] == 404  # named to dr-derma only
        assert (await api.call("derma", "GET", f"/{cid}"))[0] == 200
        assert await svc.sweep(now=body["due_at"] - svc.settings.due_warning_s - 60) == 0
        assert await svc.sweep(now=body["due_at"] + 1) == 1
        assert await svc.sweep(now=body["due_at"] + 2) == 0  # once
        status, body = await api.call("derma2", "GET", f"/{cid}")
        assert status == 200 and body["in_pool"] and body["flagged_at"] is not None
    entries = await sig.app[SIGNALLING].journal.read_about(JournalKey.case(CaseId(cid)))
    assert [e["actor"] for e in entries if e["act"] == "case.overdue"] == ["sweeper"]


async def test_online_experts_and_the_site_hear_of_it(sig: RunningServer) -> None:
    from tests.signalling.client import SigClient
    derma = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("physician", "dr-derma"))
    cardio = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("physician", "dr-cardio"))
    nurse = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("nurse", "nurse-2", site="ehpad-demo"))
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(sig, http)
            cid = await draft_with_photos(api)
            await api.call("nurse", "POST", f"/{cid}/submit")
            event = await derma.event("expertise.updated", case_id=cid, action="submit")
            assert event["state"] == "submitted" and "patient_ref" not in event
            await api.call("derma", "POST", f"/{cid}/take")
            await api.call("derma", "POST", f"/{cid}/messages", {"text": "Photo in daylight, please?"})
            assert (await nurse.event("expertise.updated", case_id=cid, action="ask"))["state"] == "question"
        assert not [e for e in cardio.events if e["type"] == "expertise.updated"]
    finally:
        for client in (derma, cardio, nurse):
            await client.close()


async def test_stills_of_a_consultation_by_reference(sig: RunningServer) -> None:
    from media.recording.appkeys import STILLS
    from tests.media.recording.test_stills_http import image
    from tests.signalling.test_reports import consultation
    n, d, consultation_id = await consultation(sig)  # cabin-demo's nurse-1 and dr-cardio, live
    try:
        still = sig.app[STILLS].put(consultation_id, "dermatoscope", "image/png", image(64, 48), 64, 48)
        async with aiohttp.ClientSession() as http:
            api = Api(sig, http)
            # The physician of the consultation turns it into a request to dermatology, its still attached.
            status, body = await api.call("cardio", "POST", "", new_case(consultation_id=consultation_id,
                                                                          stills=[still.still_id]))
            assert status == 201, body
            assert body["site"] == "cabin-demo" and body["requested_by"] == "dr-cardio"
            assert body["consultation_id"] == consultation_id
            (att,) = body["attachments"]
            assert (att["kind"], att["still_id"], att["width"]) == ("still", still.still_id, 64)
            cid = body["id"]
            # The site's nurses see it (box=sent: "other_site" is cabin-demo's) and may attach the still
            # again with a view; the nursing home's may not.
            status, body = await api.call("nurse", "POST", f"/{cid}/attachments",
                                          json={"consultation_id": consultation_id, "still_id": still.still_id})
            assert status == 404
            assert (await api.call("nurse", "GET", "?box=sent"))[1]["cases"] == []
            status, sent = await api.call("other_site", "GET", "?box=sent")
            assert [c["id"] for c in sent["cases"]] == [cid]
            status, body = await api.call("other_site", "POST", f"/{cid}/attachments", json={
                "consultation_id": consultation_id, "still_id": still.still_id, "view": "close_up"})
            assert status == 201 and body["attachments"][-1]["view"] == "close_up"
            status, body = await api.call("derma", "POST", "", new_case(consultation_id=consultation_id))
            assert status == 404  # not this physician's consultation
            status, raw = await api.call("cardio", "GET", f"/{cid}/attachments/{att['id']}")
            assert status == 200 and raw == image(64, 48)
            status, body = await api.call("cardio", "POST", f"/{cid}/attachments",
                                          json={"consultation_id": consultation_id, "still_id": "nope"})
            assert status == 404
    finally:
        await n.close()
        await d.close()
