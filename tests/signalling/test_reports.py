"""Reports over REST and the WebSocket, real server, both stores: empty / draft / final, drafts kept
across a reload, vitals and labelled stills kept with the report, names and the patient's reference."""

from __future__ import annotations

from typing import Any

import aiohttp

from core.vocabulary import ConsultationId
from signalling.appkeys import SIGNALLING
from tests.media.recording.test_stills_http import image
from tests.signalling.client import SigClient
from tests.signalling.test_flow import VISIT, physician
from tests.support import RunningServer

REPORT: dict[str, Any] = {"reason": "chest pain", "findings": "normal ECG", "conclusion": "musculoskeletal",
                          "prescriptions": ["paracetamol 1g"], "follow_up": "GP in 1 week"}


async def consultation(sig: RunningServer) -> tuple[SigClient, SigClient, str]:
    """A named nurse checks a patient in, dr-cardio accepts: the active consultation."""
    n = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("nurse", "nurse-1", site="cabin-demo",
                                                                    name="Nurse Joy"))
    d = await physician(sig, "dr-cardio")
    cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
    offer = await d.event("offer.received", consultation__id=cid)
    assert (offer["consultation"]["patient_ref"], offer["consultation"]["site_name"],
            offer["consultation"]["nurse_name"], offer["consultation"]["offered_to_name"]) == \
        (VISIT["patient_ref"], "Demo cabin", "Nurse Joy", "Dr Cardio")
    accepted = await d.request("offer.accept", consultation_id=cid)
    assert accepted["consultation"]["physician_name"] == "Dr Cardio"
    assert accepted["consultation"]["started_at"] is not None
    started = await n.event("consultation.started", consultation__id=cid)
    assert started["consultation"]["physician_name"] == "Dr Cardio"
    return n, d, cid


def bearer(sig: RunningServer, role: str, sub: str, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {sig.tokens.issue_access(role, sub, **kw)}"}


async def test_empty_draft_final_over_rest_and_ws(sig: RunningServer) -> None:
    n, d, cid = await consultation(sig)
    url = f"{sig.url}/api/consultations/{cid}/report"
    doctor = bearer(sig, "physician", "dr-cardio")
    try:
        async with aiohttp.ClientSession() as http:
            # The start of every call: 200, empty (no more 404).
            async with http.get(url, headers=doctor) as r:
                assert r.status == 200
                empty = await r.json()
            assert (empty["status"], empty["report"], empty["saved_at"]) == ("empty", None, None)
            assert (empty["patient_ref"], empty["site_name"], empty["physician_name"], empty["nurse_name"]) == \
                (VISIT["patient_ref"], "Demo cabin", "Dr Cardio", "Nurse Joy")
            # Drafts as the physician types: partial, idempotent.
            async with http.put(url + "/draft", json={"findings": "normal E"}, headers=doctor) as r:
                assert r.status == 200
                first = await r.json()
            assert first["status"] == "draft" and first["changed"] is True
            async with http.put(url + "/draft", json={"findings": "normal ECG"}, headers=doctor) as r:
                second = await r.json()
            async with http.put(url + "/draft", json={"findings": "normal ECG"}, headers=doctor) as r:
                again = await r.json()
            assert again["changed"] is False and again["saved_at"] == second["saved_at"]
            # A reload reads the draft back, over REST and the WebSocket alike.
            async with http.get(url, headers=doctor) as r:
                draft = await r.json()
            assert draft["status"] == "draft" and draft["report"]["findings"] == "normal ECG"
            assert draft["draft_saved_at"] == second["saved_at"] and draft["final_saved_at"] is None
            assert draft["author"] == "dr-cardio" and draft["author_name"] == "Dr Cardio"
            d2 = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("physician", "dr-cardio"))
            try:
                ws_draft = await d2.request("report.get", consultation_id=cid)
                assert {k: v for k, v in ws_draft.items() if k not in ("type", "id")} == draft
                ws_same = await d2.request("report.draft", consultation_id=cid, report={"findings": "normal ECG"})
                assert ws_same["changed"] is False and ws_same["status"] == "draft"
                # The final report removes the draft.
                saved = await d2.request("report.save", consultation_id=cid, report=REPORT)
                assert saved["status"] == "final"
                final = await d2.request("report.get", consultation_id=cid)
                assert (final["status"], final["report"], final["draft_saved_at"]) == ("final", REPORT, None)
                # Editing after the final save: a draft again until the next final save.
                await d2.request("report.draft", consultation_id=cid, report={**REPORT, "follow_up": "GP in 2 weeks"})
                assert (await d2.request("report.get", consultation_id=cid))["status"] == "draft"
            finally:
                await d2.close()
            # The nurse reads it too, with the names; an admin without the patient's reference.
            async with http.get(url, headers=bearer(sig, "nurse", "nurse-2", site="cabin-demo")) as r:
                seen = await r.json()
            assert seen["status"] == "draft" and seen["patient_ref"] == VISIT["patient_ref"]
            async with http.get(url, headers=bearer(sig, "admin", "admin-1")) as r:
                assert (await r.json())["patient_ref"] == ""
            # Who may write, and what.
            refusals = [(bearer(sig, "physician", "dr-demo"), {"findings": "x"}, 404),
                        (bearer(sig, "nurse", "nurse-1", site="cabin-demo"), {"findings": "x"}, 403),
                        (doctor, {"diagnosis": "x"}, 400), (doctor, ["x"], 400),
                        (doctor, {"vitals": {"heart_rate": "fast"}}, 400),
                        (doctor, {"vitals": {"systolic": {"value": 126, "unit": "bar"}}}, 400),
                        (doctor, {"vitals": {"glucose": 5}}, 400),
                        (doctor, {"stills": ["0123456789abcdef01234567"]}, 400)]
            for headers, body, status in refusals:
                async with http.put(url + "/draft", json=body, headers=headers) as r:
                    assert r.status == status, (body, r.status, await r.text())
        # Journaled as acts with ids only: one report.draft per change, never the text.
        entries = await sig.app[SIGNALLING].journal.read(ConsultationId(cid))
        acts = [e["act"] for e in entries]
        assert acts.count("report.draft") == 3 and acts.count("report.save") == 1
        assert "normal ECG" not in repr(entries)
    finally:
        for c in (n, d):
            await c.close()


async def test_vitals_and_labelled_stills_stay_with_the_report(sig: RunningServer) -> None:
    n, d, cid = await consultation(sig)
    agent = sig.tokens.issue_room(cid, "agent", role="agent", publish=["dermatoscope", "otoscope"])
    doctor = bearer(sig, "physician", "dr-cardio")
    base = f"{sig.url}/api/consultations/{cid}"
    try:
        async with aiohttp.ClientSession() as http:
            taken = []
            for device in ("dermatoscope", "otoscope"):
                async with http.post(f"{base}/stills", data=image(), headers={
                        "Authorization": f"Bearer {agent}", "Content-Type": "image/png", "X-Device": device}) as r:
                    assert r.status == 201, await r.text()
                    created = await r.json()
                assert created["label"] == "" and created["taken_at"] > 0
                taken.append(created["still_id"])
            # The physician labels one; the list (after a reload too) has labels and times.
            async with http.patch(f"{base}/stills/{taken[0]}", json={"label": "lesion, left forearm"},
                                  headers=doctor) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["label"] == "lesion, left forearm"
            for headers, body, status in [(doctor, {"label": 5}, 400), (doctor, {"name": "x"}, 400),
                                          (doctor, {"label": "x" * 201}, 400),
                                          (bearer(sig, "nurse", "nurse-1", site="cabin-demo"), {"label": "x"}, 403),
                                          (bearer(sig, "physician", "dr-demo"), {"label": "x"}, 404)]:
                async with http.patch(f"{base}/stills/{taken[1]}", json=body, headers=headers) as r:
                    assert r.status == status, (body, r.status)
            async with http.patch(f"{base}/stills/0123456789abcdef01234567", json={"label": "x"},
                                  headers=doctor) as r:
                assert r.status == 404
            async with http.get(f"{base}/stills", headers=doctor) as r:
                listed = (await r.json())["stills"]
            assert [(s["still_id"], s["label"]) for s in listed] == [(taken[0], "lesion, left forearm"),
                                                                      (taken[1], "")]
            assert listed[0]["taken_at"] <= listed[1]["taken_at"]
            # Vitals and the stills go with the report (a bare number is in the first unit).
            vitals = {"heart_rate": 72, "spo2": {"value": 97, "unit": "%"},
                      "systolic": {"value": 126, "unit": "mm[Hg]", "measured_at": 1.0e9},
                      "diastolic": {"value": 74, "unit": "mm[Hg]"}, "body_temperature": {"value": 37.2, "unit": "Cel"}}
            async with http.put(f"{base}/report/draft", json={**REPORT, "vitals": vitals, "stills": taken[:1]},
                                headers=doctor) as r:
                assert r.status == 200, await r.text()
            async with http.get(f"{base}/report", headers=doctor) as r:
                got = (await r.json())["report"]
            assert got["vitals"]["heart_rate"] == {"value": 72.0, "unit": "/min", "measured_at": None}
            assert got["vitals"]["systolic"] == {"value": 126.0, "unit": "mm[Hg]", "measured_at": 1.0e9}
            assert [(s["still_id"], s["label"]) for s in got["stills"]] == [(taken[0], "lesion, left forearm")]
            assert got["stills"][0]["url"].endswith(taken[0]) and got["stills"][0]["taken_at"] > 0
            # The read-back report goes back as it came (stills as objects); a relabel shows at once.
            final = {**got, "stills": got["stills"] + [taken[1]]}
            async with http.put(f"{base}/report", json=final, headers=doctor) as r:
                assert r.status == 200, await r.text()
            async with http.patch(f"{base}/stills/{taken[1]}", json={"label": "right ear"}, headers=doctor) as r:
                assert r.status == 200
        read = await d.request("report.get", consultation_id=cid)
        assert read["status"] == "final" and read["report"]["vitals"] == got["vitals"]
        assert [(s["still_id"], s["label"]) for s in read["report"]["stills"]] == \
            [(taken[0], "lesion, left forearm"), (taken[1], "right ear")]
        acts = [e["act"] for e in await sig.app[SIGNALLING].journal.read(ConsultationId(cid))]
        assert acts.count("still.label") == 2
    finally:
        for c in (n, d):
            await c.close()
