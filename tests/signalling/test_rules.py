"""Matching rules, decline/timeout/disconnect paths, resume, errors on the socket; both backends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from signalling.appkeys import SIGNALLING
from tests.signalling.client import SigClient
from tests.signalling.conftest import sig_settings
from tests.signalling.test_flow import VISIT, nurse, physician
from tests.support import RunningServer, start_server


async def test_priority_specialty_language(sig: RunningServer) -> None:
    n = await nurse(sig)
    try:
        routine = (await n.request("visit.request", **{**VISIT, "priority": "routine"}))["consultation"]["id"]
        urgent = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        emergency = (await n.request("visit.request", **{**VISIT, "priority": "emergency"}))["consultation"]["id"]
        english = (await n.request("visit.request", **{**VISIT, "priority": "emergency", "specialty": "general",
                                                        "language": "es"}))["consultation"]["id"]
        # dr-general speaks only fr: the es request waits; dr-cardio gets the emergency first.
        g = await physician(sig, "dr-general")
        c = await physician(sig, "dr-cardio")
        first = await c.event("offer.received")
        assert first["consultation"]["id"] == emergency
        await c.request("offer.decline", consultation_id=emergency)
        second = await c.event("offer.received")
        assert second["consultation"]["id"] == urgent
        assert not g.has_event("offer.received")
        await c.request("offer.decline", consultation_id=urgent)
        assert (await c.event("offer.received"))["consultation"]["id"] == routine
        # A Spanish-speaking dermatologist/generalist would take the es request: dr-derma has no general.
        q = await c.request("queue.list")
        assert [x["consultation_id"] for x in q["waiting"]] == [emergency, urgent]
        assert english not in [x["consultation_id"] for x in q["waiting"]]  # not cardiology
        for cl in (g, c):
            await cl.close()
    finally:
        await n.close()


async def test_offer_timeout_passes_to_next(tmp_path: Path, backend: str, store_url: str | None) -> None:
    sig = await start_server(sig_settings(tmp_path, backend, store_url, offer_timeout_s=0.5))
    try:
        n = await nurse(sig)
        a = await physician(sig, "dr-cardio")
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await a.event("offer.received", consultation__id=cid)
        b = await physician(sig, "dr-demo")
        await a.event("offer.withdrawn", consultation_id=cid, reason="timeout")
        await b.event("offer.received", consultation__id=cid)
        # A late accept by the first physician is refused.
        await a.error("offer.accept", "not_found", consultation_id=cid)  # no longer its offer
        await b.request("offer.accept", consultation_id=cid)
        journal = await sig.app[SIGNALLING].journal.read(cid)
        assert [e["act"] for e in journal][:5] == ["visit.checkin", "consent", "offer", "offer.timeout", "offer"]
        for cl in (n, a, b):
            await cl.close()
    finally:
        await sig.server.close()


async def test_vanished_physician_and_resume(sig: RunningServer) -> None:
    n = await nurse(sig)
    a = await physician(sig, "dr-cardio")
    cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
    await a.event("offer.received", consultation__id=cid)
    b = await physician(sig, "dr-demo")
    await a.drop()  # dies without a close
    await b.event("offer.received", consultation__id=cid)
    await n.event("presence.changed", physician="dr-cardio", status="offline")
    await b.request("offer.accept", consultation_id=cid)
    # The nurse's socket drops; the physician is told; the nurse resumes with its session id.
    session = n.hello["session"]
    await n.drop()
    await b.event("peer.connection", consultation_id=cid, role="nurse", state="dropped")
    n2 = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("nurse", "nurse-1", site="cabin-demo"),
                                 resume=session)
    assert n2.hello["resumed"] is True and n2.hello["session"] == session
    assert [c["id"] for c in n2.hello["state"]["consultations"]] == [cid]
    assert cid in n2.hello["state"]["rooms"]
    await b.event("peer.connection", consultation_id=cid, role="nurse", state="resumed")
    # Another subject cannot take the session over.
    other = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("nurse", "nurse-2", site="cabin-demo"),
                                    resume=session)
    assert other.hello["resumed"] is False
    await n2.request("consultation.end", consultation_id=cid)
    for cl in (n2, b, other):
        await cl.close()


async def test_lost_physician_ends_consultation(sig: RunningServer) -> None:
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
    await d.event("offer.received")
    await d.request("offer.accept", consultation_id=cid)
    await d.drop()
    await n.event("peer.connection", consultation_id=cid, role="physician", state="dropped")
    ended = await n.event("consultation.ended", timeout=10)
    assert ended["consultation"]["end_reason"] == "connection_lost"
    await n.close()


async def test_cancel_and_site_isolation(sig: RunningServer) -> None:
    n = await nurse(sig)
    other = await nurse(sig, site="ehpad-demo", sub="nurse-9")
    d = await physician(sig, "dr-cardio")
    cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
    await d.event("offer.received")
    await other.error("visit.cancel", "not_found", consultation_id=cid)
    await other.error("consultation.get", "not_found", consultation_id=cid)
    await d.error("visit.cancel", "forbidden", consultation_id=cid)
    await n.error("offer.accept", "forbidden", consultation_id=cid)
    cancelled = await n.request("visit.cancel", consultation_id=cid)
    assert cancelled["consultation"]["state"] == "cancelled"
    await d.event("offer.withdrawn", consultation_id=cid, reason="cancelled")
    await n.error("visit.cancel", "conflict", consultation_id=cid)
    await n.error("visit.request", "bad_message", **{**VISIT, "consent_teleconsultation": False})
    await n.error("visit.request", "bad_message", **{**VISIT, "specialty": "astrology"})
    # A nurse whose token names an unknown site.
    ghost = await nurse(sig, site="nowhere", sub="n-x")
    await ghost.error("visit.request", "forbidden", **VISIT)
    for cl in (n, other, d, ghost):
        await cl.close()


async def test_errors_keep_the_connection(sig: RunningServer) -> None:
    raw = await SigClient.connect(sig.ws_url)
    await raw.error("ping", "unauthenticated")
    await raw.send("{oops")
    await raw.wait(lambda: raw.has_event("error", code="bad_json"))
    await raw.close()
    n = await nurse(sig)
    await n.send("[]")
    await n.send(json.dumps({"type": "teleport", "id": 5}))
    await n.wait(lambda: n.replies.get(5), what="unknown type error")
    assert n.replies[5]["code"] == "unknown_type"
    await n.error("presence.set", "forbidden", status="available")
    await n.error("hello", "conflict", version=1, token="x")
    await n.request("ping")
    await n.close()


async def test_deeply_nested_json_is_refused_and_the_socket_goes_on(sig: RunningServer) -> None:
    """Nesting deeper than the parser's recursion gave a RecursionError, ``HTTP/1.1 500`` written
    onto the upgraded socket, and a 500 on REST: now ``bad_json`` / 400, and both go on."""
    deep = "[" * 20000 + "]" * 20000
    raw = await SigClient.connect(sig.ws_url)
    await raw.send('{"type":"hello","id":1,"version":1,"token":' + deep + "}")
    await raw.wait(lambda: raw.has_event("error", code="bad_json"), what="bad_json before hello")
    await raw.close()
    n = await nurse(sig)
    await n.send('{"type":"ping","id":"deep","x":' + deep + "}")
    await n.wait(lambda: n.has_event("error", code="bad_json"), what="bad_json")
    assert (await n.request("ping"))["type"] == "ping.ok"
    await n.close()
    admin = sig.tokens.issue_access("admin", "root")
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
        for method, path in (("PUT", "/api/directory"), ("PUT", "/api/directory/sites/x"),
                             ("POST", "/api/consultations/c-1/recording")):
            r = await http.request(method, sig.url + path, data=deep, headers=headers)
            assert r.status == 400, (path, r.status)
            body = await r.json()
            assert body["error"] == "bad_request" and set(body) == {"error", "reason"}
        r = await http.get(sig.url + "/api/directory", headers=headers)
        assert r.status == 200


async def test_hello_rules(sig: RunningServer) -> None:
    c = await SigClient.connect(sig.ws_url)
    reply = await c.call("hello", version=1, token=sig.tokens.issue_room("r", "nurse", role="nurse"))
    assert reply["code"] == "auth_failed"
    await asyncio.wait_for(c.closed.wait(), 5)
    assert c.close_code == 4401
    await c.close()
    c = await SigClient.connect(sig.ws_url)
    assert (await c.call("hello", version=2, token="x"))["code"] == "unsupported_version"
    await c.close()
    # Origin: foreign refused, own accepted.
    async with aiohttp.ClientSession() as http:
        try:
            await http.ws_connect(sig.ws_url, headers={"Origin": "https://evil.example"})
            raise AssertionError("foreign origin accepted")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 403
        ws = await http.ws_connect(sig.ws_url, headers={"Origin": sig.url})
        await ws.close()


async def test_rate_limit_and_refresh(tmp_path: Path) -> None:
    sig = await start_server(sig_settings(tmp_path, "memory", None, max_messages_per_s=5.0))
    try:
        n = await nurse(sig)
        for i in range(30):
            await n.send({"type": "ping", "id": f"p{i}"})
        await n.wait(lambda: sum(1 for k in list(n.replies) if str(k).startswith("p")) == 30, what="30 replies")
        codes = [n.replies[f"p{i}"]["type"] if n.replies[f"p{i}"]["type"] != "error" else
                 n.replies[f"p{i}"]["code"] for i in range(30)]
        assert "rate_limited" in codes and "ping.ok" in codes
        await asyncio.sleep(0.5)
        new = sig.tokens.issue_access("nurse", "nurse-1", site="cabin-demo", ttl=3600)
        assert (await n.request("auth.refresh", token=new))["token_expires_at"] > 0
        bad = sig.tokens.issue_access("nurse", "nurse-1", site="ehpad-demo")
        await asyncio.sleep(0.5)
        await n.error("auth.refresh", "forbidden", token=bad)
        await n.close()
        # A short token: warned, then closed at expiry.
        short = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("nurse", "n2", site="cabin-demo", ttl=2))
        warn = await short.event("auth.expiring", timeout=5)
        assert warn["in_s"] <= 2
        await short.wait(lambda: short.has_event("error", code="token_expired"), 8)
        await asyncio.wait_for(short.closed.wait(), 8)
        await short.close()
    finally:
        await sig.server.close()


async def test_heartbeat_drops_dead_physician(tmp_path: Path) -> None:
    sig = await start_server(sig_settings(tmp_path, "memory", None, heartbeat_s=0.4))
    try:
        watcher = await nurse(sig)
        token = sig.tokens.issue_access("physician", "dr-cardio")
        d = await SigClient.connect(sig.ws_url, token, autoping=False)
        await d.request("presence.set", status="available")
        d.reader.cancel()  # stops reading: no pong ever goes back
        await watcher.event("presence.changed", physician="dr-cardio", status="offline", timeout=10)
        await watcher.close()
        await d.http.close()
    finally:
        await sig.server.close()
