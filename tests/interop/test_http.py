"""The PDF report and the FHIR export of a consultation run through the real signalling and SFU: the nurse
checks a patient in with an INS identity, the nurse's camera goes through the SFU to the physician, the
consultation is recorded, the agent uploads stills, the physician writes the report with vitals and stills
and ends the call; then every reader reads the PDF and the FHIR resources, and the others are refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from core.vocabulary import ConsultationId
from interop import fhir
from signalling.appkeys import SIGNALLING
from tests.interop.fhir_checks import check_bundle
from tests.interop.pdf_tools import pdf_pngs, pdf_text
from tests.interop.test_report_pdf import flat, lesion
from tests.sfu.clients import FlatVideoTrack, client_pc
from tests.signalling.conftest import sig_settings
from tests.signalling.test_flow import VISIT, nurse, physician
from tests.signalling.test_patient_identity import IDENTITY
from tests.support import ARTIFACTS, RunningServer, start_server, wait_for

RPPS = "10000000009"
REPORT: dict[str, Any] = {
    "reason": "« Douleur thoracique » à l’effort", "findings": "Cœur régulier ; pas de souffle, “rassurant”",
    "conclusion": "Douleur pariétale probable", "prescriptions": ["Paracétamol 1 g × 3/jour", "ECG à J+7"],
    "follow_up": "Médecin traitant sous 1 semaine",
    "vitals": {"heart_rate": {"value": 72, "unit": "/min", "measured_at": None}, "spo2": 97,
               "body_temperature": {"value": 37.9, "unit": "Cel", "measured_at": None}},
}


def bearer(sig: RunningServer, role: str, sub: str, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {sig.tokens.issue_access(role, sub, **kw)}"}


async def run_consultation(sig: RunningServer, http: aiohttp.ClientSession) -> str:
    """The whole consultation; its id once it ended."""
    admin = bearer(sig, "admin", "admin-1")
    async with http.put(f"{sig.url}/api/directory/clinicians/dr-cardio", headers=admin, json={
            "name": "Dr Cardio", "specialties": ["cardiology"], "languages": ["fr", "en"], "rpps": RPPS}) as r:
        assert r.status == 200, await r.text()
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    npc, dpc = client_pc(), client_pc()
    doctor = bearer(sig, "physician", "dr-cardio")
    try:
        cid = (await n.request("visit.request", **{**VISIT, "consent_recording": True},
                               ins_identity=IDENTITY))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        await n.event("consultation.started", consultation__id=cid)
        # The nurse's camera through the SFU to the physician.
        cam = npc.addTransceiver(FlatVideoTrack(), direction="sendonly")
        mic = npc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await npc.setLocalDescription(await npc.createOffer())
        reply = await n.request("media.offer", timeout=20, consultation_id=cid, sdp=npc.localDescription.sdp,
                                publish={cam.mid: "camera", mic.mid: "microphone"})
        await npc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        camera = await d.event("room.event", event="publication.added", data__publication__source="camera")
        video = dpc.addTransceiver("video", direction="recvonly")
        await dpc.setLocalDescription(await dpc.createOffer())
        answer = await d.request("media.offer", timeout=20, consultation_id=cid, sdp=dpc.localDescription.sdp,
                                 subscribe={video.mid: camera["data"]["publication"]["id"]})
        await dpc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(video.receiver.track.recv(), 15)
        # Recorded, with the patient's consent.
        async with http.post(f"{sig.url}/api/consultations/{cid}/recording", json={"action": "start"},
                             headers=doctor) as r:
            assert r.status == 200, await r.text()
        # The agent's stills; the physician labels one.
        agent = sig.tokens.issue_room(cid, "agent", role="agent", publish=["dermatoscope", "otoscope"])
        stills = []
        for device, mime, data in (("dermatoscope", "image/png", lesion()),
                                   ("otoscope", "image/jpeg", lesion((320, 320), "JPEG"))):
            async with http.post(f"{sig.url}/api/consultations/{cid}/stills", data=data, headers={
                    "Authorization": f"Bearer {agent}", "Content-Type": mime, "X-Device": device}) as r:
                assert r.status == 201, await r.text()
                stills.append((await r.json())["still_id"])
        async with http.patch(f"{sig.url}/api/consultations/{cid}/stills/{stills[0]}",
                              json={"label": "naevus, avant-bras gauche"}, headers=doctor) as r:
            assert r.status == 200
        async with http.put(f"{sig.url}/api/consultations/{cid}/report", json={**REPORT, "stills": stills},
                            headers=doctor) as r:
            assert r.status == 200, await r.text()
        async with http.post(f"{sig.url}/api/consultations/{cid}/recording", json={"action": "stop"},
                             headers=doctor) as r:
            assert r.status == 200, await r.text()
        await d.request("consultation.end", consultation_id=cid)
        await n.event("consultation.ended", consultation__id=cid)
        service = sig.app[SIGNALLING]

        async def recorded() -> bool:
            c = await service.get_any(cid)
            return c is not None and c.recording is not None and c.recording.get("stopped_at") is not None
        await wait_for(recorded, 10, what="the recording's end kept with the consultation")
        return str(cid)
    finally:
        for pc in (npc, dpc):
            await pc.close()
        await n.close()
        await d.close()


async def test_pdf_and_fhir_of_a_consultation_through_signalling_and_the_sfu(tmp_path: Path) -> None:
    sig = await start_server(sig_settings(tmp_path, "memory", None))
    try:
        async with aiohttp.ClientSession() as http:
            cid = await run_consultation(sig, http)
            doctor = bearer(sig, "physician", "dr-cardio")
            pdf_url = f"{sig.url}/api/consultations/{cid}/report.pdf"

            # The PDF, French by default, English when asked.
            async with http.get(pdf_url, headers=doctor) as r:
                assert r.status == 200 and r.content_type == "application/pdf"
                assert r.headers["Cache-Control"] == "no-store"
                french = await r.read()
            words = flat(pdf_text(french, tmp_path, "fr"))
            for field in ["Compte rendu de téléconsultation", "Demo cabin", f"Dr Cardio — RPPS {RPPS}",
                          "(heure de Paris)", "cardiology", VISIT["patient_ref"],
                          "2 95 10 99 126 111 93 (NIR, OID 1.2.250.1.213.1.4.8)", "DE LA FONTAINE-D'ARC",
                          "MARIE ANNE", "21/10/1995", "féminin", "99126", REPORT["reason"], REPORT["findings"],
                          REPORT["conclusion"], REPORT["follow_up"], "• Paracétamol 1 g × 3/jour", "• ECG à J+7",
                          "Fréquence cardiaque 72 /min", "Saturation en oxygène (SpO₂) 97 %",
                          "Température corporelle 37,9 °C", "naevus, avant-bras gauche — dermatoscope, prise le",
                          "otoscope, prise le", "Consultation enregistrée oui — du",
                          "consentement du patient à l’enregistrement : oui"]:
                assert field in words, field
            assert "BROUILLON" not in words
            pages = pdf_pngs(french, ARTIFACTS / "interop", "consultation-fr")
            assert pages and all(p.stat().st_size > 5000 for p in pages)
            async with http.get(pdf_url, headers={**doctor, "Accept-Language": "en-GB,en;q=0.9"}) as r:
                english = flat(pdf_text(await r.read(), tmp_path, "en"))
            assert "Teleconsultation report" in english and "Body temperature 37.9 °C" in english

            # FHIR: the Encounter and the Bundle, valid, round-tripped, their references resolved.
            async with http.get(f"{sig.url}/fhir/Encounter/{cid}", headers=doctor) as r:
                assert r.status == 200 and r.content_type == fhir.FHIR_JSON
                encounter = await r.json()
            fhir.validated(encounter)
            assert (encounter["id"], encounter["status"], encounter["class"]["code"]) == (cid, "finished", "VR")
            assert "end" in encounter["period"]
            async with http.get(f"{sig.url}/fhir/Bundle/{cid}", headers=doctor) as r:
                assert r.status == 200 and r.content_type == fhir.FHIR_JSON
                bundle = await r.json()
            by_type = check_bundle(bundle, f"{sig.url}/fhir")
            assert by_type["Encounter"] == [encounter]
            assert by_type["Patient"][0]["identifier"][0]["value"] == "295109912611193"
            assert {i["value"] for i in by_type["Practitioner"][0]["identifier"]} >= {RPPS, "8" + RPPS}
            assert sorted(o["code"]["coding"][0]["code"] for o in by_type["Observation"]) == \
                ["59408-5", "8310-5", "8867-4"]
            assert len(by_type["Media"]) == 2
            for media in by_type["Media"]:  # the Media's URL is the still, for its readers
                async with http.get(media["content"]["url"], headers=doctor) as r:
                    assert r.status == 200 and r.content_type == media["content"]["contentType"]
            assert by_type["DocumentReference"][0]["content"][0]["attachment"]["url"] == pdf_url
            assert by_type["Consent"][0]["status"] == "active"

            # The report's readers: the site's nurse; an admin without the patient.
            async with http.get(f"{sig.url}/fhir/Bundle/{cid}", headers=bearer(sig, "nurse", "nurse-2",
                                                                                 site="cabin-demo")) as r:
                assert r.status == 200
            async with http.get(f"{sig.url}/fhir/Bundle/{cid}", headers=bearer(sig, "admin", "admin-1")) as r:
                seen = await r.json()
            patient = next(e["resource"] for e in seen["entry"] if e["resource"]["resourceType"] == "Patient")
            assert set(patient) == {"resourceType", "id"}
            async with http.get(pdf_url, headers=bearer(sig, "admin", "admin-1")) as r:
                admin_words = flat(pdf_text(await r.read(), tmp_path, "admin"))
            assert "DE LA FONTAINE" not in admin_words and VISIT["patient_ref"] not in admin_words

            # Everyone else, FHIR errors as OperationOutcome.
            refusals = [(f"/fhir/Bundle/{cid}", bearer(sig, "physician", "dr-demo"), 404, "not-found"),
                        (f"/fhir/Encounter/{cid}", bearer(sig, "agent", "agent-1", site="cabin-demo"), 403, "forbidden"),
                        (f"/fhir/Encounter/{cid}", {}, 401, "login"),
                        (f"/fhir/Encounter/{cid}", {"Authorization": "Bearer nonsense"}, 401, "login"),
                        ("/fhir/Bundle/c-nothing", doctor, 404, "not-found")]
            for path, headers, status, code in refusals:
                async with http.get(sig.url + path, headers=headers) as r:
                    assert r.status == status and r.content_type == fhir.FHIR_JSON, (path, r.status)
                    outcome = await r.json()
                fhir.validated(outcome)
                assert outcome["issue"][0]["code"] == code
            for headers, query, status in [(bearer(sig, "physician", "dr-demo"), "", 404), ({}, "", 401),
                                           (doctor, "?lang=de", 400)]:
                async with http.get(pdf_url + query, headers=headers) as r:
                    assert r.status == status and "error" in await r.json()

            # A request nobody took has no report: 409.
            n = await nurse(sig)
            try:
                waiting = (await n.request("visit.request", **{**VISIT, "specialty": "dermatology"}))["consultation"]
                await n.request("visit.cancel", consultation_id=waiting["id"])
            finally:
                await n.close()
            async with http.get(f"{sig.url}/fhir/Encounter/{waiting['id']}", headers=bearer(
                    sig, "nurse", "nurse-1", site="cabin-demo")) as r:
                assert r.status == 409 and (await r.json())["issue"][0]["code"] == "conflict"

        # Every read journaled, with ids and codes only.
        entries = await sig.app[SIGNALLING].journal.read(ConsultationId(cid))
        reads = [(e["act"], e.get("resource") or e.get("lang"), e["actor"]) for e in entries
                 if e["act"] in ("report.pdf", "fhir.read")]
        assert reads == [("report.pdf", "fr", "dr-cardio"), ("report.pdf", "en", "dr-cardio"),
                         ("fhir.read", "Encounter", "dr-cardio"), ("fhir.read", "Bundle", "dr-cardio"),
                         ("fhir.read", "Bundle", "nurse-2"), ("fhir.read", "Bundle", "admin-1"),
                         ("report.pdf", "fr", "admin-1")]
        assert "MARIE" not in repr(entries) and "Douleur" not in repr(entries)
    finally:
        await sig.server.close()
