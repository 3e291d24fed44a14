"""The records' clinical payloads are sealed at rest (SQLite and Redis), read back transparently."""

import sqlite3
import stat
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from core.keyring import MasterKey
from core.sealing import SealingError, ValueSealer
from signalling.records import RedisRecords, SqliteRecords

REASON = "douleur thoracique irradiant vers le bras gauche"
FINDINGS = "souffle systolique au foyer aortique"
PATIENT = "P-77-SECRET"
DOC = {"id": "c-1", "site": "cabin-demo", "physician": "dr-demo", "state": "ended", "created_at": 1.0,
       "ended_at": 2.0, "patient_ref": PATIENT, "reason": REASON}
STILL = {"device": "dermatoscope", "label": "naevus atypique dos"}
CLEAR = (REASON, FINDINGS, PATIENT, "naevus", "souffle")


def files_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


async def fill(records: SqliteRecords | RedisRecords) -> None:
    await records.save_consultation(DOC)
    await records.save_report("c-1", {"findings": FINDINGS}, "dr-demo", 3.0)
    await records.add_still("s-1", "c-1", STILL)


async def read_back(records: SqliteRecords | RedisRecords) -> None:
    assert await records.get_consultation("c-1") == DOC
    assert await records.get_report("c-1") == {"report": {"findings": FINDINGS}, "author": "dr-demo", "saved_at": 3.0}
    assert await records.stills("c-1") == [{"id": "s-1", **STILL}]


async def test_sqlite_records_hold_no_clinical_text_and_read_back(tmp_path: Path) -> None:
    sealer = ValueSealer(MasterKey.generate())
    records = SqliteRecords(str(tmp_path), sealer)
    await fill(records)
    await read_back(records)
    on_disk = files_bytes(tmp_path)  # the database, its WAL and shared memory: what `strings` would see
    for clear in CLEAR:
        assert clear.encode() not in on_disk, clear
    assert b"c-1" in on_disk and b"dr-demo" in on_disk  # ids and states stay queryable
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    await records.close()
    again = SqliteRecords(str(tmp_path), sealer)  # a restart reads them back
    await read_back(again)
    await again.close()
    with pytest.raises(SealingError, match="sealed with master key"):
        other = SqliteRecords(str(tmp_path), ValueSealer(MasterKey.generate()))
        try:
            await other.get_consultation("c-1")
        finally:
            await other.close()


async def test_a_payload_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    records = SqliteRecords(str(tmp_path), ValueSealer(MasterKey.generate()))
    await fill(records)
    await records.save_report("c-2", {"findings": "rien"}, "dr-demo", 4.0)
    records.db.execute("UPDATE reports SET doc=(SELECT doc FROM reports WHERE consultation_id='c-1') "
                       "WHERE consultation_id='c-2'")
    with pytest.raises(SealingError, match="altered or moved"):
        await records.get_report("c-2")
    await records.close()


async def test_records_written_in_clear_are_sealed_when_opened_with_a_key(tmp_path: Path) -> None:
    clear = SqliteRecords(str(tmp_path))  # development data from before encryption at rest
    await fill(clear)
    await clear.close()
    assert REASON.encode() in files_bytes(tmp_path)
    sealer = ValueSealer(MasterKey.generate())
    records = SqliteRecords(str(tmp_path), sealer)
    await read_back(records)
    await records.close()
    on_disk = files_bytes(tmp_path)
    for text in CLEAR:
        assert text.encode() not in on_disk, text
    raw = sqlite3.connect(tmp_path / "records.sqlite3")
    assert all(doc.startswith("tcs1:") for (doc,) in raw.execute("SELECT doc FROM consultations UNION ALL "
                                                                 "SELECT doc FROM reports UNION ALL "
                                                                 "SELECT meta FROM stills"))
    raw.close()


async def test_redis_records_are_sealed_too(redis_url: str) -> None:
    redis = aioredis.from_url(redis_url, decode_responses=True)
    try:
        records = RedisRecords(redis, "t:", ValueSealer(MasterKey.generate()))
        await fill(records)
        await read_back(records)
        values = [await redis.hget("t:rec:consultations", "c-1"), await redis.hget("t:rec:reports", "c-1"),
                  await redis.hget("t:rec:stills:c-1", "s-1")]
        for value in values:
            assert isinstance(value, str) and value.startswith("tcs1:")
            for text in CLEAR:
                assert text not in value
        # A value written in clear (before encryption at rest) is refused with a clear message.
        await RedisRecords(redis, "u:").save_report("c-1", {"findings": FINDINGS}, "dr-demo", 3.0)
        with pytest.raises(SealingError, match="stored in clear"):
            await RedisRecords(redis, "u:", ValueSealer(MasterKey.generate())).get_report("c-1")
    finally:
        await redis.aclose()
