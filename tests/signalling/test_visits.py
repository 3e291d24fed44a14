"""Check-in: the journal before the answer, idempotent retries, store outages, a site's rate.

Store outages are real: Redis is cut through a proxy on loopback at an exact command of the
request (the journal's XADD, the check-in script), and the file journal of the memory store
writes onto ``/dev/full`` (ENOSPC), then both heal.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import AsyncIterator, cast

import pytest
import redis.asyncio as aioredis

from core.vocabulary import ConsultationId
from signalling.appkeys import SIGNALLING
from signalling.store.redis import _CREATE
from tests.signalling.client import SigClient
from tests.signalling.conftest import sig_settings
from tests.signalling.proxy import CuttingProxy
from tests.signalling.test_flow import VISIT, nurse, physician
from tests.support import RedisProcess, RunningServer, start_server

CHECK_IN_ACTS = ("visit.checkin", "consent")


async def acts_of(sig: RunningServer, cid: str) -> Counter[str]:
    return Counter(e["act"] for e in await sig.app[SIGNALLING].journal.read(ConsultationId(cid)))


async def assert_every_waiting_request_is_journaled(sig: RunningServer) -> list[str]:
    """The finding: a request in the queue with no visit.checkin or consent entry."""
    waiting = [e["id"] for e in await sig.app[SIGNALLING].store.waiting()]
    for cid in waiting:
        acts = await acts_of(sig, cid)
        assert all(acts[a] == 1 for a in CHECK_IN_ACTS), (cid, acts)
    return waiting


async def test_a_retry_with_the_same_request_key_never_duplicates(sig: RunningServer) -> None:
    n = await nurse(sig)
    other = await nurse(sig, sub="nurse-2")
    try:
        first = await n.request("visit.request", **VISIT, request_key="k-1")
        again = await n.request("visit.request", **VISIT, request_key="k-1")
        cid = first["consultation"]["id"]
        assert again["consultation"]["id"] == cid and again["position"] == 1
        assert await assert_every_waiting_request_is_journaled(sig) == [cid]
        await n.error("visit.request", "conflict", **{**VISIT, "patient_ref": "P-999"}, request_key="k-1")
        await n.error("visit.request", "too_large", **VISIT, request_key="k" * 65)
        # The key is the nurse's own: another nurse's k-1 is another request.
        theirs = await other.request("visit.request", **VISIT, request_key="k-1")
        assert theirs["consultation"]["id"] != cid
        # Once it is over, the same key answers with the request as it is now.
        await n.request("visit.cancel", consultation_id=cid)
        late = await n.request("visit.request", **VISIT, request_key="k-1")
        assert late["consultation"]["id"] == cid and late["consultation"]["state"] == "cancelled"
        assert (await acts_of(sig, cid))["visit.checkin"] == 1
    finally:
        for c in (n, other):
            await c.close()


@pytest.fixture
async def cut_redis(tmp_path: Path, redis_process: RedisProcess) -> AsyncIterator[tuple[RunningServer, CuttingProxy]]:
    proxy = CuttingProxy(redis_process.port)
    await proxy.start()
    sig = await start_server(sig_settings(tmp_path, "redis", proxy.url))
    try:
        yield sig, proxy
    finally:
        proxy.heal()
        await sig.server.close()
        await proxy.close()


@pytest.mark.parametrize("cut_at", ["journal", "check-in script"])
async def test_redis_cut_mid_request_answers_unavailable_and_the_retry_completes_it(
        cut_redis: tuple[RunningServer, CuttingProxy], redis_process: RedisProcess, cut_at: str) -> None:
    sig, proxy = cut_redis
    pattern = b"XADD" if cut_at == "journal" else hashlib.sha1(_CREATE.encode()).hexdigest().encode()
    direct = aioredis.from_url(redis_process.url, decode_responses=True)
    n = await nurse(sig)

    async def nothing_waits_unjournaled() -> list[str]:
        """Redis itself (not through the proxy): no request in the queue without its journal entries."""
        waiting = [str(cid) for cid in await direct.hkeys("tc:queue")]
        for cid in waiting:
            rows = cast(list[tuple[str, dict[str, str]]], await direct.xrange(f"tc:journal:{cid}"))
            acts = Counter(json.loads(fields["e"])["act"] for _, fields in rows)
            assert all(acts[a] == 1 for a in CHECK_IN_ACTS), (cid, acts)
        return waiting

    try:
        # The finding: Redis fails mid-request (answered internal, left in the queue unjournaled).
        proxy.arm(pattern)
        reply = await n.call("visit.request", timeout=60, **VISIT)
        assert proxy.cut.is_set()
        assert await nothing_waits_unjournaled() == []
        assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        proxy.heal()
        # With a request_key, the retry after the outage completes the same request, once.
        proxy.arm(pattern)
        reply = await n.call("visit.request", timeout=60, **VISIT, request_key="k-cut")
        assert proxy.cut.is_set() and reply["code"] == "unavailable", reply
        proxy.heal()
        done = await n.request("visit.request", timeout=60, **VISIT, request_key="k-cut")
        cid = done["consultation"]["id"]
        assert await nothing_waits_unjournaled() == [cid]
        acts = await acts_of(sig, cid)
        assert (acts["visit.checkin"], acts["consent"]) == (1, 1), acts
        # Served as before: the matcher offers it.
        d = await physician(sig, "dr-cardio")
        await d.event("offer.received", timeout=20, consultation__id=cid)
        await d.close()
    finally:
        await n.close()
        await direct.aclose()


async def test_a_full_disk_under_the_file_journal_answers_unavailable_and_nothing_waits_unjournaled(
        tmp_path: Path) -> None:
    """The memory store's equivalent: its journal file cannot be written (ENOSPC)."""
    sig = await start_server(sig_settings(tmp_path, "memory", None))
    journal = sig.app[SIGNALLING].journal
    fd = journal._fd  # type: ignore[attr-defined]
    saved = os.dup(fd)
    full = os.open("/dev/full", os.O_WRONLY)
    n = await nurse(sig)
    try:
        os.dup2(full, fd)  # the journal's own descriptor now writes onto a full device
        reply = await n.call("visit.request", **VISIT)
        assert await assert_every_waiting_request_is_journaled(sig) == []
        assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        reply = await n.call("visit.request", **VISIT, request_key="k-full")
        assert reply["code"] == "unavailable", reply
        os.dup2(saved, fd)
        done = await n.request("visit.request", **VISIT, request_key="k-full")
        assert await assert_every_waiting_request_is_journaled(sig) == [done["consultation"]["id"]]
    finally:
        os.dup2(saved, fd)
        for f in (saved, full):
            os.close(f)
        await n.close()
        await sig.server.close()


async def test_a_flood_of_emergencies_is_flagged_and_another_sites_real_one_goes_first(
        tmp_path: Path, backend: str, store_url: str | None) -> None:
    """One nurse sent 600 emergencies in 15 s ahead of another site's real one. Now a site above its
    rate is refused (rate_limited), except emergencies: they stay emergencies, are flagged to the
    admins (journal and event), and wait after the other sites' emergencies."""
    sig = await start_server(sig_settings(tmp_path, backend, store_url, site_requests_per_window=2,
                                          site_request_window_s=600.0))
    admin = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("admin", "root"))
    flood = await nurse(sig)
    real = await nurse(sig, site="ehpad-demo", sub="nurse-2")
    emergency = {**VISIT, "priority": "emergency"}
    try:
        within = [(await flood.request("visit.request", **emergency))["consultation"] for _ in range(2)]
        assert all(c["flag"] is None for c in within)
        flagged = [(await flood.request("visit.request", **emergency))["consultation"] for _ in range(8)]
        assert all(c["flag"] == "site_rate" and c["priority"] == "emergency" for c in flagged)
        await flood.error("visit.request", "rate_limited", **VISIT)  # urgent: refused, never queued
        for c in flagged:
            event = await admin.event("visit.flagged", consultation_id=c["id"])
            assert (event["site"], event["priority"], event["flag"]) == ("cabin-demo", "emergency", "site_rate")
        acts = await acts_of(sig, flagged[0]["id"])
        assert acts["visit.flag"] == 1 and acts["visit.checkin"] == 1
        mine = await real.request("visit.request", **emergency)
        assert mine["consultation"]["flag"] is None and mine["position"] == 3
        d = await physician(sig, "dr-cardio")
        for c in within:  # the site's emergencies within its rate came first, fairly
            await d.event("offer.received", consultation__id=c["id"])
            await d.request("offer.decline", consultation_id=c["id"])
        # Then the other site's real emergency, ahead of the whole flood.
        offer = await d.event("offer.received")
        assert offer["consultation"]["id"] == mine["consultation"]["id"]
        q = await d.request("queue.list")
        assert [x["consultation_id"] for x in q["waiting"]][:2] == [c["id"] for c in within]
        assert [x["consultation_id"] for x in q["waiting"]][2:] == [c["id"] for c in flagged]
        assert [x["flagged"] for x in q["waiting"]] == [False, False] + [True] * len(flagged)  # the admin page marks them
        await d.close()
    finally:
        for c in (admin, flood, real):
            await c.close()
        await sig.server.close()
