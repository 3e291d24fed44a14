"""The per-specialty ordered queue the incremental matcher reads, on both stores (a real Redis)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from signalling import queue as queue_mod
from signalling.matcher import queue_order
from signalling.store import QueueOp, Store
from signalling.store.base import OfferClaim
from signalling.store.memory import MemoryStore
from signalling.store.redis import RedisStore


@pytest.fixture
async def store(backend: str, store_url: str | None) -> Any:
    s: Store = MemoryStore() if backend == "memory" else RedisStore(str(store_url), "tq:", "p1")
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def _doc(cid: str, specialty: str, priority: str, since: float) -> dict[str, Any]:
    return {"id": cid, "specialty": specialty, "priority": priority, "created_at": since, "site": "s",
            "state": "requested"}


def _entry(cid: str, specialty: str, priority: str, since: float) -> dict[str, Any]:
    return {"id": cid, "specialty": specialty, "priority": priority, "since": since, "site": "s",
            "language": None, "tried": []}


async def test_queue_order_rank_and_removal(store: Store) -> None:
    rng = random.Random(3)
    base = 1_764_000_000.0
    entries = []
    for i in range(60):
        e = _entry(f"c-{i:03d}", rng.choice(["cardiology", "general"]), rng.choice(["routine", "urgent", "emergency"]),
                   base + rng.choice([0.0, 0.5, 1.25, rng.random() * 100]))
        entries.append(e)
        await store.create_consultation(e["id"], _doc(e["id"], e["specialty"], e["priority"], e["since"]), e,
                                        ["site:s"])
    for specialty in ("cardiology", "general"):
        expected = [w.consultation_id for w in queue_order(queue_mod.waiting(e) for e in entries
                                                            if e["specialty"] == specialty)]
        assert await store.queue_ids(specialty) == expected
        assert await store.queue_ids(specialty, 2, 4) == expected[2:5]
        assert [e["id"] for e in await store.queue_entries(expected[:3])] == expected[:3]
        for i, cid in enumerate(expected[:5]):
            assert await store.queue_rank(cid, specialty) == i
    # A claim and a removal take the entry out of its specialty's order; an ADD puts it back.
    first = (await store.queue_ids("general"))[0]
    doc = _doc(first, "general", "routine", base)
    await store.set_presence("dr", {"status": "available", "session": "x", "proc": "p1"})
    version = (await store.get_consultation(first)).version  # type: ignore[union-attr]
    assert await store.claim_offer(first, version, {**doc, "state": "offered"}, "dr", base + 30, 35) is not None
    assert first not in await store.queue_ids("general")
    entry = next(e for e in entries if e["id"] == first)
    version = (await store.get_consultation(first)).version  # type: ignore[union-attr]
    assert await store.update_consultation(first, version, doc, queue=QueueOp.ADD, queue_entry=entry,
                                           release_lock_of="dr", clear_offer=True) is not None
    assert (await store.queue_ids("general"))[0] == first
    version = (await store.get_consultation(first)).version  # type: ignore[union-attr]
    await store.update_consultation(first, version, doc, queue=QueueOp.REMOVE)
    assert first not in await store.queue_ids("general") and await store.queue_rank(first, "general") is None


async def test_match_view_and_batched_claims(backend: str, store_url: str | None) -> None:
    """What one matching decision reads in one step, and a batch of claims, alike on both stores."""
    store: Store = MemoryStore() if backend == "memory" else RedisStore(str(store_url), "tmv:", "p1")
    await store.start()
    try:
        rng = random.Random(5)
        base = 1_764_000_000.0
        entries = []
        for i in range(40):
            e = _entry(f"m-{i:03d}", rng.choice(["cardiology", "general"]),
                       rng.choice(["routine", "urgent", "emergency"]), base + rng.random() * 100)
            entries.append(e)
            await store.create_consultation(e["id"], _doc(e["id"], e["specialty"], e["priority"], e["since"]), e,
                                            ["site:s"])
        order = {sp: [w.consultation_id for w in queue_order(queue_mod.waiting(e) for e in entries
                                                               if e["specialty"] == sp)]
                 for sp in ("cardiology", "general")}

        def presence(status: str, specialties: list[str], connected: bool = True) -> dict[str, Any]:
            return {"status": status, "specialties": specialties, "session": "x", "proc": "p1",
                    "connected": connected}
        await store.set_presence("dr-a", presence("available", ["cardiology"]))
        await store.set_presence("dr-b", presence("available", ["cardiology"], connected=False))
        await store.set_presence("dr-c", presence("busy", ["general"]))
        await store.set_presence("dr-d", presence("available", ["general"]))
        await store.set_presence("dr-e", presence("available", ["general"]))
        # dr-d gets an offer (locked); a stale claim in the same batch does not hold.
        head = order["general"][0]
        version = (await store.get_consultation(head)).version  # type: ignore[union-attr]
        doc = {**_doc(head, "general", "routine", base), "state": "offered"}
        assert await store.claim_offers([OfferClaim(head, version + 7, doc, "dr-e", base + 30, 35),
                                         OfferClaim(head, version, doc, "dr-d", base + 30, 35)]) == [None, version + 1]
        assert await store.offer_locks(["dr-d", "dr-e"]) == {"dr-d"}
        order["general"].remove(head)

        view = await store.match_view(physicians=["dr-a", "dr-b", "dr-c"], count=5)
        assert sorted(view.free) == ["dr-a", "dr-e"]  # not disconnected, busy or ringing
        assert view.requests == []
        assert {sp: [e["id"] for e in q] for sp, q in view.queues.items()} == {"cardiology": order["cardiology"][:5]}

        view = await store.match_view(all_free=True, count=3)
        assert {sp: [e["id"] for e in q] for sp, q in view.queues.items()} == \
            {"cardiology": order["cardiology"][:3], "general": order["general"][:3]}

        wanted = order["general"][6]
        view = await store.match_view(requests=[wanted, head, "m-missing"], count=2)
        assert [e["id"] for e in view.requests] == [wanted]  # head rings dr-d: out of the queue
        assert {sp: [e["id"] for e in q] for sp, q in view.queues.items()} == {"general": order["general"][:2]}

        view = await store.match_view(specialties=["general"], offset=3, count=4)
        assert [e["id"] for e in view.queues["general"]] == order["general"][3:7]
    finally:
        await store.close()
