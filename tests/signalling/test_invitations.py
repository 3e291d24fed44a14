"""Invitations (issue 14) over the real server, on both store backends: a physician invites a third
party, the link is claimed once, the physician admits and the nurse confirms consent, the guest's
seat receives what its role may and nothing else, and removal ends its media and its tokens."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiortc.mediastreams import AudioStreamTrack

from sfu.appkeys import SFU
from tests.sfu.clients import FlatVideoTrack, play, post_offer, publish
from tests.signalling.client import SigClient
from tests.signalling.test_flow import VISIT, agent, nurse, physician
from tests.signalling.test_rooms import offer_sdp
from tests.signalling.expertise.test_mail_notifications import DERMA, server_with_mail
from tests.support import RunningServer, SmtpSink, wait_for


async def active(sig: RunningServer) -> tuple[SigClient, SigClient, SigClient, str, dict[str, str]]:
    """A nurse, a physician and an agent in an active consultation; its id and the seats' room tokens."""
    n, a, d = await nurse(sig), await agent(sig), await physician(sig)
    cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
    await d.event("offer.received", consultation__id=cid)
    await d.request("offer.accept", consultation_id=cid)
    tokens = {"nurse": (await n.event("consultation.started"))["room_token"],
              "agent": (await a.event("consultation.started"))["room_token"]}
    return n, a, d, cid, tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def invite(http: aiohttp.ClientSession, sig: RunningServer, cid: str, doctor: str,
                 role: str = "interpreter", **extra: Any) -> dict[str, Any]:
    r = await http.post(f"{sig.url}/api/consultations/{cid}/invitations", headers=bearer(doctor),
                        json={"role": role, "label": f"{role} for the visit", "ttl_s": 600, **extra})
    assert r.status == 201, await r.text()
    body: dict[str, Any] = await r.json()
    return body


def token_of(link: str) -> str:
    return link.split("#invite=", 1)[1]


async def claim(http: aiohttp.ClientSession, sig: RunningServer, token: str, name: str = "Ana Lopez") -> \
        tuple[int, dict[str, Any]]:
    r = await http.post(f"{sig.url}/api/invitations/claim", json={"token": token, "name": name})
    return r.status, await r.json()


async def test_an_interpreter_is_invited_admitted_and_removed(sig: RunningServer) -> None:
    n, a, d, cid, started = await active(sig)
    doctor = sig.tokens.issue_access("physician", "dr-demo")
    nurse_token = sig.tokens.issue_access("nurse", "nurse-1", site="cabin-demo")
    guest: SigClient | None = None
    sessions = []
    try:
        async with aiohttp.ClientSession() as http:
            created = await invite(http, sig, cid, doctor)
            assert created["link"].startswith(f"{sig.url}/join#invite=")
            inv_id = created["id"]
            assert created["invitation"]["state"] == "pending"
            await n.event("invitation.updated", invitation__id=inv_id, invitation__state="pending")
            # Only the physician invites; a nurse reads the list.
            r = await http.post(f"{sig.url}/api/consultations/{cid}/invitations", headers=bearer(nurse_token),
                                json={"role": "guest", "ttl_s": 600})
            assert r.status == 403
            r = await http.get(f"{sig.url}/api/consultations/{cid}/invitations", headers=bearer(nurse_token))
            assert [i["id"] for i in (await r.json())["invitations"]] == [inv_id]
            # A forged link: 401; the real one: once.
            token = token_of(created["link"])
            status, body = await claim(http, sig, token[:-4] + "AAAA")
            assert status == 401 and body["error"] == "unauthorized"
            results = await asyncio.gather(*(claim(http, sig, token) for _ in range(3)))
            assert sorted(s for s, _ in results) == [200, 410, 410], results
            assert all(b == {"error": "invitation_gone", "reason": "used"} for s, b in results if s == 410)
            access = next(b for s, b in results if s == 200)["access_token"]
            # The guest waits: no room, no clinical field; nothing but its own consultation.
            guest = await SigClient.connect(sig.ws_url, access)
            state = guest.hello["state"]
            assert state["invitation"]["state"] == "waiting" and state["rooms"] == {}
            assert [c["id"] for c in state["consultations"]] == [cid]
            assert "reason" not in state["consultations"][0] and "patient_ref" not in state["consultations"][0]
            await guest.error("room.token", "conflict", consultation_id=cid)
            await guest.error("visit.request", "forbidden", **VISIT)
            # A guest token opens no other route.
            r = await http.get(f"{sig.url}/api/consultations/{cid}", headers=bearer(access))
            assert r.status == 401
            # Admission takes the physician and the nurse (the patient's consent), in either order.
            r = await http.post(f"{sig.url}/api/consultations/{cid}/invitations/{inv_id}/admit", headers=bearer(doctor))
            assert r.status == 200 and (await r.json())["invitation"]["state"] == "waiting"
            r = await http.post(f"{sig.url}/api/consultations/{cid}/invitations/{inv_id}/consent",
                                headers=bearer(doctor))
            assert r.status == 403  # the nurse confirms consent, not the physician
            r = await http.post(f"{sig.url}/api/consultations/{cid}/invitations/{inv_id}/consent",
                                headers=bearer(nurse_token))
            assert r.status == 200 and (await r.json())["invitation"]["state"] == "admitted"
            seat = await guest.event("consultation.started")
            grant = seat["grant"]
            identity = grant["identity"]
            assert grant["role"] == "interpreter" and grant["subscribe_sources"] == ["camera", "microphone"]
            assert grant["command"] is False and identity.startswith("interpreter-")
            # The agent's stethoscope and the nurse's camera are in the room.
            steth = await publish(http, sig.url, cid, started["agent"], [AudioStreamTrack()], sources=["stethoscope"])
            cam = await publish(http, sig.url, cid, started["nurse"], [FlatVideoTrack(160, 120)])
            sessions += [steth, cam]
            # The interpreter is refused the stethoscope, receives the camera, publishes its own.
            room = sig.app[SFU]._rooms[cid]
            steth_pub = next(p for p in room.publications.values() if p.info.source == "stethoscope")
            pc_offer = await offer_sdp("audio", "recvonly")
            r = await post_offer(http, f"{sig.url}/whep/{cid}", seat["room_token"], pc_offer)
            body_text = await r.text()
            assert r.status == 201 or "nothing to play" in body_text, body_text  # WHEP skips what it may not get
            reply = await guest.call("media.offer", consultation_id=cid, sdp=pc_offer, subscribe={"0": steth_pub.id})
            assert reply["type"] == "error" and reply["code"] == "forbidden", reply
            view = await play(http, sig.url, cid, seat["room_token"], ["video"])
            own = await publish(http, sig.url, cid, seat["room_token"], [FlatVideoTrack(160, 120)])
            sessions += [view, own]
            await d.event("room.event", event="publication.added", data__publication__identity=identity)
            await guest.event("invitation.updated", invitation__present=True)
            # Room events to the interpreter never name the devices.
            assert not guest.has_event("room.event", data__publication__source="stethoscope")
            # Removal: its media ends at once, its room token and its access token die.
            r = await http.delete(f"{sig.url}/api/consultations/{cid}/participants/{identity}", headers=bearer(doctor))
            assert r.status == 200 and (await r.json())["invitation"]["state"] == "removed"
            await guest.event("invitation.updated", invitation__state="removed")
            await wait_for(lambda: all(p.grant.identity != identity for p in room.participants.values()),
                           what="the interpreter's sessions closed")
            r = await post_offer(http, f"{sig.url}/whip/{cid}", seat["room_token"], await offer_sdp("video", "sendonly"))
            assert r.status == 403
            await guest.error("room.token", "not_found", consultation_id=cid)
            r = await http.get(f"{sig.url}/api/ice-servers", headers=bearer(access))
            assert r.status == 401
            # The consultation goes on; the journal has it all, with who and when.
            assert (await n.request("consultation.get", consultation_id=cid))["consultation"]["state"] == "active"
            r = await http.get(f"{sig.url}/api/consultations/{cid}/journal", headers=bearer(doctor))
            acts = [(e["act"], e["actor"]) for e in (await r.json())["entries"]]
            for act, actor in (("invitation.create", "dr-demo"), ("invitation.claim", inv_id),
                               ("invitation.admit", "dr-demo"), ("invitation.consent", "nurse-1"),
                               ("participant.join", inv_id), ("participant.remove", "dr-demo")):
                assert (act, actor) in acts, (act, acts)
    finally:
        for s in sessions:
            await s.close()
        for c in (n, a, d) + ((guest,) if guest else ()):
            await c.close()


async def test_links_that_no_longer_work(sig: RunningServer) -> None:
    n, a, d, cid, _ = await active(sig)
    doctor = sig.tokens.issue_access("physician", "dr-demo")
    try:
        async with aiohttp.ClientSession() as http:
            revoked = await invite(http, sig, cid, doctor, "guest")
            r = await http.delete(f"{sig.url}/api/consultations/{cid}/invitations/{revoked['id']}",
                                  headers=bearer(doctor))
            assert r.status == 200 and (await r.json())["invitation"]["state"] == "revoked"
            assert await claim(http, sig, token_of(revoked["link"])) == \
                (410, {"error": "invitation_gone", "reason": "revoked"})
            refused = await invite(http, sig, cid, doctor, "specialist")
            status, body = await claim(http, sig, token_of(refused["link"]), "Dr Second")
            assert status == 200
            guest_token = body["access_token"]
            r = await http.post(f"{sig.url}/api/consultations/{cid}/invitations/{refused['id']}/refuse",
                                headers=bearer(doctor))
            assert (await r.json())["invitation"]["state"] == "refused"
            # A refused guest's token opens nothing, on the socket either.
            guest = await SigClient.connect(sig.ws_url)
            await guest.error("hello", "auth_failed", version=1, token=guest_token)
            await guest.close()
            r = await http.get(f"{sig.url}/api/ice-servers", headers=bearer(guest_token))
            assert r.status == 401 and "no longer stands" in (await r.json())["reason"]
            # Bad input: clear 400s.
            for body_in in ({"role": "admin", "ttl_s": 600}, {"role": "guest", "ttl_s": 5},
                            {"role": "guest", "ttl_s": 600, "email": "not an address"}, [1]):
                r = await http.post(f"{sig.url}/api/consultations/{cid}/invitations", headers=bearer(doctor),
                                    json=body_in)
                assert r.status in (400, 409) and "reason" in await r.json(), body_in
            r = await http.post(f"{sig.url}/api/invitations/claim", json={"token": 5, "name": "x"})
            assert r.status == 401
            pending = await invite(http, sig, cid, doctor, "guest")
            r = await http.post(f"{sig.url}/api/invitations/claim", json={"token": token_of(pending["link"]),
                                                                         "name": ""})
            assert r.status == 400
            # The consultation ends: its links are gone (expired).
            await d.request("consultation.end", consultation_id=cid)
            assert await claim(http, sig, token_of(pending["link"])) == \
                (410, {"error": "invitation_gone", "reason": "expired"})
    finally:
        for c in (n, a, d):
            await c.close()


async def test_a_directory_specialist_is_mailed_the_link_and_signs_an_addendum(
        tmp_path: Path, backend: str, store_url: str | None, smtp_server: SmtpSink) -> None:
    sig = await server_with_mail(tmp_path, backend, store_url, smtp_server.url)
    n, a, d, cid, _ = await active(sig)
    doctor = sig.tokens.issue_access("physician", "dr-demo")
    try:
        async with aiohttp.ClientSession() as http:
            created = await invite(http, sig, cid, doctor, "specialist", clinician="dr-derma")
            assert created["invitation"]["clinician"] == "dr-derma" and created["invitation"]["emailed"] is True
            [message] = await smtp_server.wait_for(1)
            assert message["To"] == DERMA and message["Auto-Submitted"] == "auto-generated"
            text = message.get_content()
            assert created["link"] in text and VISIT["patient_ref"] not in text and VISIT["reason"] not in text
            # Whatever is typed, a directory specialist is named as the directory names them.
            status, body = await claim(http, sig, token_of(created["link"]), "someone else")
            assert status == 200 and body["invitation"]["name"] == "Dr Derma"
            specialist = body["access_token"]
            # Only once admitted may it write, and the addendum is signed by the clinician.
            r = await http.post(f"{sig.url}/api/consultations/{cid}/report/addenda", headers=bearer(specialist),
                                json={"text": "Dermoscopy: no sign of melanoma."})
            assert r.status == 403
            for step, who in (("admit", doctor), ("consent", sig.tokens.issue_access("nurse", "nurse-1",
                                                                                      site="cabin-demo"))):
                r = await http.post(f"{sig.url}/api/consultations/{cid}/invitations/{created['id']}/{step}",
                                    headers=bearer(who))
                assert r.status == 200, await r.text()
            r = await http.post(f"{sig.url}/api/consultations/{cid}/report/addenda", headers=bearer(specialist),
                                json={"text": "Dermoscopy: no sign of melanoma."})
            assert r.status == 201, await r.text()
            assert (await r.json())["addendum"]["author"] == "dr-derma"
            r = await http.post(f"{sig.url}/api/consultations/{cid}/report/addenda", headers=bearer(specialist),
                                json={"text": ""})
            assert r.status == 400
            report = await d.request("report.get", consultation_id=cid)
            assert [(x["author"], x["role"], x["name"]) for x in report["addenda"]] == \
                [("dr-derma", "specialist", "Dr Derma")]
            # A specialist may not end the consultation.
            guest = await SigClient.connect(sig.ws_url, specialist)
            await guest.error("consultation.end", "forbidden", consultation_id=cid)
            await guest.close()
            # The addendum is in the records at once, and stays after the end.
            await d.request("consultation.end", consultation_id=cid)
            report = await d.request("report.get", consultation_id=cid)
            assert [x["author"] for x in report["addenda"]] == ["dr-derma"]
    finally:
        for c in (n, a, d):
            await c.close()
        await sig.server.close()
