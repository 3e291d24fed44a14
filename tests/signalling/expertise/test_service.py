"""Random sequences of actions by random people through the service, on both stores with their
journals (SQLite cases and a file journal with the memory store, both on Redis with Redis): states stay valid, every
step that happened is journaled once, nothing written is lost, indexes agree with the case."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from config.settings import ExpertiseSettings
from core.auth import Principal
from core.keyring import MasterKey
from core.sealing import ValueSealer
from core.vocabulary import CaseId, Role
from media.recording.vault import Vault
from signalling.directory import load_directory
from signalling.expertise.attachments import AttachmentBlobs
from signalling.expertise.case import Action, Case, CaseState, Refused
from signalling.expertise.questionnaire import Questionnaires
from signalling.expertise.service import ExpertiseService, NotFound
from signalling.expertise.store import CaseStore, RedisCaseStore, SqliteCaseStore
from signalling.journal import FileJournal, Journal, JournalKey, RedisJournal
from tests.signalling.expertise.test_attachments import jpeg
from tests.signalling.expertise.test_questionnaire import DERMA

PEOPLE = [Principal("nurse-1", Role.NURSE, "ehpad-demo"), Principal("nurse-2", Role.NURSE, "ehpad-demo"),
          Principal("nurse-9", Role.NURSE, "cabin-demo"), Principal("dr-derma", Role.PHYSICIAN),
          Principal("dr-demo", Role.PHYSICIAN), Principal("dr-cardio", Role.PHYSICIAN),
          Principal("admin-1", Role.ADMIN)]
MOVES = ["submit", "message", "take", "decline", "answer", "close", "cancel", "escalate", "close_up", "distance",
         "sweep"]
PHOTO = jpeg()
ANSWERED_AND_CLOSED = [("close_up", 0), ("distance", 1), ("submit", 0), ("take", 3), ("message", 3), ("message", 1),
                       ("answer", 3), ("close", 0)]
"""The first example: it gets to the end (a generated sequence of 8 moves ending in close may well not)."""
_counter = itertools.count()


async def scenario(tmp: Path, redis_url: str | None, moves: list[tuple[str, int]]) -> None:
    run = next(_counter)
    client: Any = aioredis.Redis.from_url(redis_url, decode_responses=True) if redis_url else None
    store: CaseStore
    journal: Journal
    sealer = ValueSealer(MasterKey.generate())
    if client is not None:
        store, journal = RedisCaseStore(client, f"r{run}:", sealer), RedisJournal(client, f"r{run}:")
    else:  # what `serve` runs with the memory store: SQLite, sealed
        store, journal = SqliteCaseStore(tmp / f"s{run}", sealer), FileJournal(str(tmp / f"j{run}"))
    clock = itertools.count(1_700_000_000, 60)
    events: list[dict[str, Any]] = []

    async def emit(targets: Any, event: dict[str, Any]) -> None:
        events.append(event)

    async def no_consultation(principal: Principal, cid: str) -> str | None:
        return None

    directory = load_directory()
    svc = ExpertiseService(store=store, journal=journal, questionnaires=Questionnaires.load(),
                           blobs=AttachmentBlobs.for_data_dir(tmp / f"d{run}", Vault(None)),
                           settings=ExpertiseSettings(), clock=lambda: float(next(clock)), emit=emit,
                           directory=lambda: directory, stills=lambda: None, consultation_site=no_consultation)
    try:
        case = await svc.create(PEOPLE[0], {"specialty": "dermatology", "patient_ref": "p-1", "consent": True,
                                            "answers": DERMA})
        steps, messages, attachments = 1, 0, 0
        for move, who_i in moves:
            who = svc.resolve(PEOPLE[who_i])
            before = (await store.get(case.id))
            assert before is not None
            try:
                if move == "sweep":
                    await svc.sweep(now=case.due_at)
                elif move == "message":
                    await svc.message(who, case.id, {"text": "a question or a reply"})
                elif move in ("close_up", "distance"):
                    await svc.add_upload(who, case.id, PHOTO, move)
                else:
                    body = {"text": "busy", "opinion": "o", "diagnosis": "d", "recommendation": "advice"}
                    await svc.act(who, case.id, Action(move), body)
            except (Refused, NotFound):
                pass
            after = await store.get(case.id)
            assert after is not None
            case = Case.from_dict(after.doc)
            if after.version != before.version:
                steps += 1
                assert after.version == before.version + 1
            old = Case.from_dict(before.doc)
            # Nothing written is lost.
            assert case.messages[:len(old.messages)] == old.messages
            assert case.attachments[:len(old.attachments)] == old.attachments
            messages, attachments = len(case.messages), len(case.attachments)
            assert case.state in CaseState
            if case.state is CaseState.ANSWERED:
                assert case.answer is not None
            in_pool = case.id in await store.index("pool:dermatology", 1000)
            assert in_pool == case.in_pool
            held = [n for n in ("expert:dr-derma", "expert:dr-demo", "expert_done:dr-derma", "expert_done:dr-demo")
                    if case.id in await store.index(n, 1000)]
            assert len(held) == (case.expert is not None)
            if held:
                assert held[0].endswith(f":{case.expert}") and ("_done" in held[0]) == case.state.final
        entries = await journal.read_about(JournalKey.case(CaseId(case.id)))
        acts = [e["act"] for e in entries if e["act"] not in ("case.access", "case.admin_view")]
        assert len(acts) == steps, (acts, steps)
        if moves == ANSWERED_AND_CLOSED:
            assert case.state is CaseState.CLOSED and acts[-1] == "case.close"
        assert acts.count("case.attach") == attachments and messages >= 0
    finally:
        await journal.close()
        await store.close()
        if client is not None:
            await client.flushdb()
            await client.aclose()


@pytest.mark.timeout(600)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(moves=ANSWERED_AND_CLOSED)
@example(moves=[("close_up", 0), ("distance", 1), ("submit", 0), ("take", 3), ("take", 4), ("decline", 3),
                ("sweep", 0), ("take", 4), ("escalate", 4), ("cancel", 0)])
@given(moves=st.lists(st.tuples(st.sampled_from(MOVES), st.integers(0, len(PEOPLE) - 1)), max_size=25))
def test_random_sequences_on_the_store(tmp_path: Path, backend: str, store_url: str | None,
                                       moves: list[tuple[str, int]]) -> None:
    asyncio.run(scenario(tmp_path, store_url, moves))
