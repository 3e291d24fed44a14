"""The due-date sweeper with two server processes on one Redis: every overdue case is flagged
(journaled, opened to the pool) exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from config.settings import AuthSettings
from core.auth import TokenService
from core.vocabulary import CaseId
from signalling.journal import JournalKey, RedisJournal
from tests.signalling.expertise.test_attachments import jpeg
from tests.signalling.expertise.test_http import new_case
from tests.signalling.procs import SIGNING_KEY, spawn_server, stop
from tests.support import wait_for

CASES = 12


async def test_two_processes_flag_each_case_once(tmp_path: Path, redis_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Every urgent case (due in 48 h) is within the warning window as soon as it is submitted.
    monkeypatch.setenv("TELECONSULT_EXPERTISE__SWEEP_INTERVAL_S", "0.05")
    monkeypatch.setenv("TELECONSULT_EXPERTISE__DUE_WARNING_S", str(3 * 86400))
    servers = [spawn_server(tmp_path / "data", redis_url), spawn_server(tmp_path / "data", redis_url)]
    tokens = TokenService(AuthSettings(signing_key=SIGNING_KEY), str(tmp_path))
    nurse = {"Authorization": f"Bearer {tokens.issue_access('nurse', 'nurse-1', site='ehpad-demo')}"}
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    journal = RedisJournal(client, "tc:")
    try:
        ids = []
        async with aiohttp.ClientSession() as http:
            for i in range(CASES):
                base = servers[i % 2].url + "/api/expertise"
                async with http.post(base, json=new_case(urgency="urgent"), headers=nurse) as r:
                    assert r.status == 201, await r.text()
                    cid = (await r.json())["id"]
                for view in ("close_up", "distance"):
                    async with http.post(f"{base}/{cid}/attachments?view={view}", data=jpeg(),
                                         headers={**nurse, "Content-Type": "image/jpeg"}) as r:
                        assert r.status == 201
                async with http.post(f"{base}/{cid}/submit", headers=nurse) as r:
                    assert r.status == 200
                ids.append(cid)

        async def flagged() -> list[int]:
            counts = []
            for cid in ids:
                entries = await journal.read_about(JournalKey.case(CaseId(cid)))
                counts.append(sum(1 for e in entries if e["act"] == "case.overdue"))
            return counts

        await wait_for(lambda: _all_flagged(flagged), timeout=20, what="every case flagged")
        await asyncio.sleep(0.5)  # both sweepers keep running: still once each
        assert await flagged() == [1] * CASES
    finally:
        for server in servers:
            stop(server)
        await client.aclose()


async def _all_flagged(flagged) -> bool:  # type: ignore[no-untyped-def]
    return all(n >= 1 for n in await flagged())
