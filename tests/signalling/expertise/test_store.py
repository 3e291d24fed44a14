"""Cases on every store (memory, SQLite, and a real redis-server): compare-and-set, indexes moved in
the same step, exactly one of many concurrent takers wins, the sweeper flags once."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import redis.asyncio as aioredis

from core.keyring import MasterKey
from core.sealing import SealingError, ValueSealer
from signalling.expertise.case import (Action, Answer, Case, CaseState, Party, Recommendation, Refused, Urgency,
                                       new_case, step)
from signalling.expertise.store import CaseStore, MemoryCaseStore, OpenedRows, RedisCaseStore, SqliteCaseStore

NOW = 1_700_000_000.123456
ANSWER = Answer(opinion="o", diagnosis="d", recommendation=Recommendation.ADVICE, follow_up="")


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CaseStore]:
    sealer = ValueSealer(MasterKey.generate())
    if request.param == "memory":
        yield MemoryCaseStore()
        return
    if request.param == "sqlite":
        sqlite = SqliteCaseStore(tmp_path, sealer)
        yield sqlite
        await sqlite.close()
        # Sealed at rest: no JSON string "p-1" (quoted: urlsafe base64, the ciphertext's alphabet, holds
        # p, - and 1, and made p-1 by chance now and then; a quote it never holds).
        assert b'"p-1"' not in (tmp_path / "expertise.sqlite3").read_bytes()
        return
    client: Any = aioredis.Redis.from_url(str(request.getfixturevalue("redis_url")), decode_responses=True)
    try:
        yield RedisCaseStore(client, "tc:", sealer)
        for key in await client.keys("tc:x[cr]*"):
            raw = await client.hgetall(key)
            assert not any('"p-1"' in v for v in raw.values())  # sealed at rest (quoted: see above)
    finally:
        await client.aclose()


def case(cid: str = "x1", due_shift: float = 0.0, **changes: Any) -> Case:
    base = new_case(id=cid, site="ehpad-demo", requested_by="nurse-1", patient_ref="p-1", specialty="dermatology",
                    urgency=Urgency.STANDARD, questionnaire="dermatology@1", answers={}, consent=True,
                    now=NOW + due_shift)
    return dataclasses.replace(base, **changes)


async def put(store: CaseStore, c: Case) -> None:
    await store.create(c.id, c.to_dict(), c.row().to_dict(), c.indexes())


async def test_create_get_and_compare_and_set(store: CaseStore) -> None:
    c = case()
    await put(store, c)
    with pytest.raises(KeyError):
        await put(store, c)
    got = await store.get("x1")
    assert got is not None and got.version == 1 and Case.from_dict(got.doc) == c
    submitted = step(c, Action.SUBMIT, Party.REQUESTER, "nurse-1", NOW + 5).new
    assert await store.update("x1", 1, submitted.to_dict(), submitted.row().to_dict(), submitted.indexes()) == 2
    assert await store.update("x1", 1, c.to_dict(), c.row().to_dict(), c.indexes()) is None  # stale
    got = await store.get("x1")
    assert got is not None and Case.from_dict(got.doc).state is CaseState.SUBMITTED
    assert await store.get("nope") is None
    assert [v.doc["id"] for v in await store.get_many(["nope", "x1"])] == ["x1"]
    assert [r["state"] for r in await store.rows(["nope", "x1"])] == ["submitted"]


async def test_indexes_follow_the_case(store: CaseStore) -> None:
    c = step(case(), Action.SUBMIT, Party.REQUESTER, "nurse-1", NOW).new
    await put(store, c)
    assert await store.index("pool:dermatology", 10) == ["x1"]
    assert await store.index("open", 10, until=c.due_at) == ["x1"]
    assert await store.index("open", 10, until=c.due_at - 1) == []  # exact scores (not 14 digits)
    taken = step(c, Action.TAKE, Party.POOL, "dr-derma", NOW).new
    assert await store.update("x1", 1, taken.to_dict(), taken.row().to_dict(), taken.indexes()) == 2
    assert await store.index("pool:dermatology", 10) == []
    assert await store.index("expert:dr-derma", 10) == ["x1"]
    assert await store.count("site:ehpad-demo") == 1
    answered = step(taken, Action.ANSWER, Party.EXPERT, "dr-derma", NOW + 10, answer=ANSWER).new
    closed = step(answered, Action.CLOSE, Party.REQUESTER, "nurse-1", NOW + 20).new
    assert await store.update("x1", 2, closed.to_dict(), closed.row().to_dict(), closed.indexes()) == 3
    # Over: out of the open lists, into the history (most recent first).
    assert await store.index("expert:dr-derma", 10) == [] and await store.index("site:ehpad-demo", 10) == []
    assert await store.index("expert_done:dr-derma", 10) == ["x1"]
    assert await store.index("site_done:ehpad-demo", 10) == ["x1"]


async def test_index_order_is_the_due_date(store: CaseStore) -> None:
    for i, shift in enumerate([300.0, 100.0, 200.0]):
        await put(store, case(f"x{i}", due_shift=shift))
    assert await store.index("site:ehpad-demo", 10) == ["x1", "x2", "x0"]
    assert await store.index("site:ehpad-demo", 2) == ["x1", "x2"]


async def test_exactly_one_taker_wins(store: CaseStore) -> None:
    await put(store, step(case(), Action.SUBMIT, Party.REQUESTER, "nurse-1", NOW).new)

    async def take(expert: str) -> str:
        for _ in range(50):
            got = await store.get("x1")
            assert got is not None
            try:
                new = step(Case.from_dict(got.doc), Action.TAKE, Party.POOL, expert, NOW).new
            except Refused:
                return "lost"
            won = await store.update("x1", got.version, new.to_dict(), new.row().to_dict(), new.indexes())
            if won is not None:
                return "won"
        return "gave up"

    results = await asyncio.gather(*(take(f"dr-{i}") for i in range(20)))
    assert sorted(results).count("won") == 1 and results.count("lost") == 19


async def test_sqlite_cases_outlive_the_process(tmp_path: Path) -> None:
    sealer = ValueSealer(MasterKey.generate())
    first = SqliteCaseStore(tmp_path, sealer)
    c = step(case(), Action.SUBMIT, Party.REQUESTER, "nurse-1", NOW).new
    await put(first, c)
    await first.close()
    again = SqliteCaseStore(tmp_path, sealer)
    try:
        got = await again.get("x1")
        assert got is not None and Case.from_dict(got.doc) == c and got.version == 1
        assert await again.index("pool:dermatology", 10) == ["x1"]
    finally:
        await again.close()


def test_opened_rows_follow_the_stored_text() -> None:
    sealer = ValueSealer(MasterKey.generate())
    rows = OpenedRows(sealer, limit=2)
    first = sealer.seal_json({"state": "submitted"}, "case_rows|x1")
    assert rows.open("x1", first) == {"state": "submitted"}
    opened = rows.open("x1", first)
    opened["state"] = "changed by a caller"
    assert rows.open("x1", first) == {"state": "submitted"}  # callers get copies
    second = sealer.seal_json({"state": "answered"}, "case_rows|x1")
    assert rows.open("x1", second) == {"state": "answered"}
    with pytest.raises(SealingError):
        rows.open("x2", first)  # bound to its case
    rows.open("x3", sealer.seal_json({}, "case_rows|x3"))
    rows.open("x4", sealer.seal_json({}, "case_rows|x4"))
    assert len(rows._opened) == 2
