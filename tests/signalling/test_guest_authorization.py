"""Issue 14: "Authorization tests cover each guest role against every REST route and socket message."

For each guest role (interpreter, specialist, guest), with that guest admitted to an active
consultation (memory backend: the store is not what is checked here):

* every route of the running app, every method, with the guest's access token as Bearer: refused
  (401/403/404/405) but for an allowlist, each entry justified where it is listed;
* WHIP/WHEP (room tokens): the guest's room token publishes camera and microphone only and
  receives the devices only as a specialist;
* every request type of ``signalling.protocol.REQUESTS`` from the guest's socket, with fields that
  parse: the eight a guest may send work, every other is ``forbidden``;
* the room's data channel: a guest's device command is refused, the devices' talk reaches the
  seats that see the devices and no interpreter or family member;
* a guest token never opens another consultation, and a removed guest's tokens are dead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from media.ice import ScopedPeerConnection
from sfu.appkeys import SFU
from sfu.sdp import msids
from signalling import protocol as p
from tests.sfu.clients import FlatVideoTrack, Session, client_pc, play, post_offer, publish
from tests.signalling.client import SigClient
from tests.signalling.conftest import sig_settings
from tests.signalling.test_flow import VISIT, agent, nurse, physician
from tests.signalling.test_invitations import bearer, claim, invite, token_of
from tests.signalling.test_rooms import offer_sdp
from tests.support import RunningServer, start_server, wait_for

GUEST_ROLES = ("interpreter", "specialist", "guest")
PEOPLE = {"camera", "microphone"}
DEVICES_PUBLISHED = {"stethoscope", "dermatoscope"}
REFUSED = {401, 403, 404, 405}

GUEST_REQUESTS = {"hello", "ping", "auth.refresh", "consultation.get", "room.token", "room.publications",
                  "media.offer", "media.leave"}
"""What a guest may send on the socket (the contract: "nothing else"; auth.refresh replaces the
socket's token with one for the same invitation)."""

PUBLIC = {"/healthz", "/readyz", "/metrics", "/ws", "/", "/nurse", "/physician", "/admin", "/expertise", "/join",
          "/api/auth/config", "/auth/oidc/login", "/auth/oidc/callback", "/static"}
"""Routes that read no token at all: the probes (healthz, readyz, metrics), the pages and their static
files (a page signs in from script), the sign-in config and the OpenID redirects, and /ws (its
token comes in ``hello``, checked by the socket tests below). Each must answer a guest token
exactly as it answers no token: the token grants nothing there."""


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(sig_settings(tmp_path, "memory", None))
    try:
        yield running
    finally:
        await running.server.close()


# -- the scene ---------------------------------------------------------------------------------
@dataclass
class Call:
    cid: str
    nurse: SigClient
    agent: SigClient
    doctor: SigClient
    seats: dict[str, str]
    """Room tokens of the nurse, agent and physician seats."""
    doctor_token: str
    nurse_token: str

    async def close(self) -> None:
        for c in (self.nurse, self.agent, self.doctor):
            await c.close()


@dataclass
class Guest:
    role: str
    access: str
    inv_id: str
    identity: str
    room_token: str
    link: str
    socket: SigClient


@dataclass
class Media:
    sessions: list[Session] = field(default_factory=list)

    async def close(self) -> None:
        for s in self.sessions:
            await s.close()


async def active_call(sig: RunningServer, site: str = "cabin-demo", doctor: str = "dr-demo") -> Call:
    """A nurse, an agent and a physician in an active consultation (the physician connects last, so
    that the offer rings this one)."""
    n = await nurse(sig, site, sub=f"nurse-{site}")
    a = await agent(sig, site)
    d = await physician(sig, doctor)
    cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
    await d.event("offer.received", consultation__id=cid)
    seats = {"physician": (await d.request("offer.accept", consultation_id=cid))["room_token"],
             "nurse": (await n.event("consultation.started"))["room_token"],
             "agent": (await a.event("consultation.started"))["room_token"]}
    return Call(cid, n, a, d, seats, sig.tokens.issue_access("physician", doctor),
                sig.tokens.issue_access("nurse", f"nurse-{site}", site=site))


async def admitted(sig: RunningServer, http: aiohttp.ClientSession, call: Call, role: str) -> Guest:
    """A guest of ``role`` invited, claimed, admitted by the physician and consented by the nurse."""
    created = await invite(http, sig, call.cid, call.doctor_token, role)
    status, claimed = await claim(http, sig, token_of(created["link"]), f"A {role}")
    assert status == 200, claimed
    socket = await SigClient.connect(sig.ws_url, claimed["access_token"])
    for what, token in (("admit", call.doctor_token), ("consent", call.nurse_token)):
        r = await http.post(f"{sig.url}/api/consultations/{call.cid}/invitations/{created['id']}/{what}",
                            headers=bearer(token))
        assert r.status == 200, await r.text()
    seat = await socket.event("consultation.started")
    assert seat["grant"]["role"] == role
    return Guest(role, claimed["access_token"], created["id"], seat["grant"]["identity"], seat["room_token"],
                 created["link"], socket)


async def room_with_devices(sig: RunningServer, http: aiohttp.ClientSession, call: Call) -> Media:
    """The nurse's camera and microphone and the agent's stethoscope and dermatoscope in the room."""
    media = Media()
    media.sessions.append(await publish(http, sig.url, call.cid, call.seats["nurse"],
                                        [FlatVideoTrack(160, 120), AudioStreamTrack()]))
    media.sessions.append(await publish(http, sig.url, call.cid, call.seats["agent"],
                                        [AudioStreamTrack(), FlatVideoTrack(160, 120)],
                                        sources=["stethoscope", "dermatoscope"]))
    sfu = sig.app[SFU]
    await wait_for(lambda: {i.source for i in sfu.publications(call.cid)} == PEOPLE | DEVICES_PUBLISHED,
                   what="four publications")
    return media


def receives(role: str) -> set[str]:
    """The sources a guest's seat receives (the contract's grant)."""
    return PEOPLE | DEVICES_PUBLISHED if role == "specialist" else PEOPLE


# -- REST --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    method: str
    canonical: str
    path: str


def routes(app: web.Application, values: dict[str, str]) -> list[Route]:
    """Every route of the app, its ``{...}`` filled from ``values`` (static files: one real file)."""
    out = []
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        canonical = resource.canonical
        if isinstance(resource, web.StaticResource):
            path = f"{canonical}/join.js"
        else:
            path = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], canonical)
        out.append(Route(route.method, canonical, path))
    return out


def values_for(cid: str, guest: Guest) -> dict[str, str]:
    return {"id": cid, "consultation_id": cid, "room": cid, "inv_id": guest.inv_id, "identity": guest.identity,
            "kind": "sites", "session": "s-0123456789", "specialty": "cardiology", "att_id": "a-1",
            "still_id": "st-1", "file": "camera.webm"}


BODIES: dict[str, Any] = {
    "/api/consultations/{id}/invitations": {"role": "guest", "label": "more", "ttl_s": 600},
    "/api/consultations/{id}/report": {"findings": "fine"},
    "/api/consultations/{id}/report/draft": {"findings": "fine"},
    "/api/consultations/{id}/report/addenda": {"text": "I agree with the findings."},
    "/api/consultations/{id}/recording": {"action": "start"},
    "/api/consultations/{id}/stills/{still_id}": {"label": "left ear"},
    "/api/directory": {"sites": [], "clinicians": []},
    "/api/directory/{kind}/{id}": {"name": "x", "kind": "cabin", "region": "demo"},
    "/api/expertise": {"specialty": "cardiology"},
}
"""Plausible bodies, so that a refusal is the token's, not a body's."""


async def answer(http: aiohttp.ClientSession, base: str, route: Route, token: str | None,
                 body: Any = None) -> tuple[int, bytes, str]:
    headers = bearer(token) if token else {}
    data: Any = None
    if body is None and route.method in ("POST", "PUT", "PATCH"):
        body = BODIES.get(route.canonical, {})
    if isinstance(body, str):
        headers["Content-Type"] = "application/sdp"
        data = body
    elif body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body)
    async with http.request(route.method, base + route.path, headers=headers, data=data,
                            allow_redirects=False) as r:
        return r.status, await r.read(), r.content_type


async def check_rest(sig: RunningServer, http: aiohttp.ClientSession, call: Call, guest: Guest) -> None:
    """Every route, every method, with the guest's access token."""
    seen: dict[str, int] = {}
    for route in routes(sig.app, values_for(call.cid, guest)):
        key = f"{route.method} {route.canonical}"
        if route.canonical in PUBLIC:
            status, body, ctype = await answer(http, sig.url, route, guest.access)
            bare = await answer(http, sig.url, route, None)
            # Same status, type and body (/metrics: not the body, it counts these very requests).
            assert (status, ctype) == (bare[0], bare[2]), (key, status, bare[0])
            if route.canonical != "/metrics":
                assert body == bare[1], key
        elif route.canonical == "/api/ice-servers":
            # The guest's page needs STUN/TURN to join the call (the contract).
            status, body, _ = await answer(http, sig.url, route, guest.access)
            assert status == 200, key
            if route.method == "GET":  # as a nurse's (loopback settings: no STUN/TURN configured)
                assert json.loads(body) == json.loads((await answer(http, sig.url, route, call.nurse_token))[1])
        elif route.canonical.startswith("/api/echo"):
            status = await check_echo(sig, http, route, guest)
        elif route.canonical == "/api/consultations/{id}/report/addenda":
            # An admitted specialist signs an addendum (the contract); an interpreter or a family member never.
            status, body, _ = await answer(http, sig.url, route, guest.access)
            if guest.role == "specialist":
                assert status == 201, (key, body)
                assert json.loads(body)["addendum"]["role"] == "specialist"
            else:
                assert status == 403, (key, body)
        elif route.canonical == "/api/invitations/claim":
            # Not a bearer route: the link's token is the credential. The guest's bearer changes nothing:
            # its own (used) link stays gone, no link is a 401, with or without the bearer.
            for body_in, want in (({"token": token_of(guest.link), "name": "Again"}, 410),
                                  ({"token": "c.iv.forged", "name": "X"}, 401)):
                status, body, _ = await answer(http, sig.url, route, guest.access, body_in)
                assert (status, body) == (await answer(http, sig.url, route, None, body_in))[:2], key
                assert status == want, (key, body)
        else:
            status, body, _ = await answer(http, sig.url, route, guest.access)
            assert status in REFUSED, (key, status, body[:200])
        seen[key] = status
    # The table really is the whole app (a route added later is covered by the default: refused).
    assert "POST /api/consultations/{id}/invitations" in seen and "GET /api/ice-servers" in seen
    assert len(seen) == len(list(sig.app.router.routes()))


async def check_echo(sig: RunningServer, http: aiohttp.ClientSession, route: Route, guest: Guest) -> int:
    """The pre-call check (the contract: the guest's token like any other): a real check opened,
    read and closed with the guest's token; someone else's token does not see it."""
    pc = client_pc()
    try:
        pc.createDataChannel("check")
        await pc.setLocalDescription(await pc.createOffer())
        opened = Route("POST", "/api/echo", "/api/echo")
        async with http.post(sig.url + opened.path, data=pc.localDescription.sdp,
                             headers={**bearer(guest.access), "Content-Type": "application/sdp"}) as r:
            assert r.status == 201, await r.text()
            location = r.headers["Location"]
    finally:
        await pc.close()
    status = 201
    if route.method != "POST":
        other = sig.tokens.issue_access("nurse", "nurse-x", site="cabin-demo")
        async with http.request(route.method, sig.url + location, headers=bearer(other)) as r:
            assert r.status == 404  # the guest's check is its own
        async with http.request(route.method, sig.url + location, headers=bearer(guest.access)) as r:
            status = r.status
            assert status == (204 if route.method == "DELETE" else 200), route
    if route.method != "DELETE":
        async with http.delete(sig.url + location, headers=bearer(guest.access)) as r:
            assert r.status == 204
    return status


async def check_room_token(sig: RunningServer, http: aiohttp.ClientSession, call: Call, guest: Guest) -> None:
    """WHIP/WHEP take room tokens: the guest's publishes camera and microphone, never a device,
    and plays the devices only as a specialist."""
    view = await play(http, sig.url, call.cid, guest.room_token, ["audio", "audio", "video", "video"])
    try:
        played = served(view.answer)
        assert {source for _, source in played} == receives(guest.role), played
        assert {identity for identity, _ in played} <= {"nurse", "agent"}, played
    finally:
        await view.close()
    for source in ("stethoscope", "otoscope", "dermatoscope", "vitals"):
        kind = "audio" if source == "stethoscope" else "video"
        r = await post_offer(http, f"{sig.url}/whip/{call.cid}?source={source}", guest.room_token,
                             await offer_sdp(kind, "sendonly") if kind == "video" else await audio_offer())
        # Not granted (403); vitals are no RTP source at all (400 unknown_source).
        assert r.status == (400 if source == "vitals" else 403), (source, r.status, await r.text())
    own = await publish(http, sig.url, call.cid, guest.room_token, [FlatVideoTrack(160, 120), AudioStreamTrack()])
    try:
        mine = {i.source for i in sig.app[SFU].publications(call.cid) if i.identity == guest.identity}
        assert mine == PEOPLE
        # Its session is its own: another seat's token cannot end it.
        r = await http.delete(sig.url + own.location, headers=bearer(call.seats["nurse"]))
        assert r.status == 403
        # Its room token is refused where room tokens mean an agent: stills.
        r = await http.post(f"{sig.url}/api/consultations/{call.cid}/stills", data=b"\x89PNG\r\n\x1a\n",
                            headers={**bearer(guest.room_token), "X-Device": "dermatoscope",
                                     "Content-Type": "image/png"})
        assert r.status == 403, await r.text()
    finally:
        await own.close()
    # An access token is no room token, and a room token is no access token.
    r = await post_offer(http, f"{sig.url}/whep/{call.cid}", guest.access, await offer_sdp("video", "recvonly"))
    assert r.status == 401
    r = await http.get(f"{sig.url}/api/ice-servers", headers=bearer(guest.room_token))
    assert r.status == 401


def served(answer_sdp: str) -> set[tuple[str, str]]:
    """(identity, source) of each section a WHEP answer sends (the others are answered inactive)."""
    out = set()
    for section in answer_sdp.split("\r\nm=")[1:]:
        lines = section.split("\r\n")
        mid = next(line[6:] for line in lines if line.startswith("a=mid:"))
        if "a=sendonly" in lines:
            identity, source = msids("m=" + section)[mid].split()
            out.add((identity, source))
    return out


async def audio_offer() -> str:
    pc = client_pc()
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


# -- the socket --------------------------------------------------------------------------------
async def plausible(cid: str, guest: Guest) -> dict[str, dict[str, Any]]:
    """Fields that parse for every request type (so that a refusal is never a bad_message)."""
    sdp = await offer_sdp("video", "sendonly")
    fields: dict[str, dict[str, Any]] = {
        "hello": {"version": 1, "token": guest.access},
        "ping": {},
        "auth.refresh": {"token": guest.access},
        "auth.renew": {},
        "presence.set": {"status": "available"},
        "presence.list": {},
        "visit.request": dict(VISIT),
        "queue.pick": {"consultation_id": cid},
        "visit.cancel": {"consultation_id": cid},
        "queue.list": {},
        "offer.accept": {"consultation_id": cid},
        "offer.decline": {"consultation_id": cid},
        "consultation.get": {"consultation_id": cid},
        "consultation.end": {"consultation_id": cid, "reason": "completed"},
        "room.token": {"consultation_id": cid},
        "room.publications": {"consultation_id": cid},
        "report.save": {"consultation_id": cid, "report": {"findings": "fine"}},
        "report.draft": {"consultation_id": cid, "report": {"findings": "fine"}},
        "report.get": {"consultation_id": cid},
        "media.offer": {"consultation_id": cid, "sdp": sdp, "publish": {"0": "camera"}},
        "media.leave": {"consultation_id": cid},
    }
    assert set(fields) == set(p.REQUESTS), "a request type was added: give it plausible fields here"
    for type_, body in fields.items():
        p.parse_request({"type": type_, "id": 1, **body})  # raises on a bad_message
    return fields


async def check_socket(sig: RunningServer, call: Call, guest: Guest) -> None:
    sock = guest.socket
    # The protocol's own table says the same as the contract.
    assert {t for t, spec in p.REQUESTS.items() if guest.role in spec.roles} == GUEST_REQUESTS
    fields = await plausible(call.cid, guest)
    for type_ in p.REQUESTS:
        if type_ in GUEST_REQUESTS:
            continue
        reply = await sock.call(type_, **fields[type_])
        assert reply["type"] == "error" and reply["code"] == "forbidden", (type_, reply)
    # Without its fields too: a role that may not send a request learns nothing of its schema.
    for type_ in ("offer.accept", "report.save", "visit.request"):
        reply = await sock.call(type_)
        assert reply["type"] == "error" and reply["code"] == "forbidden", (type_, reply)
    # Nothing forbidden changed anything: the consultation is still active, and no report was written.
    got = await call.doctor.request("consultation.get", consultation_id=call.cid)
    assert got["consultation"]["state"] == "active"
    report = await call.doctor.request("report.get", consultation_id=call.cid)
    assert report["status"] == "empty", report

    # What a guest may send works.
    assert (await sock.call("hello", **fields["hello"]))["code"] == "conflict"  # said once, at connect
    await sock.request("ping")
    refreshed = await sock.request("auth.refresh", **fields["auth.refresh"])
    assert refreshed["token_expires_at"] > 0
    # A token for another principal is refused: one of an invitation that does not stand at the door
    # (auth_failed), one of another standing guest as another subject (forbidden).
    other = sig.tokens.issue_guest(guest.role, "iv-000000000000", call.cid, name="x")
    assert (await sock.call("auth.refresh", token=other))["code"] == "auth_failed"
    c = (await sock.request("consultation.get", consultation_id=call.cid))["consultation"]
    assert c["id"] == call.cid and c["state"] == "active"
    assert ("patient_ref" in c) is (guest.role == "specialist")  # clinical fields for a specialist only
    token = await sock.request("room.token", consultation_id=call.cid)
    assert token["grant"]["identity"] == guest.identity and token["grant"]["command"] is False
    assert set(token["grant"]["subscribe_sources"]) >= receives(guest.role)
    assert {x["source"] for x in token["publications"]} == receives(guest.role)
    pubs = await sock.request("room.publications", consultation_id=call.cid)
    assert {x["source"] for x in pubs["publications"]} == receives(guest.role)
    # media.offer publishes its camera; subscribing to a device is the specialist's only.
    offered = await sock.request("media.offer", **fields["media.offer"])
    assert offered["identity"] == guest.identity
    assert {x["source"] for x in offered["room_publications"]} == receives(guest.role)  # its own camera too
    await sock.request("media.leave", consultation_id=call.cid)
    steth = next(i.id for i in sig.app[SFU].publications(call.cid) if i.source == "stethoscope")
    reply = await sock.call("media.offer", consultation_id=call.cid, sdp=await offer_sdp("audio", "recvonly"),
                            subscribe={"0": steth})
    if guest.role == "specialist":
        assert reply["type"] == "media.offer.ok", reply
    else:
        assert reply["type"] == "error" and reply["code"] == "forbidden", reply
    await sock.request("media.leave", consultation_id=call.cid)
    # Another seat's room token is not the guest's, even in its own consultation.
    reply = await sock.call("media.offer", room_token=call.seats["physician"], sdp=await offer_sdp("video",
                                                                                                 "recvonly"))
    assert reply["type"] == "error" and reply["code"] == "forbidden", reply
    # Room events to an interpreter or a family member never name a device.
    await sock.event("room.event", pop=False, event="publication.added", data__publication__source="camera")
    if guest.role != "specialist":
        assert not any(e["type"] == "room.event" and ((e.get("data") or {}).get("publication") or {}).get("source")
                       in DEVICES_PUBLISHED for e in sock.events), sock.events


# -- the tests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("role", GUEST_ROLES)
async def test_a_guest_token_opens_only_what_its_role_may(server: RunningServer, role: str) -> None:
    sig = server
    call = await active_call(sig)
    guest: Guest | None = None
    media = Media()
    try:
        async with aiohttp.ClientSession() as http:
            guest = await admitted(sig, http, call, role)
            media = await room_with_devices(sig, http, call)
            await check_rest(sig, http, call, guest)
            await check_room_token(sig, http, call, guest)
            await check_socket(sig, call, guest)
    finally:
        await media.close()
        if guest is not None:
            await guest.socket.close()
        await call.close()


@pytest.mark.parametrize("role", GUEST_ROLES)
async def test_the_data_channel_keeps_the_devices_talk_for_those_who_see_them(server: RunningServer,
                                                                               role: str) -> None:
    sig = server
    call = await active_call(sig)
    guest: Guest | None = None
    pcs: list[ScopedPeerConnection] = []
    try:
        async with aiohttp.ClientSession() as http:
            guest = await admitted(sig, http, call, role)
        inboxes: dict[str, list[dict[str, Any]]] = {}
        channels = {}
        for name, sock in (("physician", call.doctor), ("agent", call.agent), ("guest", guest.socket)):
            pc = ScopedPeerConnection()
            pcs.append(pc)
            channel = pc.createDataChannel("room")
            inbox: list[dict[str, Any]] = []
            channel.on("message", lambda m, inbox=inbox: inbox.append(json.loads(m)))
            await pc.setLocalDescription(await pc.createOffer())
            ok = await sock.request("media.offer", consultation_id=call.cid, sdp=pc.localDescription.sdp)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=ok["sdp"], type="answer"))
            await wait_for(lambda channel=channel: channel.readyState == "open", what=f"{name}'s channel open")
            inboxes[name], channels[name] = inbox, channel
        doctor, agent_box, guest_box = inboxes["physician"], inboxes["agent"], inboxes["guest"]
        sees_devices = role == "specialist"

        # A guest's device command: refused by the SFU with an error envelope, relayed to no one.
        channels["guest"].send(json.dumps({"type": "command", "device": "stethoscope", "mode": "bell"}))
        await wait_for(lambda: guest_box, what="the refusal")
        assert guest_box.pop(0) == {"from": "sfu", "role": "server",
                                    "data": {"type": "error", "reason": "command not granted"}}
        # The agent's device talk (status, vitals): the physician gets it; the guest only if it sees devices.
        vitals = {"type": "vitals", "heart_rate": 72, "spo2": 98}
        channels["agent"].send(json.dumps(vitals))
        await wait_for(lambda: doctor, what="the vitals at the physician's")
        assert doctor.pop(0) == {"from": "agent", "role": "agent", "data": vitals}
        # The physician's command goes to the agent, and to the guest only if it sees devices.
        command = {"type": "command", "device": "stethoscope", "mode": "diaphragm"}
        channels["physician"].send(json.dumps(command))
        # (The agent's own channel also gets the SFU's site_share when it opens: docs/protocol.md.)
        assert all(m["from"] == "sfu" and m["data"]["type"] == "site_share" for m in agent_box), agent_box
        agent_box.clear()
        await wait_for(lambda: agent_box, what="the command at the agent's")
        assert agent_box.pop(0) == {"from": "physician", "role": "physician", "data": command}
        # Then a chat message from the physician, which every seat gets: the SFU relays in order, so
        # once the guest has the chat, whatever device talk it was to get is there before it.
        chat = {"type": "chat", "text": "I am listening now"}
        channels["physician"].send(json.dumps(chat))
        await wait_for(lambda: any(m["data"] == chat for m in guest_box), what="the chat at the guest's")
        got = [m["data"] for m in guest_box]
        if sees_devices:
            assert got == [vitals, command, chat], got
        else:
            assert got == [chat], got
        # The guest's own non-device message reaches the physician (it is a party of the call).
        channels["guest"].send(json.dumps({"type": "chat", "text": "hola"}))
        await wait_for(lambda: doctor, what="the guest's chat at the physician's")
        assert doctor[0] == {"from": guest.identity, "role": role, "data": {"type": "chat", "text": "hola"}}
    finally:
        for pc in pcs:
            await pc.close()
        if guest is not None:
            await guest.socket.close()
        await call.close()


CONSULTATION_SCOPED = ("consultation.get", "room.token", "room.publications", "media.leave")


@pytest.mark.parametrize("role", GUEST_ROLES)
async def test_a_guest_token_never_opens_another_consultation_and_dies_with_its_removal(
        server: RunningServer, role: str) -> None:
    sig = server
    call = await active_call(sig)
    other = await active_call(sig, "ehpad-demo", "dr-cardio")
    assert other.cid != call.cid
    guest: Guest | None = None
    media = Media()
    try:
        async with aiohttp.ClientSession() as http:
            guest = await admitted(sig, http, call, role)
            media.sessions.append(await publish(http, sig.url, other.cid, other.seats["nurse"],
                                                [FlatVideoTrack(160, 120)]))
            # REST: every route naming a consultation, with the other one's id.
            scoped = [r for r in routes(sig.app, values_for(other.cid, guest))
                      if "{id}" in r.canonical or "{consultation_id}" in r.canonical or "{room}" in r.canonical]
            assert any(r.canonical == "/api/consultations/{id}/report/addenda" for r in scoped)
            for route in scoped:
                if route.canonical.startswith(("/api/expertise", "/api/directory", "/api/echo")):
                    continue  # {id} is no consultation there
                status, body, _ = await answer(http, sig.url, route, guest.access)
                assert status in (401, 403, 404), (route, status, body[:200])
                # Its room token is for its own room only.
                status, body, _ = await answer(http, sig.url, route, guest.room_token)
                assert status in (401, 403, 404), (route, status, body[:200])
            for kind, direction in (("whep", "recvonly"), ("whip", "sendonly")):
                r = await post_offer(http, f"{sig.url}/{kind}/{other.cid}", guest.room_token,
                                     await offer_sdp("video", direction))
                assert r.status == 401, (kind, await r.text())
            # The socket: every consultation-scoped request, with the other one's id.
            sock = guest.socket
            assert [c["id"] for c in sock.hello["state"]["consultations"]] == [call.cid]
            for type_ in CONSULTATION_SCOPED:
                await sock.error(type_, "not_found", consultation_id=other.cid)
            await sock.error("media.offer", "not_found", consultation_id=other.cid,
                             sdp=await offer_sdp("video", "recvonly"))
            await sock.error("media.offer", "not_found", room_token=other.seats["nurse"],
                             sdp=await offer_sdp("video", "recvonly"))
            fields = await plausible(other.cid, guest)
            for type_, spec in p.REQUESTS.items():
                if "consultation_id" in spec.cls.__dataclass_fields__ and type_ not in GUEST_REQUESTS:
                    await sock.error(type_, "forbidden", **fields[type_])
            # Its events never told it of the other consultation.
            assert not any(other.cid in json.dumps(e) for e in sock.events), sock.events

            # Removed: its socket is told, and its access token and room token are dead.
            r = await http.delete(f"{sig.url}/api/consultations/{call.cid}/participants/{guest.identity}",
                                  headers=bearer(call.doctor_token))
            assert r.status == 200, await r.text()
            await sock.event("invitation.updated", invitation__state="removed")
            for type_ in CONSULTATION_SCOPED:
                await sock.error(type_, "not_found", consultation_id=call.cid)
            await sock.error("media.offer", "not_found", consultation_id=call.cid,
                             sdp=await offer_sdp("video", "recvonly"))
            await sock.error("media.offer", "not_found", room_token=guest.room_token,
                             sdp=await offer_sdp("video", "recvonly"))
            again = await SigClient.connect(sig.ws_url)  # its token no longer opens a socket
            try:
                await again.error("hello", "auth_failed", version=1, token=guest.access)
            finally:
                await again.close()
            r = await http.get(f"{sig.url}/api/ice-servers", headers=bearer(guest.access))
            assert r.status == 401, await r.text()  # nor TURN credentials
            for route in routes(sig.app, values_for(call.cid, guest)):
                if "{id}" in route.canonical and route.canonical.startswith("/api/consultations"):
                    status, body, _ = await answer(http, sig.url, route, guest.access)
                    assert status in (401, 403, 404), (route, status, body[:200])
            for kind, direction in (("whep", "recvonly"), ("whip", "sendonly")):
                r = await post_offer(http, f"{sig.url}/{kind}/{call.cid}", guest.room_token,
                                     await offer_sdp("video", direction))
                assert r.status == 403, (kind, await r.text())
            # The consultation goes on for the others.
            assert (await call.nurse.request("consultation.get", consultation_id=call.cid))["consultation"][
                "state"] == "active"
    finally:
        await media.close()
        if guest is not None:
            await guest.socket.close()
        await call.close()
        await other.close()
