"""Two signalling processes (two apps) on one real Redis: no double assignment under concurrent load."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import aiohttp

from core.vocabulary import ConsultationId
from signalling.appkeys import SIGNALLING
from tests.signalling.client import SigClient
from tests.signalling.conftest import sig_settings
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
        await asyncio.gather(*(nurses[i % len(nurses)].request(
            "visit.request", **{**VISIT, "priority": rng.choice(["routine", "urgent", "emergency"])})
            for i in range(total)))
        deadline = asyncio.get_running_loop().time() + 60
        while len(accepted) < total and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        for w in workers:
            w.cancel()
        assert len(accepted) == total, f"{len(accepted)} of {total} matched"
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
