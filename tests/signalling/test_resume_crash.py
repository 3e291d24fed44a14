"""The resume grace survives the death of the process that held the socket.

A nurse's socket is on a server process that is killed (SIGKILL: no cleanup);
the other process, on the same real Redis, sees the dead process's sessions,
tells the physician the nurse dropped, and when the grace passes without a
resume ends the consultation: nothing waits forever.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from core.vocabulary import Act, ConsultationId
from signalling import consultation as lifecycle
from signalling.appkeys import SIGNALLING
from signalling.consultation import RECOVERY, State
from signalling.service import SignallingService
from tests.signalling.client import SigClient
from tests.signalling.conftest import sig_settings
from tests.signalling.procs import spawn_server, stop
from tests.signalling.test_flow import VISIT
from tests.support import start_server


async def test_sessions_of_a_killed_process_time_out_elsewhere(tmp_path: Path, redis_url: str) -> None:
    b = await start_server(sig_settings(tmp_path, "redis", redis_url, name="b", heartbeat_s=1.0,
                                        resume_grace_s=2.0))
    a = spawn_server(tmp_path / "a", redis_url, heartbeat_s=1.0, resume_grace_s=2.0)
    clients: list[SigClient] = []
    try:
        d = await SigClient.connect(b.ws_url, b.tokens.issue_access("physician", "dr-cardio"))
        clients.append(d)
        await d.request("presence.set", status="available")
        n = await SigClient.connect(a.ws_url, b.tokens.issue_access("nurse", "n1", site="cabin-demo"))
        clients.append(n)
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        await n.event("consultation.started")

        stop(a)  # SIGKILL: no detach, no timer, no goodbye
        # proc TTL (3 heartbeats) + a sweep: the nurse's session is seen as dropped...
        await d.event("peer.connection", timeout=15, consultation_id=cid, role="nurse", state="dropped")
        # ...and after the grace, lost: the consultation ends.
        await d.event("peer.connection", timeout=10, consultation_id=cid, role="nurse", state="lost")
        ended = await d.event("consultation.ended", timeout=10, consultation__id=cid)
        assert ended["consultation"]["state"] == "ended"
        assert ended["consultation"]["end_reason"] == "connection_lost"
        await d.event("presence.changed", physician="dr-cardio", status="available")
    finally:
        for c in clients:
            await c.close()
        stop(a)
        await b.server.close()


async def test_a_session_resumed_elsewhere_is_not_ended_by_the_sweep(tmp_path: Path, redis_url: str) -> None:
    b = await start_server(sig_settings(tmp_path, "redis", redis_url, name="b", heartbeat_s=1.0,
                                        resume_grace_s=2.0))
    a = spawn_server(tmp_path / "a", redis_url, heartbeat_s=1.0, resume_grace_s=2.0)
    clients: list[SigClient] = []
    try:
        d = await SigClient.connect(b.ws_url, b.tokens.issue_access("physician", "dr-cardio"))
        clients.append(d)
        await d.request("presence.set", status="available")
        token = b.tokens.issue_access("nurse", "n1", site="cabin-demo")
        n = await SigClient.connect(a.ws_url, token)
        clients.append(n)
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        stop(a)
        await d.event("peer.connection", timeout=15, consultation_id=cid, role="nurse", state="dropped")
        n2 = await SigClient.connect(b.ws_url, token, resume=n.hello["session"])
        clients.append(n2)
        assert n2.hello["resumed"]
        await d.event("peer.connection", timeout=5, consultation_id=cid, role="nurse", state="resumed")
        # Well past the grace: still active.
        await asyncio.sleep(3.5)  # deliberately idle: proving that nothing happens needs the time
        assert not d.has_event("consultation.ended")
        got = await d.request("consultation.get", consultation_id=cid)
        assert got["consultation"]["state"] == "active"
    finally:
        for c in clients:
            await c.close()
        stop(a)
        await b.server.close()


async def _accepted_by(svc: SignallingService, cid: str, physician: str, session: str, proc: str) -> float:
    """Commit ``cid``'s accept as the process ``proc`` does, and nothing after it (it dies there):
    no effect, no journal, no room. When it was accepted."""
    got = await svc.consultations.get(cid)
    assert got is not None
    c, version = got
    assert c.state is State.OFFERED and c.offered_to == physician
    accepted = lifecycle.accept(c, physician, session, time.time(), process=proc)
    assert await svc.consultations.commit(accepted, version) is not None
    assert accepted.new.accepted_at is not None
    return accepted.new.accepted_at


def _acts(entries: list[dict[str, Any]], act: Act) -> list[dict[str, Any]]:
    return [e for e in entries if e["act"] == act.value]


async def test_an_accept_whose_process_died_before_the_start_is_started_elsewhere(tmp_path: Path,
                                                                                   redis_url: str) -> None:
    """The physician's process committed the accept and died before it journaled it, placed the room
    or started the consultation. The physician resumes on the live process: the consultation
    starts there once the dead process is known dead, each seat with its room grant, and the
    journal has the accept once, marked recovered."""
    timing = {"heartbeat_s": 1.0, "resume_grace_s": 10.0, "offer_timeout_s": 60.0}
    b = await start_server(sig_settings(tmp_path, "redis", redis_url, name="b", **timing))
    a = spawn_server(tmp_path / "a", redis_url, **timing)
    svc = b.app[SIGNALLING]
    clients: list[SigClient] = []
    try:
        token = b.tokens.issue_access("physician", "dr-cardio")
        d = await SigClient.connect(a.ws_url, token)
        clients.append(d)
        await d.request("presence.set", status="available")
        n = await SigClient.connect(b.ws_url, b.tokens.issue_access("nurse", "n1", site="cabin-demo"))
        clients.append(n)
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        record = await svc.store.get_session(d.hello["session"])
        assert record is not None and record["proc"] != svc.ctx.proc
        accepted_at = await _accepted_by(svc, cid, "dr-cardio", d.hello["session"], record["proc"])
        stop(a)  # SIGKILL right after the accept's commit: the state the dead process leaves

        # Back at once on the live process, while the dead one still looks alive: nothing to start yet.
        d2 = await SigClient.connect(b.ws_url, token, resume=d.hello["session"])
        clients.append(d2)
        assert d2.hello["resumed"]
        [mine] = [c for c in d2.hello["state"]["consultations"] if c["id"] == cid]
        room = d2.hello["state"]["rooms"].get(cid)
        if room is None:  # the usual case: started once the dead process's liveness key lapsed
            assert mine["state"] == "accepted"
            room = await d2.event("consultation.started", timeout=15, consultation__id=cid)
            assert room["consultation"]["state"] == "active"
        assert room["grant"]["role"] == "physician" and room["room_token"] and room["room"] == cid
        started = await n.event("consultation.started", timeout=15, consultation__id=cid)
        assert started["grant"]["role"] == "nurse" and started["room_token"]
        assert started["consultation"]["state"] == "active"
        # The grant works: the physician (and a reloaded page) gets the room's token.
        assert (await d2.request("room.token", consultation_id=cid))["grant"]["role"] == "physician"
        got = await n.request("consultation.get", consultation_id=cid)
        assert got["consultation"]["state"] == "active" and got["consultation"]["physician"] == "dr-cardio"

        journal = await svc.journal.read(ConsultationId(cid))
        [accept] = _acts(journal, Act.OFFER_ACCEPT)
        assert accept["actor"] == "dr-cardio" and accept["recovered_by"] == RECOVERY
        assert accept["accepted_at"] == accepted_at and accept["process"] == record["proc"]
        assert len(_acts(journal, Act.CONSULTATION_START)) == 1
        acts = [e["act"] for e in journal]
        assert acts.index(Act.OFFER_ACCEPT.value) < acts.index(Act.CONSULTATION_START.value)
        # Nothing else happens to it: no second start, and it stays active past the grace.
        await asyncio.sleep(1.5)  # deliberately idle: a second sweep and the hello's recheck would show here
        assert not n.has_event("consultation.started") and not d2.has_event("consultation.started")
        assert len(_acts(await svc.journal.read(ConsultationId(cid)), Act.CONSULTATION_START)) == 1
    finally:
        for c in clients:
            await c.close()
        stop(a)
        await b.server.close()


async def test_an_interrupted_accept_is_taken_over_by_one_process_only(tmp_path: Path, redis_url: str) -> None:
    """Two live processes race to complete an accept whose process is dead: one places the room and
    starts it, the other does nothing; one accept and one start in the journal."""
    b = await start_server(sig_settings(tmp_path, "redis", redis_url, name="b", offer_timeout_s=60.0))
    c = await start_server(sig_settings(tmp_path, "redis", redis_url, name="c", offer_timeout_s=60.0))
    svc_b, svc_c = b.app[SIGNALLING], c.app[SIGNALLING]
    clients: list[SigClient] = []
    try:
        d = await SigClient.connect(b.ws_url, b.tokens.issue_access("physician", "dr-cardio"))
        clients.append(d)
        await d.request("presence.set", status="available")
        n = await SigClient.connect(c.ws_url, b.tokens.issue_access("nurse", "n1", site="cabin-demo"))
        clients.append(n)
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        # Accepted on a process that never heartbeated here: dead as far as the store can tell.
        await _accepted_by(svc_b, cid, "dr-cardio", d.hello["session"], "gone-process")
        won = await asyncio.gather(svc_b.offers.take_over(cid), svc_c.offers.take_over(cid))
        assert sorted(x is not None for x in won) == [False, True]
        assert next(x for x in won if x is not None).state is State.ACTIVE
        await d.event("consultation.started", consultation__id=cid)
        await n.event("consultation.started", consultation__id=cid)
        assert await svc_b.offers.take_over(cid) is None  # started: nothing left to do
        journal = await svc_b.journal.read(ConsultationId(cid))
        assert len(_acts(journal, Act.OFFER_ACCEPT)) == 1 and len(_acts(journal, Act.CONSULTATION_START)) == 1
        await asyncio.sleep(0.5)  # deliberately idle: a second consultation.started would show here
        assert not d.has_event("consultation.started") and not n.has_event("consultation.started")
    finally:
        for client in clients:
            await client.close()
        await b.server.close()
        await c.server.close()
