"""Recovery after a crash, with real processes killed (SIGKILL: no cleanup) and restarted on the
same data: nothing stays open for ever, and the journal says what recovery did.

* Memory store: the consultations a crash left ``active`` (and waiting) were ``active`` for ever
  and ``consultation.end`` answered ``conflict``; now the restarted server closes them.
* Redis: the store outlives the process; the restarted one takes the dead one's sessions over
  and gives their parties the resume grace (a physician who comes back goes on), and journals it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from config.settings import AuthSettings
from core.auth import TokenService
from tests.signalling.client import SigClient
from tests.signalling.procs import SIGNING_KEY, ServerProcess, spawn_server, stop
from tests.signalling.test_flow import VISIT


def tokens(tmp_path: Path) -> TokenService:
    return TokenService(AuthSettings(signing_key=SIGNING_KEY), str(tmp_path))


async def journal(server: ServerProcess, admin: str, cid: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/consultations/{cid}/journal",
                            headers={"Authorization": f"Bearer {admin}"}) as r:
            assert r.status == 200, await r.text()
            entries: list[dict[str, Any]] = (await r.json())["entries"]
            return entries


async def start_consultation(server: ServerProcess, t: TokenService) -> tuple[SigClient, SigClient, str]:
    d = await SigClient.connect(server.ws_url, t.issue_access("physician", "dr-cardio"))
    await d.request("presence.set", status="available")
    n = await SigClient.connect(server.ws_url, t.issue_access("nurse", "nurse-1", site="cabin-demo"))
    cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
    await d.event("offer.received", consultation__id=cid)
    await d.request("offer.accept", consultation_id=cid)
    await n.event("consultation.started")
    return d, n, cid


async def test_a_crash_of_the_memory_store_is_closed_and_journaled_at_restart(tmp_path: Path) -> None:
    data, t = tmp_path / "data", tokens(tmp_path)
    admin = t.issue_access("admin", "root")
    a = spawn_server(data, None, heartbeat_s=1.0, resume_grace_s=2.0)
    clients: list[SigClient] = []
    b: ServerProcess | None = None
    try:
        d, n, live = await start_consultation(a, t)
        clients += [d, n]
        waiting = (await n.request("visit.request", **{**VISIT, "specialty": "dermatology"}))["consultation"]["id"]
        stop(a)  # SIGKILL: the memory store dies with its sessions, offers, queue and rooms
        b = spawn_server(data, None, heartbeat_s=1.0, resume_grace_s=2.0)
        d2 = await SigClient.connect(b.ws_url, t.issue_access("physician", "dr-cardio"))
        n2 = await SigClient.connect(b.ws_url, t.issue_access("nurse", "nurse-1", site="cabin-demo"))
        clients += [d2, n2]
        got = (await d2.request("consultation.get", consultation_id=live))["consultation"]
        assert (got["state"], got["end_reason"]) == ("ended", "process_crashed"), got
        got = (await n2.request("consultation.get", consultation_id=waiting))["consultation"]
        assert (got["state"], got["end_reason"]) == ("expired", "process_crashed"), got
        for cid, outcome, act in ((live, "ended", "consultation.end"), (waiting, "expired", "consultation.expire")):
            entries = await journal(b, admin, cid)
            recover = [e for e in entries if e["act"] == "consultation.recover"]
            assert len(recover) == 1 and recover[0]["outcome"] == outcome and recover[0]["actor"] == "recovery"
            assert [e["actor"] for e in entries if e["act"] == act] == ["recovery"]
        # Nothing open is left: the nurse's page shows none, and the next request is served.
        assert n2.hello["state"]["consultations"] == []
        await d2.request("presence.set", status="available")
        cid = (await n2.request("visit.request", **VISIT))["consultation"]["id"]
        await d2.event("offer.received", consultation__id=cid)
        await d2.request("offer.accept", consultation_id=cid)
        assert (await d2.request("consultation.end", consultation_id=cid))["consultation"]["state"] == "ended"
    finally:
        for c in clients:
            await c.close()
        stop(a)
        if b is not None:
            stop(b)


async def test_a_crash_on_redis_gives_the_parties_the_grace_and_journals_it(tmp_path: Path, redis_url: str) -> None:
    t = tokens(tmp_path)
    admin = t.issue_access("admin", "root")
    a = spawn_server(tmp_path / "a", redis_url, heartbeat_s=1.0, resume_grace_s=3.0)
    clients: list[SigClient] = []
    b: ServerProcess | None = None
    try:
        d, n, cid = await start_consultation(a, t)
        clients += [d, n]
        stop(a)
        b = spawn_server(tmp_path / "b", redis_url, heartbeat_s=1.0, resume_grace_s=3.0)
        # The physician comes back at once and resumes; the nurse does not.
        d2 = await SigClient.connect(b.ws_url, t.issue_access("physician", "dr-cardio"), resume=d.hello["session"])
        clients.append(d2)
        assert d2.hello["resumed"] and [c["state"] for c in d2.hello["state"]["consultations"]] == ["active"]
        await d2.event("peer.connection", timeout=15, consultation_id=cid, role="nurse", state="dropped")
        await d2.event("peer.connection", timeout=10, consultation_id=cid, role="nurse", state="lost")
        ended = await d2.event("consultation.ended", timeout=10, consultation__id=cid)
        assert ended["consultation"]["end_reason"] == "connection_lost"
        entries = await journal(b, admin, cid)
        recover = [e for e in entries if e["act"] == "consultation.recover"]
        # The nurse's session was taken over (the physician's too, if the sweep came before the resume).
        assert ("resume_grace", "nurse", "active") in [(e["outcome"], e["role"], e["previous_state"]) for e in recover]
        assert all(e["outcome"] == "resume_grace" and e["actor"] == "recovery" for e in recover), recover
        acts = [e["act"] for e in entries]
        assert acts.index("consultation.recover") < acts.index("consultation.end")
    finally:
        for c in clients:
            await c.close()
        stop(a)
        if b is not None:
            stop(b)
