"""Media scale-out (DESIGN §5): SFU nodes in the store, rooms placed on the least loaded live node.

Two apps on one real Redis: the room goes to the least loaded node, whose URL
the parties get as ``sfu_url``; a socket on the other process is told
``wrong_node`` and uses that node's WHIP/WHEP; room events cross processes; a
draining node gets no new rooms; a node that stops heartbeating (frozen) loses
its rooms to a live node and the parties are told (``room.moved``); a killed node
(its port refuses connections) loses them well before its heartbeat expires
(``signalling.node_probe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from core import appkeys
from core.vocabulary import ConsultationId
from sfu.appkeys import SFU
from sfu.node import NodeInfo, choose_node
from signalling.appkeys import SIGNALLING
from tests.sfu.clients import FlatVideoTrack, play, publish
from tests.signalling.client import SigClient
from tests.signalling.conftest import sig_settings
from tests.signalling.procs import ServerProcess, spawn_server, stop
from tests.signalling.test_flow import VISIT
from tests.support import RunningServer, start_server, wait_for


def _chosen_id(nodes: list[NodeInfo], placed: dict[str, int]) -> str | None:
    node = choose_node(nodes, placed)
    return None if node is None else node.id


def test_choose_node_least_loaded_live_not_draining() -> None:
    nodes = [NodeInfo("a", "http://a", participants=9), NodeInfo("b", "http://b"),
             NodeInfo("c", "http://c", draining=True), NodeInfo("d", "http://d", alive=False)]
    assert _chosen_id(nodes, {"a": 0, "b": 1}) == "a"
    assert _chosen_id(nodes, {"a": 1, "b": 1}) == "b"  # then fewer participants
    assert _chosen_id(nodes, {"a": 5, "b": 5, "c": 0, "d": 0}) == "b"  # never draining or dead ones
    assert choose_node([NodeInfo("c", "", draining=True)], {}) is None


async def _app(tmp_path: Path, redis_url: str, name: str, heartbeat_s: float = 1.0) -> RunningServer:
    running = await start_server(sig_settings(tmp_path, "redis", redis_url, name=name, heartbeat_s=heartbeat_s))
    service = running.app[SIGNALLING]
    service.node_url = running.url  # as `teleconsult serve` does with the bound address
    await service.heartbeat_node()
    return running


async def _started(sig: RunningServer, site: str, nurse: str, physician: str) -> tuple[SigClient, SigClient, str]:
    n = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("nurse", nurse, site=site))
    d = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("physician", physician))
    await d.request("presence.set", status="available")
    cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
    await d.event("offer.received", consultation__id=cid)
    await d.request("offer.accept", consultation_id=cid)
    return n, d, cid


async def _media_flows(base: str, cid: str, nurse_token: str, physician_token: str) -> list[Any]:
    """The nurse publishes a camera by WHIP at ``base``, the physician plays it by WHEP: a frame arrives."""
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, base, cid, nurse_token, [FlatVideoTrack(160, 120)])
        sub = await play(http, base, cid, physician_token, ["video"])
    frame = await asyncio.wait_for(sub.transceivers[0].receiver.track.recv(), 15)
    assert frame.width == 160
    return [pub, sub]


async def test_rooms_go_to_the_least_loaded_node_and_clients_follow_sfu_url(tmp_path: Path, redis_url: str) -> None:
    a = await _app(tmp_path, redis_url, "a")
    b = await _app(tmp_path, redis_url, "b")
    svc_a, svc_b = a.app[SIGNALLING], b.app[SIGNALLING]
    clients: list[SigClient] = []
    peers: list[Any] = []
    try:
        nodes = await svc_b.store.nodes()
        assert {nodes[svc_a.node_id]["url"], nodes[svc_b.node_id]["url"]} == {a.url, b.url}
        await svc_b.store.place_room("busy-elsewhere", svc_b.node_id)  # b is the more loaded node
        n, d, cid = await _started(b, "cabin-demo", "n1", "dr-cardio")
        clients += [n, d]
        started = await n.event("consultation.started")
        assert started["sfu_url"] == a.url
        assert cid in a.app[SFU].rooms() and cid not in b.app[SFU].rooms()
        # The socket's process is not the room's node: wrong_node, then that node's WHIP/WHEP.
        await n.error("media.offer", "wrong_node", consultation_id=cid, sdp="v=0")
        d_started = await d.event("consultation.started")
        peers += await _media_flows(started["sfu_url"], cid, started["room_token"], d_started["room_token"])
        # The room token works on the room's node only: no second room of that name on b.
        async with aiohttp.ClientSession() as http:
            with pytest.raises(AssertionError, match="WHIP 409.*wrong_node"):
                await publish(http, b.url, cid, started["room_token"], [FlatVideoTrack(160, 120)])
        assert cid not in b.app[SFU].rooms()
        # Room events of node a reach the sockets on process b.
        await d.event("room.event", event="publication.added", data__publication__source="camera")
        # A fresh room token says where the room is too.
        assert (await d.request("room.token", consultation_id=cid))["sfu_url"] == a.url
        await d.request("consultation.end", consultation_id=cid)
        await wait_for(lambda: cid not in a.app[SFU].rooms(), 10, what="room closed on its node")
        assert await svc_b.store.room_node(cid) is None

        # Node a drains (SIGTERM): new rooms go to b although b is more loaded.
        a.app[appkeys.LIFECYCLE].signal()
        await svc_a.heartbeat_node()
        assert (await svc_b.store.nodes())[svc_a.node_id]["draining"] is True
        await d.event("presence.changed", physician="dr-cardio", status="available")
        cid2 = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid2)
        accepted = await d.request("offer.accept", consultation_id=cid2)
        assert accepted["sfu_url"] == b.url and cid2 in b.app[SFU].rooms()
        await d.request("consultation.end", consultation_id=cid2)
    finally:
        for peer in peers:
            await peer.close()
        for c in clients:
            await c.close()
        await a.server.close()
        await b.server.close()


@dataclass
class _CallOnA:
    b: RunningServer
    """The app in this process, on Redis, a media node that hosts nothing yet."""
    a: ServerProcess
    """The media node in a process of its own, which the consultation's room is placed on."""
    nurse: SigClient
    physician: SigClient
    cid: str
    started: dict[str, Any]
    """The nurse's ``consultation.started`` (the physician's: ``physician_started``)."""
    physician_started: dict[str, Any]


@contextlib.asynccontextmanager
async def _call_on_spawned_node(tmp_path: Path, redis_url: str, heartbeat_s: float) -> AsyncIterator[_CallOnA]:
    """A consultation whose room is on a node in another process (``a``), the parties connected to
    ``b``; the clients closed, ``a`` ended and ``b`` closed after."""
    b = await _app(tmp_path, redis_url, "b", heartbeat_s=heartbeat_s)
    svc_b = b.app[SIGNALLING]
    a = spawn_server(tmp_path / "a", redis_url, heartbeat_s=heartbeat_s)
    clients: list[SigClient] = []
    try:
        await wait_for(lambda: _alive_urls(svc_b, a.url), 15, what="node a registered with its URL")
        await svc_b.store.place_room("busy-elsewhere", svc_b.node_id)
        n, d, cid = await _started(b, "cabin-demo", "n1", "dr-cardio")
        clients += [n, d]
        started = await n.event("consultation.started")
        physician_started = await d.event("consultation.started")
        assert started["sfu_url"] == a.url
        yield _CallOnA(b, a, n, d, cid, started, physician_started)
    finally:
        for c in clients:
            await c.close()
        stop(a)
        await b.server.close()


async def test_a_frozen_node_loses_its_rooms_when_its_heartbeat_expires(tmp_path: Path, redis_url: str) -> None:
    async with _call_on_spawned_node(tmp_path, redis_url, heartbeat_s=1.0) as call:
        b, n, d, cid = call.b, call.nurse, call.physician, call.cid
        svc_b = b.app[SIGNALLING]
        peers: list[Any] = []
        try:
            peers += await _media_flows(call.a.url, cid, call.started["room_token"],
                                        call.physician_started["room_token"])

            # Frozen, not killed: its port still takes connections (the kernel's backlog) but nothing
            # answers, so nothing says it is dead until its heartbeat expires (three heartbeat_s).
            os.kill(call.a.process.pid, signal.SIGSTOP)
            moved_n = await n.event("room.moved", timeout=15, room=cid)
            moved_d = await d.event("room.moved", timeout=5, room=cid)
            assert moved_n["sfu_url"] == moved_d["sfu_url"] == b.url
            assert await svc_b.store.room_node(cid) == svc_b.node_id and cid in b.app[SFU].rooms()
            # The parties rejoin at the new node with the new tokens.
            peers += await _media_flows(b.url, cid, moved_n["room_token"], moved_d["room_token"])
            acts = [e["act"] for e in await svc_b.journal.read(ConsultationId(cid))]
            assert "room.move" in acts
            await d.request("consultation.end", consultation_id=cid)
        finally:
            for peer in peers:
                await peer.close()


async def test_a_killed_node_is_known_dead_well_before_its_heartbeat_expires(tmp_path: Path, redis_url: str) -> None:
    # heartbeat_s = 10: a node's liveness lasts 30 s; its refused connections tell sooner.
    async with _call_on_spawned_node(tmp_path, redis_url, heartbeat_s=10.0) as call:
        b, n, d, cid = call.b, call.nurse, call.physician, call.cid
        svc_b = b.app[SIGNALLING]
        # b has heard a answer (about a second after a registered): a's refusals will count.
        await wait_for(lambda: svc_b.node_probe.rule.heard(call.a.url), 10, what="node a heard by b's probe")

        stop(call.a)  # SIGKILL (by its PID): nothing listens on its port any more
        killed = time.monotonic()
        moved = await n.event("room.moved", timeout=10, room=cid)
        took = time.monotonic() - killed
        assert moved["sfu_url"] == b.url and (await d.event("room.moved", timeout=5, room=cid))["sfu_url"] == b.url
        assert took < 5.0, f"the room moved {took:.1f} s after the kill (its heartbeat expires at 30 s)"
        assert await svc_b.store.room_node(cid) == svc_b.node_id and cid in b.app[SFU].rooms()
        assert "room.move" in [e["act"] for e in await svc_b.journal.read(ConsultationId(cid))]
        await d.request("consultation.end", consultation_id=cid)


async def _alive_urls(service: Any, url: str) -> bool:
    return any(info["alive"] and info["url"] == url for info in (await service.store.nodes()).values())
