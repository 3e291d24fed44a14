"""Issue 19: "Room state (publications, participants) reads the same from any node."

* The store keeps one document per room (``Store.put_room_state``), on both backends: written
  only by the node the room is placed on and only when newer, gone when the room is placed
  again or unplaced, alive as long as its node heartbeats.
* One process (each backend): the document follows the SFU, and ``room.publications`` says who
  is in the room.
* Two processes on one Redis, the room on a, every party's socket on b: b answers
  ``room.publications`` (and ``room.token``, the hello state) as a does, filtered by each seat's
  grants (an interpreter: cameras and microphones only); a publication that ends is gone from
  b's answer by the time b's sockets hear ``room.event``; room events reach the sockets on b;
  ``media.offer`` still answers ``wrong_node`` on b (media goes to the room's node).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc.mediastreams import AudioStreamTrack

from sfu.appkeys import SFU
from signalling.appkeys import SIGNALLING
from signalling.rooms import publication
from signalling.store import Store
from signalling.store.memory import MemoryStore
from signalling.store.redis import RedisStore
from tests.sfu.clients import FlatVideoTrack, Session, publish
from tests.signalling.client import SigClient
from tests.signalling.test_guest_authorization import PEOPLE, active_call, admitted
from tests.signalling.test_nodes import _app
from tests.support import RunningServer, wait_for


@pytest.fixture
async def store(backend: str, store_url: str | None) -> Any:
    s: Store = MemoryStore() if backend == "memory" else RedisStore(str(store_url), "trs:", "p1")
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def _doc(*sources: str) -> dict[str, Any]:
    return {"participants": [{"session_id": "SE_1", "identity": "nurse", "role": "nurse"}],
            "publications": [{"id": f"PU_{s}", "source": s} for s in sources]}


async def test_room_state_document(store: Store) -> None:
    room = "c-room"
    assert await store.room_state(room) is None
    assert not await store.put_room_state(room, "n1", 1, _doc("camera"), 30)  # placed nowhere: nothing kept
    await store.place_room(room, "n1")
    assert await store.put_room_state(room, "n1", 1, _doc("camera"), 30)
    got = await store.room_state(room)
    assert got is not None and got.version == 1 and got.doc == _doc("camera")
    # Only newer versions, and only from the node the room is placed on.
    assert await store.put_room_state(room, "n1", 3, _doc("camera", "microphone"), 30)
    assert not await store.put_room_state(room, "n1", 2, _doc(), 30)
    assert not await store.put_room_state(room, "n1", 3, _doc(), 30)
    assert not await store.put_room_state(room, "n2", 9, _doc(), 30)
    got = await store.room_state(room)
    assert got is not None and got.version == 3 and got.doc == _doc("camera", "microphone")

    # Moved (its node lost): the old node's document goes; the new node starts at any version.
    await store.place_room(room, "n2")
    assert await store.room_state(room) is None
    assert not await store.put_room_state(room, "n1", 4, _doc("camera"), 30)
    assert await store.put_room_state(room, "n2", 1, _doc("otoscope"), 0.4)
    # It lives as long as its node's heartbeat says...
    await store.register_node("n2", {"url": "http://n2"}, 30, rooms=[room])
    await asyncio.sleep(0.6)
    got = await store.room_state(room)
    assert got is not None and got.doc == _doc("otoscope")
    # ...and no longer once the heartbeats stop.
    assert await store.put_room_state(room, "n2", 2, _doc("stethoscope"), 0.3)
    await asyncio.sleep(0.5)
    assert await store.room_state(room) is None
    assert await store.put_room_state(room, "n2", 1, _doc("camera"), 30)  # expired: any version again
    # A node known dead (its process exited) loses its rooms' documents with its heartbeat.
    await store.place_room("c-other", "n3")
    assert await store.put_room_state("c-other", "n3", 1, _doc("camera"), 30)
    await store.register_node("n2", {"url": "http://n2"}, 30)
    await store.expire_node("n2")
    assert await store.room_state(room) is None and await store.room_state("c-other") is not None
    assert not (await store.nodes())["n2"]["alive"]
    # Unplaced (closed): gone, and a late write keeps nothing.
    await store.unplace_room(room)
    assert await store.room_state(room) is None
    assert not await store.put_room_state(room, "n2", 5, _doc("camera"), 30)
    await store.place_room(room, "n2")
    assert await store.room_state(room) is None


async def _whip(http: aiohttp.ClientSession, base: str, cid: str, token: str, tracks: list[Any],
                sources: list[str]) -> Session:
    return await publish(http, base, cid, token, tracks, sources=sources)


async def test_one_process_keeps_the_document_and_says_who_is_in_the_room(sig: RunningServer) -> None:
    call = await active_call(sig)
    sessions: list[Session] = []
    try:
        async with aiohttp.ClientSession() as http:
            sessions.append(await _whip(http, sig.url, call.cid, call.seats["nurse"],
                                        [FlatVideoTrack(160, 120), AudioStreamTrack()], []))
            await call.doctor.event("room.event", event="publication.added", data__publication__source="camera")
            await call.doctor.event("room.event", event="publication.added", data__publication__source="microphone")
            listed = await call.doctor.request("room.publications", consultation_id=call.cid)
            assert sorted(p["source"] for p in listed["publications"]) == ["camera", "microphone"]
            assert listed["participants"] == [{"session_id": sessions[0].location.rsplit("/", 1)[1],
                                               "identity": "nurse", "role": "nurse"}]
            store = sig.app[SIGNALLING].store
            kept = await store.room_state(call.cid)
            assert kept is not None
            assert [publication(p) for p in kept.doc["publications"]] == listed["publications"]
            assert kept.doc["participants"] == listed["participants"]
            await call.doctor.request("consultation.end", consultation_id=call.cid)
            await wait_for(lambda: call.cid not in sig.app[SFU].rooms(), 10, what="room closed")
            assert await store.room_state(call.cid) is None
    finally:
        for s in sessions:
            await s.close()
        await call.close()


def _ids(publications: list[dict[str, Any]]) -> list[str]:
    return [p["id"] for p in publications]


async def test_another_process_answers_as_the_rooms_node(tmp_path: Path, redis_url: str) -> None:
    a = await _app(tmp_path, redis_url, "a")
    b = await _app(tmp_path, redis_url, "b")
    svc_a, svc_b = a.app[SIGNALLING], b.app[SIGNALLING]
    sockets: list[SigClient] = []
    sessions: list[Session] = []
    call = None
    try:
        await svc_b.store.place_room("busy-elsewhere", svc_b.node_id)  # b is the more loaded node
        call = await active_call(b)  # every party's signalling socket is on b
        cid = call.cid
        assert await svc_b.store.room_node(cid) == svc_a.node_id and cid in a.app[SFU].rooms()
        async with aiohttp.ClientSession() as http:
            interpreter = await admitted(b, http, call, "interpreter")
            sockets.append(interpreter.socket)
            sessions.append(await _whip(http, a.url, cid, call.seats["nurse"],
                                        [FlatVideoTrack(160, 120), AudioStreamTrack()], []))
            agent = await _whip(http, a.url, cid, call.seats["agent"], [AudioStreamTrack(), FlatVideoTrack(160, 120)],
                                ["stethoscope", "dermatoscope"])
            sessions.append(agent)
            # Room events of node a reach the nurse's and the interpreter's sockets on b.
            for source in ("camera", "microphone", "stethoscope", "dermatoscope"):
                await call.nurse.event("room.event", event="publication.added", data__publication__source=source)
            await call.nurse.event("room.event", event="participant.joined", data__participant__identity="agent")
            await interpreter.socket.event("room.event", event="publication.added",
                                           data__publication__source="camera")
            assert not interpreter.socket.has_event("room.event", data__publication__source="stethoscope")

            # The same question on the room's node (a) and on b: the same answer, seat by seat.
            on_a = {role: await SigClient.connect(a.ws_url, token) for role, token in
                    (("nurse", call.nurse_token), ("physician", call.doctor_token),
                     ("interpreter", interpreter.access))}
            sockets += on_a.values()
            on_b = {"nurse": call.nurse, "physician": call.doctor, "interpreter": interpreter.socket}
            for role in on_b:
                here = await on_a[role].request("room.publications", consultation_id=cid)
                there = await on_b[role].request("room.publications", consultation_id=cid)
                assert there == {**here, "id": there["id"]}, role
                sources = {p["source"] for p in there["publications"]}
                assert sources == (PEOPLE if role == "interpreter" else PEOPLE | {"stethoscope", "dermatoscope"})
                assert sorted(x["identity"] for x in there["participants"]) == ["agent", "nurse"]
            # What a's SFU holds, in its order.
            assert _ids((await call.doctor.request("room.publications", consultation_id=cid))["publications"]) == \
                [i.id for i in a.app[SFU].publications(cid)]
            # room.token and a new socket's hello state on b carry them too (grants applied).
            token = await interpreter.socket.request("room.token", consultation_id=cid)
            assert {p["source"] for p in token["publications"]} == PEOPLE and token["sfu_url"] == a.url
            late = await SigClient.connect(b.ws_url, call.doctor_token)
            sockets.append(late)
            assert len(late.hello["state"]["rooms"][cid]["publications"]) == 4
            # Media still goes to the room's node.
            await call.nurse.error("media.offer", "wrong_node", consultation_id=cid, sdp="v=0")

            # The agent's session ends on a: by the time b's sockets hear of it, b's answer has followed.
            started = time.monotonic()
            response = await http.delete(f"{a.url}{agent.location}",
                                         headers={"Authorization": f"Bearer {call.seats['agent']}"})
            assert response.status == 204
            await call.nurse.event("room.event", event="participant.left", data__participant__identity="agent")
            listed = await call.nurse.request("room.publications", consultation_id=cid)
            followed_s = time.monotonic() - started
            assert {p["source"] for p in listed["publications"]} == PEOPLE
            assert [x["identity"] for x in listed["participants"]] == ["nurse"]
            assert followed_s < 2.0, followed_s
            await call.doctor.request("consultation.end", consultation_id=cid)
            await wait_for(lambda: cid not in a.app[SFU].rooms(), 10, what="room closed on its node")
            assert await svc_b.store.room_state(cid) is None
    finally:
        for s in sessions:
            await s.close()
        for c in sockets:
            await c.close()
        if call is not None:
            await call.close()
        await a.server.close()
        await b.server.close()
