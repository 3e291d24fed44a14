"""The audit journal on both backends: only the acts of core.vocabulary.Act, entries
read back by their subject (a consultation, a télé-expertise case)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import redis.asyncio as aioredis

from core.vocabulary import Act, CaseId, ConsultationId, JournalSubject
from signalling.journal import FileJournal, Journal, JournalError, JournalKey, RedisJournal

PREFIX = "tc:"
CID = ConsultationId("c-0123456789abcdef")
CASE = CaseId("k-42")


@pytest.fixture(params=["file", "redis"])
def journal_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def journal_redis_url(request: pytest.FixtureRequest, journal_backend: str) -> str | None:
    return str(request.getfixturevalue("redis_url")) if journal_backend == "redis" else None


@pytest.fixture
async def journal(journal_redis_url: str | None, tmp_path: Path) -> AsyncIterator[Journal]:
    clock = iter(range(1000, 2000))
    if journal_redis_url is None:
        file_journal = FileJournal(str(tmp_path), clock=lambda: float(next(clock)))
        try:
            yield file_journal
        finally:
            await file_journal.close()
        return
    client = aioredis.from_url(journal_redis_url, decode_responses=True)
    try:
        yield RedisJournal(client, PREFIX, clock=lambda: float(next(clock)))
    finally:
        await client.aclose()


async def test_every_act_is_accepted_and_stored_by_its_value(journal: Journal) -> None:
    for act in Act:
        entry = await journal.append(act, actor="n1", consultation_id=CID)
        assert entry["act"] == act.value and type(entry["act"]) is str
    assert [e["act"] for e in await journal.read(CID)] == [a.value for a in Act]


async def test_an_act_outside_the_vocabulary_is_refused(journal: Journal) -> None:
    for act in ("visit.checkout", "Offer", "offer.", "", "recording access"):
        with pytest.raises(JournalError, match="unknown journal act"):
            await journal.append(act, actor="n1", consultation_id=CID)  # type: ignore[arg-type]
    # A known act given as its plain string (a value read back from the wire) is that act.
    entry = await journal.append("offer.accept", actor="dr-1", consultation_id=CID)  # type: ignore[arg-type]
    assert entry["act"] == "offer.accept"
    assert [e["act"] for e in await journal.read(CID)] == ["offer.accept"]


async def test_consultation_entries_keep_their_shape(journal: Journal) -> None:
    entry = await journal.append(Act.OFFER, actor="matcher", consultation_id=CID, physician="dr-1", offer_seq=1)
    assert entry == {"ts": 1000.0, "act": "offer", "actor": "matcher", "consultation_id": CID,
                     "physician": "dr-1", "offer_seq": 1}
    assert list(entry) == ["ts", "act", "actor", "consultation_id", "physician", "offer_seq"]
    # Same entry read by consultation id, or through its key.
    assert await journal.read(CID) == [entry]
    assert await journal.read_about(JournalKey.consultation(CID)) == [entry]
    # No consultation: recorded, read back by nothing.
    renewal = await journal.append(Act.AUTH_RENEW, actor="n1", role="nurse")
    assert renewal["consultation_id"] is None
    assert await journal.read(CID) == [entry]


async def test_entries_are_read_back_by_their_subject(journal: Journal) -> None:
    other = CaseId("k-43")
    opened = await journal.append_about(JournalKey.case(CASE), Act.JOURNAL_READ, actor="dr-1")
    assert opened == {"ts": 1000.0, "act": "journal.read", "actor": "dr-1", "consultation_id": None,
                      "case_id": CASE}
    both = await journal.append_about(JournalKey.case(CASE), Act.REPORT_SAVE, actor="dr-1", consultation_id=CID)
    await journal.append_about(JournalKey.case(other), Act.REPORT_SAVE, actor="dr-2")
    await journal.append(Act.CONSENT, actor="n1", consultation_id=CID)

    assert await journal.read_about(JournalKey.case(CASE)) == [opened, both]
    assert [e["actor"] for e in await journal.read_about(JournalKey(JournalSubject.CASE, other))] == ["dr-2"]
    assert [e["act"] for e in await journal.read(CID)] == ["report.save", "consent"]
    # A case id that happens to equal a consultation id is still a different subject.
    assert await journal.read_about(JournalKey.case(CaseId(CID))) == []
    assert await journal.read(ConsultationId(CASE)) == []
    # A principal is a subject too.
    renewal = await journal.append_about(JournalKey(JournalSubject.PRINCIPAL, "n1"), Act.AUTH_RENEW, actor="n1")
    assert await journal.read_about(JournalKey(JournalSubject.PRINCIPAL, "n1")) == [renewal]


async def test_subjects_are_named_only_through_keys(journal: Journal) -> None:
    with pytest.raises(JournalError, match="'case_id' may not go"):
        await journal.append(Act.REPORT_SAVE, actor="dr-1", case_id="k-1")
    with pytest.raises(JournalError, match="two different consultations"):
        await journal.append_about(JournalKey.consultation(ConsultationId("c-other")), Act.CONSENT, actor="n1",
                                   consultation_id=CID)
    same = await journal.append_about(JournalKey.consultation(CID), Act.CONSENT, actor="n1")
    assert same["consultation_id"] == CID and await journal.read(CID) == [same]
    with pytest.raises(JournalError, match="a subject is an id"):
        await journal.append_about(JournalKey.case(CaseId("x" * 129)), Act.CONSENT, actor="n1")
    with pytest.raises(JournalError, match="may not go in the journal"):
        await journal.append(Act.REPORT_SAVE, actor="dr-1", consultation_id=CID, report="clinical text")


async def test_file_layout(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path), clock=lambda: 1.0)
    try:
        await journal.append(Act.CONSENT, actor="n1", consultation_id=CID, teleconsultation=True)
        await journal.append_about(JournalKey.case(CASE), Act.REPORT_SAVE, actor="dr-1")
    finally:
        await journal.close()
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert lines == [
        '{"ts":1.0,"act":"consent","actor":"n1","consultation_id":"c-0123456789abcdef","teleconsultation":true}',
        '{"ts":1.0,"act":"report.save","actor":"dr-1","consultation_id":null,"case_id":"k-42"}',
    ]


async def test_redis_stream_layout(redis_url: str) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        journal = RedisJournal(client, PREFIX, clock=lambda: 1.0)
        consent = await journal.append(Act.CONSENT, actor="n1", consultation_id=CID)
        case = await journal.append_about(JournalKey.case(CASE), Act.REPORT_SAVE, actor="dr-1")
        renewal = await journal.append(Act.AUTH_RENEW, actor="n1")

        async def stream(key: str) -> list[dict[str, Any]]:
            # redis types replies as bytes | str whatever decode_responses says.
            rows: Any = await client.xrange(key)
            return [json.loads(fields["e"]) for _, fields in rows]

        # Consultation streams are where entries written before subjects existed are.
        assert await stream(f"{PREFIX}journal:{CID}") == [consent]
        assert await stream(f"{PREFIX}journal:case:{CASE}") == [case]
        assert await stream(f"{PREFIX}journal") == [consent, case, renewal]
        assert sorted(await client.keys(f"{PREFIX}*")) == sorted(
            [f"{PREFIX}journal", f"{PREFIX}journal:{CID}", f"{PREFIX}journal:case:{CASE}"])
    finally:
        await client.aclose()
