"""The whole signalling flow over real WebSockets, on both store backends."""

from __future__ import annotations

from typing import Any

import aiohttp

from sfu.appkeys import SFU
from tests.signalling.client import SigClient
from tests.support import RunningServer

VISIT: dict[str, Any] = {"patient_ref": "P-123", "reason": "chest pain since this morning",
                         "specialty": "cardiology", "priority": "urgent",
                         "consent_teleconsultation": True, "consent_recording": False}


async def nurse(sig: RunningServer, site: str = "cabin-demo", sub: str = "nurse-1") -> SigClient:
    return await SigClient.connect(sig.ws_url, sig.tokens.issue_access("nurse", sub, site=site))


async def agent(sig: RunningServer, site: str = "cabin-demo") -> SigClient:
    return await SigClient.connect(sig.ws_url, sig.tokens.issue_access("agent", f"agent-{site}", site=site))


async def physician(sig: RunningServer, sub: str = "dr-demo", available: bool = True) -> SigClient:
    client = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("physician", sub))
    if available:
        await client.request("presence.set", status="available")
    return client


async def test_full_flow(sig: RunningServer) -> None:
    n = await nurse(sig)
    a = await agent(sig)
    d = await physician(sig)
    try:
        assert d.hello["principal"]["specialties"] == ["general", "cardiology", "dermatology"]
        reply = await n.request("visit.request", **VISIT)
        cid = reply["consultation"]["id"]
        assert reply["consultation"]["state"] == "requested" and reply["position"] == 1
        offer = await d.event("offer.received", consultation__id=cid)
        assert offer["consultation"]["reason"] == VISIT["reason"]
        await n.event("consultation.updated", consultation__state="offered")
        accepted = await d.request("offer.accept", consultation_id=cid)
        assert accepted["consultation"]["state"] == "active" and accepted["room"] == cid
        # Room tokens with exact grants, one per seat.
        grant = sig.tokens.verify_room(accepted["room_token"], cid)
        assert (grant.identity, grant.publish, grant.subscribe, grant.command) == \
            ("physician", ("camera", "microphone"), True, True)
        started_n = await n.event("consultation.started")
        g = sig.tokens.verify_room(started_n["room_token"], cid)
        assert (g.role.value, g.publish, g.subscribe, g.command) == ("nurse", ("camera", "microphone"), True, False)
        started_a = await a.event("consultation.started")
        g = sig.tokens.verify_room(started_a["room_token"], cid)
        assert (g.role.value, g.publish, g.subscribe, g.command) == \
            ("agent", ("stethoscope", "dermatoscope", "otoscope"), False, False)
        assert "reason" not in started_a["consultation"] and "patient_ref" not in started_a["consultation"]
        await d.event("consultation.started")
        # The SFU has the room.
        assert cid in sig.app[SFU].rooms()
        # Report, saved then read back.
        report = {"reason": "chest pain", "findings": "normal ECG", "conclusion": "musculoskeletal",
                  "prescriptions": ["paracetamol 1g"], "follow_up": "GP in 1 week"}
        await d.request("report.save", consultation_id=cid, report=report)
        got = await d.request("report.get", consultation_id=cid)
        assert got["report"] == report and got["author"] == "dr-demo"
        ended = await d.request("consultation.end", consultation_id=cid)
        assert ended["consultation"]["state"] == "ended"
        await n.event("consultation.ended", consultation__state="ended")
        await a.event("consultation.ended")
        # The physician is available again; REST reads the finished consultation from the records.
        await d.event("presence.changed", physician="dr-demo", status="available")
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {sig.tokens.issue_access('physician', 'dr-demo')}"}
            async with http.get(f"{sig.url}/api/consultations/{cid}", headers=headers) as r:
                assert r.status == 200 and (await r.json())["state"] == "ended"
            async with http.get(f"{sig.url}/api/consultations/{cid}/report", headers=headers) as r:
                assert (await r.json())["report"] == report
            async with http.get(f"{sig.url}/api/consultations/{cid}/journal", headers=headers) as r:
                acts = [e["act"] for e in (await r.json())["entries"]]
        assert acts == ["visit.checkin", "consent", "offer", "offer.accept", "consultation.start", "report.save",
                        "consultation.end"]
    finally:
        for c in (n, a, d):
            await c.close()
