"""Several signalling processes on one real Redis: no double assignment under concurrent load, nothing
lost when one of them is killed."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import aiohttp
import pytest

from core.keyring import MasterKeyError
from core.vocabulary import ConsultationId
from signalling.appkeys import SIGNALLING
from tests.signalling.client import SigClient
from tests.signalling.conftest import sig_settings
from tests.signalling.procs import shared_master_key, spawn_server, stop
from tests.signalling.test_flow import VISIT
from tests.support import start_server


async def test_two_processes_never_double_assign(tmp_path: Path, redis_url: str) -> None:
    a = await start_server(sig_settings(tmp_path, "redis", redis_url, name="a", offer_timeout_s=2.0))
    b = await start_server(sig_settings(tmp_path, "redis", redis_url, name="b", offer_timeout_s=2.0))
    servers = [a, b]
    rng = random.Random(7)
    violations: list[str] = []
    accepted: dict[str, str] = {}
    doctors = ["dr-demo", "dr-cardio"] + [f"dr-x{i}" for i in range(4)]
    total = 30
    try:
        # Physicians not in the directory carry their specialties in the token.
        phys = []
        for i, sub in enumerate(doctors):
            srv = servers[i % 2]
            c = await SigClient.connect(srv.ws_url, srv.tokens.issue_access("physician", sub, specialties=["cardiology"]))
            await c.request("presence.set", status="available")
            phys.append((sub, c))
        nurses = []
        for i in range(6):
            srv = servers[i % 2]
            nurses.append(await SigClient.connect(
                srv.ws_url, srv.tokens.issue_access("nurse", f"n{i}", site="cabin-demo")))

        async def run_physician(sub: str, c: SigClient) -> None:
            while len(accepted) < total:
                try:
                    offer = await c.event("offer.received", timeout=1)
                except AssertionError:
                    continue
                cid = offer["consultation"]["id"]
                pending = [e for e in c.events if e["type"] == "offer.received"]
                if pending:
                    violations.append(f"{sub} holds two offers")
                if rng.random() < 0.3:
                    await c.call("offer.decline", consultation_id=cid)
                    continue
                reply = await c.call("offer.accept", consultation_id=cid)
                if reply["type"] == "offer.accept.ok":
                    if cid in accepted:
                        violations.append(f"{cid} accepted twice")
                    accepted[cid] = sub
                    await asyncio.sleep(rng.random() * 0.05)
                    await c.request("consultation.end", consultation_id=cid)

        workers = [asyncio.ensure_future(run_physician(sub, c)) for sub, c in phys]
        replies = await asyncio.gather(*(nurses[i % len(nurses)].request(
            "visit.request", **{**VISIT, "priority": rng.choice(["routine", "urgent", "emergency"])})
            for i in range(total)))
        requested = [r["consultation"]["id"] for r in replies]
        deadline = asyncio.get_running_loop().time() + 60
        while len(accepted) < total and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        for w in workers:
            w.cancel()
        if len(accepted) < total:  # say why: a request every physician declined or let time out waits
            store = a.app[SIGNALLING].store
            unmatched = []
            for v in await store.get_consultations(list(requested)):
                if v.doc.get("id") not in accepted:
                    unmatched.append({k: v.doc.get(k) for k in ("id", "state", "tried", "offered_to")})
            raise AssertionError(f"{len(accepted)} of {total} matched; unmatched: {unmatched}")
        assert not violations, violations
        # The journal agrees: one accept per consultation, each offer resolved before the next.
        journal = a.app[SIGNALLING].journal
        for cid in accepted:
            acts = [e["act"] for e in await journal.read(ConsultationId(cid)) if e["act"].startswith("offer")]
            assert acts.count("offer.accept") == 1
            for prev, nxt in zip(acts, acts[1:]):
                if nxt == "offer":
                    assert prev in ("offer.decline", "offer.timeout", "offer.vanished"), acts
        for _, c in phys:
            await c.close()
        for n in nurses:
            await n.close()
    finally:
        for s in servers:
            await s.server.close()


async def test_events_cross_processes_and_resume_elsewhere(tmp_path: Path, redis_url: str) -> None:
    a = await start_server(sig_settings(tmp_path, "redis", redis_url, name="a"))
    b = await start_server(sig_settings(tmp_path, "redis", redis_url, name="b"))
    try:
        n = await SigClient.connect(a.ws_url, a.tokens.issue_access("nurse", "n1", site="cabin-demo"))
        d = await SigClient.connect(b.ws_url, b.tokens.issue_access("physician", "dr-cardio"))
        await d.request("presence.set", status="available")
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        await n.event("consultation.started")
        session = n.hello["session"]
        await n.drop()
        await d.event("peer.connection", state="dropped")
        n2 = await SigClient.connect(b.ws_url, b.tokens.issue_access("nurse", "n1", site="cabin-demo"),
                                     resume=session)
        assert n2.hello["resumed"] and [c["id"] for c in n2.hello["state"]["consultations"]] == [cid]
        await d.event("peer.connection", state="resumed")
        await asyncio.sleep(2.5)  # past the grace on process a: nothing ends
        await n2.request("ping")
        assert (await d.request("consultation.get", consultation_id=cid))["consultation"]["state"] == "active"
        await d.request("consultation.end", consultation_id=cid)
        await n2.event("consultation.ended")
        for c in (n2, d):
            await c.close()
    finally:
        await a.server.close()
        await b.server.close()


async def test_a_burst_of_hellos_on_redis_all_get_answers(tmp_path: Path, redis_url: str) -> None:
    """More simultaneous hellos than redis-py's default pool (100) allows: they queue, none fails."""


    a = await start_server(sig_settings(tmp_path, "redis", redis_url, name="a"))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            async def hello(i: int) -> str:
                ws = await http.ws_connect(a.ws_url)
                token = a.tokens.issue_access("agent", f"burst-{i}", site="ehpad-demo")
                await ws.send_str(json.dumps({"type": "hello", "id": 1, "version": 1, "token": token}))
                reply = json.loads((await ws.receive(timeout=20)).data)
                await ws.close()
                return str(reply["type"])
            replies = await asyncio.gather(*(hello(i) for i in range(160)))
        assert replies == ["hello.ok"] * 160
    finally:
        await a.server.close()


async def test_three_processes_one_killed_midway_lose_nothing(tmp_path: Path, redis_url: str) -> None:
    """Three signalling processes on one Redis (two ``teleconsult serve`` subprocesses and this one),
    nurses and physicians spread over them, decisions made concurrently on all three: no request is
    accepted twice, no physician holds two offers, and when one process is SIGKILLed midway nothing
    is lost: every request is accepted exactly once (the journal says so), those ringing on the dead
    process time out elsewhere and go to the physicians still there, and the dead process's nurse,
    back on another process, keeps hers (the process that takes a dead one's sessions over must not
    end one that resumed elsewhere meanwhile)."""
    fast = {"offer_timeout_s": 2.0, "heartbeat_s": 1.0, "resume_grace_s": 2.0, "site_requests_per_window": 0}
    b = await start_server(sig_settings(tmp_path, "redis", redis_url, name="b", **fast))
    a = spawn_server(tmp_path / "a", redis_url, **fast)
    c = spawn_server(tmp_path / "c", redis_url, **fast)
    urls = [a.ws_url, b.ws_url, c.ws_url]
    rng = random.Random(11)
    violations: list[str] = []
    accepted: dict[str, str] = {}
    requested: list[str] = []
    clients: list[SigClient] = []
    per_wave = 15
    try:
        phys = []
        for i in range(9):  # three on each process
            cl = await SigClient.connect(urls[i % 3], b.tokens.issue_access(
                "physician", f"dr-k{i}", specialties=["cardiology"]))
            clients.append(cl)
            await cl.request("presence.set", status="available")
            phys.append((f"dr-k{i}", cl))
        nurses = []
        for i in range(3):
            cl = await SigClient.connect(urls[i], b.tokens.issue_access("nurse", f"nk{i}", site="cabin-demo"))
            clients.append(cl)
            nurses.append(cl)

        async def run_physician(sub: str, cl: SigClient) -> None:
            try:
                while True:
                    try:
                        offer = await cl.event("offer.received", timeout=1)
                    except AssertionError:
                        continue
                    cid = offer["consultation"]["id"]
                    # A later offer already here: a violation if this one still rang (its accept holds);
                    # not if this one timed out meanwhile (a slow loop under load).
                    later = any(e["type"] == "offer.received" for e in cl.events)
                    if rng.random() < 0.2:
                        await cl.call("offer.decline", consultation_id=cid)
                        continue
                    reply = await cl.call("offer.accept", consultation_id=cid)
                    if reply["type"] == "offer.accept.ok":
                        if later:
                            violations.append(f"{sub} held two offers")
                        if cid in accepted:
                            violations.append(f"{cid} accepted twice")
                        accepted[cid] = sub
                        await asyncio.sleep(rng.random() * 0.05)
                        await cl.call("consultation.end", consultation_id=cid)
            except (AssertionError, ConnectionError, aiohttp.ClientError):
                return  # its process was killed

        async def wave(senders: list[SigClient]) -> None:
            replies = await asyncio.gather(*(senders[i % len(senders)].request(
                "visit.request", **{**VISIT, "priority": rng.choice(["routine", "urgent", "emergency"])})
                for i in range(per_wave)))
            requested.extend(r["consultation"]["id"] for r in replies)

        workers = [asyncio.ensure_future(run_physician(sub, cl)) for sub, cl in phys]
        loop = asyncio.get_running_loop()
        await wave(nurses)
        deadline = loop.time() + 30
        while len(accepted) < per_wave // 2 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await wave(nurses)  # the third of these checked in on a, killed while they wait and ring
        stop(a)  # SIGKILL, in the middle of decisions: no goodbye, its timers die with it
        # The nurse's page on a reconnects through the load balancer to c and resumes its session at
        # once (before the others see a dead): her waiting requests stay hers. (Had she never come
        # back, they would expire at the end of her grace, nurse_lost, by design.)
        token = b.tokens.issue_access("nurse", "nk0", site="cabin-demo")
        back = await SigClient.connect(c.ws_url, token, resume=nurses[0].hello["session"])
        clients.append(back)
        assert back.hello["resumed"] is True
        await wave(nurses[1:])
        journal = b.app[SIGNALLING].journal

        async def accepts(cid: str) -> int:
            entries = await journal.read(ConsultationId(cid))
            taken = [e["act"] for e in entries].count("offer.accept")
            # An accept that a's store commit holds but a died before journaling: the process that
            # takes a's sessions over journals the consultation's recovery, from accepted.
            if not taken and any(e["act"] == "consultation.recover" and e.get("previous_state") == "accepted"
                                 for e in entries):
                return 1
            return taken
        deadline = loop.time() + 90
        waiting = list(requested)
        while waiting and loop.time() < deadline:
            waiting = [cid for cid in waiting if await accepts(cid) == 0]
            await asyncio.sleep(0.5)
        for w in workers:
            w.cancel()
        store = b.app[SIGNALLING].store

        async def where(cid: str) -> str:
            """What became of a lost request (the store's document and the journal's acts)."""
            got = await store.get_consultation(cid)
            doc = got.doc if got else {}
            acts = [(e["act"], e.get("physician") or e.get("actor")) for e in await journal.read(ConsultationId(cid))]
            return (f"{cid}: {doc.get('state', 'gone')} offered_to={doc.get('offered_to')} "
                    f"physician={doc.get('physician')} tried={doc.get('tried')} journal={acts}")
        assert not waiting, (f"{len(waiting)} of {len(requested)} requests never accepted (lost): "
                             + "; ".join([await where(cid) for cid in waiting]))
        assert not violations, violations
        assert [cid for cid in requested if await accepts(cid) != 1] == []
    finally:
        for cl in clients:
            await cl.close()
        stop(a)
        stop(c)
        await b.server.close()


async def test_a_nurse_back_on_another_process_keeps_her_waiting_request(tmp_path: Path, redis_url: str) -> None:
    """A process dies holding a nurse's socket; her page resumes at once on another process, c. The
    process that takes the dead one's sessions over (b here: it sweeps as fast as it can, so that it
    wins) must not start a grace for the session now live on c: her request still waits after that
    grace would have passed, and is accepted once a physician comes."""
    fast = {"offer_timeout_s": 2.0, "heartbeat_s": 1.0, "resume_grace_s": 2.0}
    b = await start_server(sig_settings(tmp_path, "redis", redis_url, name="b", **fast))
    a = spawn_server(tmp_path / "a", redis_url, **fast)
    c = spawn_server(tmp_path / "c", redis_url, **fast)
    clients: list[SigClient] = []
    try:
        token = b.tokens.issue_access("nurse", "nurse-a", site="cabin-demo")
        n = await SigClient.connect(a.ws_url, token)
        clients.append(n)
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        stop(a)
        back = await SigClient.connect(c.ws_url, token, resume=n.hello["session"])
        clients.append(back)
        assert back.hello["resumed"] is True
        service = b.app[SIGNALLING]
        loop = asyncio.get_running_loop()
        until = loop.time() + 3 * fast["heartbeat_s"] + fast["resume_grace_s"] + 2.5  # a seen dead, then a grace
        while loop.time() < until:
            await service.sessions.sweep()
            await asyncio.sleep(0.05)
        acts = [e["act"] for e in await service.journal.read(ConsultationId(cid))]
        assert "consultation.expire" not in acts, acts
        stored = await service.store.get_consultation(cid)
        assert stored is not None and stored.doc["state"] == "requested"
        d = await SigClient.connect(b.ws_url, b.tokens.issue_access("physician", "dr-late", specialties=["cardiology"]))
        clients.append(d)
        await d.request("presence.set", status="available")
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        await back.event("consultation.started", consultation__id=cid)
    finally:
        for cl in clients:
            await cl.close()
        stop(a)
        stop(c)
        await b.server.close()


async def test_a_finished_consultation_reads_the_same_from_any_process(tmp_path: Path, redis_url: str) -> None:
    """Finished on one process, read on another: from the store while it is there, then from the
    records that process archived (sealed with the master key the processes share). With a key
    of each process's own, the read answered ``internal``."""
    a = await start_server(sig_settings(tmp_path, "redis", redis_url, name="a"))
    b = await start_server(sig_settings(tmp_path, "redis", redis_url, name="b"))
    clients: list[SigClient] = []
    try:
        d = await SigClient.connect(a.ws_url, a.tokens.issue_access("physician", "dr-cardio"))
        clients.append(d)
        await d.request("presence.set", status="available")
        n = await SigClient.connect(a.ws_url, a.tokens.issue_access("nurse", "n1", site="cabin-demo"))
        clients.append(n)
        other = await SigClient.connect(b.ws_url, a.tokens.issue_access("nurse", "n1", site="cabin-demo"))
        clients.append(other)
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        await d.request("consultation.end", consultation_id=cid, reason="completed")
        assert await b.app[SIGNALLING].store.get_consultation(cid) is None  # from the records from now on
        for _ in range(2):
            got = await other.request("consultation.get", consultation_id=cid)
            assert got["consultation"]["state"] == "ended" and got["consultation"]["patient_ref"]
            await asyncio.sleep(0.3)
    finally:
        for c in clients:
            await c.close()
        await a.server.close()
        await b.server.close()


async def test_a_process_with_another_master_key_is_told_at_start(tmp_path: Path, redis_url: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The records of one Redis are sealed with one key: a process whose named key is another one
    refuses to start; one on a development key of its own starts, with an error in its log."""
    a = await start_server(sig_settings(tmp_path, "redis", redis_url, name="a"))
    try:
        other_key = shared_master_key(tmp_path / "elsewhere")
        named = sig_settings(tmp_path, "redis", redis_url, name="b").replace(
            recording={"master_key_file": str(other_key)})
        with pytest.raises(MasterKeyError, match="sealed with master key"):
            await start_server(named)
        development = sig_settings(tmp_path, "redis", redis_url, name="c").replace(recording={"master_key_file": ""})
        c = await start_server(development)
        await c.server.close()
        assert any("records sealed with another master key" in r.getMessage() for r in caplog.records)
    finally:
        await a.server.close()
