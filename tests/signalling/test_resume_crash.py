"""The resume grace survives the death of the process that held the socket.

A nurse's socket is on a server process that is killed (SIGKILL: no cleanup);
the other process, on the same real Redis, sees the dead process's sessions,
tells the physician the nurse dropped, and when the grace passes without a
resume ends the consultation: nothing waits forever.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

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
