"""Durable records: consultation history, reports, still metadata; they survive restarts.

* :class:`SqliteRecords` — ``<data_dir>/records.sqlite3`` (WAL, ``synchronous=FULL``),
  with the memory store. Several processes on one host may share it.
* :class:`RedisRecords` — hashes in the same Redis, with the Redis store: every
  signalling process (on any host) must read the same history, which a
  per-host SQLite file cannot give. Redis must then run with
  ``appendonly yes`` (``appendfsync always`` for an fsync per write); the store
  warns at start when it does not.

Records hold clinical data (reports, the visit's reason): they are never
logged, only read back by the parties through the API.

At rest, every JSON payload (a consultation's document with the patient's
reference and the reason, a report, a still's metadata, the patient's INS identity) is sealed by the
process's :class:`core.sealing.ValueSealer` (AES-GCM, a fresh nonce per value,
bound to ``<table>|<row key>``): ``strings records.sqlite3`` shows ids, states and
times, no clinical text; reads open them transparently. New payloads go through
``self.sealer.seal_json`` / ``open_json`` too. A SQLite file from before
encryption at rest (development data) is sealed in place when opened with a key
(:meth:`SqliteRecords.seal_clear_rows`); a Redis value in clear is refused with a
clear message (there is no production data in clear).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Protocol

from core.sealing import PREFIX as SEALED_PREFIX
from core.sealing import ValueSealer
from signalling.consultation import FINAL

logger = logging.getLogger(__name__)

CLEAR_KEY_ID = "clear"
""":meth:`RedisRecords.sealing_key` of records written in clear (``recording.encrypt = false``)."""


class Records(Protocol):
    async def save_consultation(self, doc: dict[str, Any]) -> None: ...
    async def get_consultation(self, cid: str) -> dict[str, Any] | None: ...
    async def save_report(self, cid: str, report: dict[str, Any], author: str, saved_at: float) -> None: ...
    async def get_report(self, cid: str) -> dict[str, Any] | None: ...
    async def add_still(self, still_id: str, consultation_id: str, meta: dict[str, Any]) -> None: ...
    async def stills(self, consultation_id: str) -> list[dict[str, Any]]: ...
    async def save_draft(self, cid: str, draft: dict[str, Any], author: str, saved_at: float) -> None:
        """Keep (replace) the report's draft, as the physician types."""
    async def get_draft(self, cid: str) -> dict[str, Any] | None:
        """``{report, author, saved_at}`` of the draft, or None."""
    async def delete_draft(self, cid: str) -> None: ...
    async def save_identity(self, cid: str, identity: dict[str, Any]) -> None:
        """Keep the patient's INS identity of a consultation (``signalling.patient_identity``; health data)."""
    async def get_identity(self, cid: str) -> dict[str, Any] | None: ...
    async def delete_identity(self, cid: str) -> None: ...
    async def unfinished_ids(self) -> list[str]:
        """Consultations archived in a state that is not final (for recovery at startup)."""
        ...

    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS consultations (id TEXT PRIMARY KEY, site TEXT, physician TEXT, state TEXT,
    created_at REAL, ended_at REAL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reports (consultation_id TEXT PRIMARY KEY, author TEXT, saved_at REAL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stills (id TEXT PRIMARY KEY, consultation_id TEXT NOT NULL, meta TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS stills_by_consultation ON stills (consultation_id);
CREATE TABLE IF NOT EXISTS drafts (consultation_id TEXT PRIMARY KEY, author TEXT, saved_at REAL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (consultation_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
"""

SEALED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("consultations", "id", "doc"), ("reports", "consultation_id", "doc"), ("stills", "id", "meta"),
    ("drafts", "consultation_id", "doc"), ("identities", "consultation_id", "doc"))
"""(table, row key, payload column) of every sealed payload; a new table of clinical data adds its own."""


class SqliteRecords:
    def __init__(self, data_dir: str, sealer: ValueSealer | None = None) -> None:
        path = Path(data_dir) / "records.sqlite3"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created 0600 before SQLite opens it: its -wal and -shm files take the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self.sealer = sealer or ValueSealer(None)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA secure_delete=ON")  # a replaced payload leaves no old bytes in free pages
        self.db.executescript(_SCHEMA)
        if self.sealer.encrypted:
            self.seal_clear_rows()
        self._lock = asyncio.Lock()

    def seal_clear_rows(self) -> int:
        """Seal in place the payloads written in clear (before encryption at rest), then
        rewrite the file so that no clear copy stays in it or its WAL. Returns how many."""
        sealed = 0
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for table, key, column in SEALED_COLUMNS:
                rows = self.db.execute(f"SELECT {key}, {column} FROM {table} WHERE substr({column}, 1, ?) != ?",
                                       (len(SEALED_PREFIX), SEALED_PREFIX)).fetchall()
                for row_key, raw in rows:
                    value = json.loads(raw)
                    self.db.execute(f"UPDATE {table} SET {column}=? WHERE {key}=?",
                                    (self.sealer.seal_json(value, f"{table}|{row_key}"), row_key))
                sealed += len(rows)
        if sealed:
            self.db.execute("VACUUM")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            logger.warning("sealed records written in clear", extra={"rows": sealed})
        return sealed

    async def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        async with self._lock:
            return await asyncio.to_thread(lambda: self.db.execute(sql, args).fetchall())

    async def save_consultation(self, doc: dict[str, Any]) -> None:
        await self._run(
            "INSERT INTO consultations VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
            "physician=excluded.physician, state=excluded.state, ended_at=excluded.ended_at, doc=excluded.doc",
            (doc["id"], doc["site"], doc.get("physician"), doc["state"], doc["created_at"], doc.get("ended_at"),
             self.sealer.seal_json(doc, f"consultations|{doc['id']}")))

    async def get_consultation(self, cid: str) -> dict[str, Any] | None:
        rows = await self._run("SELECT doc FROM consultations WHERE id=?", (cid,))
        return self.sealer.open_json(rows[0][0], f"consultations|{cid}") if rows else None

    async def save_report(self, cid: str, report: dict[str, Any], author: str, saved_at: float) -> None:
        await self._run("INSERT OR REPLACE INTO reports VALUES (?,?,?,?)",
                        (cid, author, saved_at, self.sealer.seal_json(report, f"reports|{cid}")))

    async def get_report(self, cid: str) -> dict[str, Any] | None:
        rows = await self._run("SELECT author, saved_at, doc FROM reports WHERE consultation_id=?", (cid,))
        if not rows:
            return None
        author, saved_at, doc = rows[0]
        return {"report": self.sealer.open_json(doc, f"reports|{cid}"), "author": author, "saved_at": saved_at}

    async def add_still(self, still_id: str, consultation_id: str, meta: dict[str, Any]) -> None:
        await self._run("INSERT OR REPLACE INTO stills VALUES (?,?,?)",
                        (still_id, consultation_id, self.sealer.seal_json(meta, f"stills|{still_id}")))

    async def stills(self, consultation_id: str) -> list[dict[str, Any]]:
        rows = await self._run("SELECT id, meta FROM stills WHERE consultation_id=? ORDER BY rowid", (consultation_id,))
        return [{"id": i, **self.sealer.open_json(m, f"stills|{i}")} for i, m in rows]

    async def save_draft(self, cid: str, draft: dict[str, Any], author: str, saved_at: float) -> None:
        await self._run("INSERT OR REPLACE INTO drafts VALUES (?,?,?,?)",
                        (cid, author, saved_at, self.sealer.seal_json(draft, f"drafts|{cid}")))

    async def get_draft(self, cid: str) -> dict[str, Any] | None:
        rows = await self._run("SELECT author, saved_at, doc FROM drafts WHERE consultation_id=?", (cid,))
        if not rows:
            return None
        author, saved_at, doc = rows[0]
        return {"report": self.sealer.open_json(doc, f"drafts|{cid}"), "author": author, "saved_at": saved_at}

    async def delete_draft(self, cid: str) -> None:
        await self._run("DELETE FROM drafts WHERE consultation_id=?", (cid,))

    async def save_identity(self, cid: str, identity: dict[str, Any]) -> None:
        await self._run("INSERT OR REPLACE INTO identities VALUES (?,?)",
                        (cid, self.sealer.seal_json(identity, f"identities|{cid}")))

    async def get_identity(self, cid: str) -> dict[str, Any] | None:
        rows = await self._run("SELECT doc FROM identities WHERE consultation_id=?", (cid,))
        return self.sealer.open_json(rows[0][0], f"identities|{cid}") if rows else None

    async def delete_identity(self, cid: str) -> None:
        await self._run("DELETE FROM identities WHERE consultation_id=?", (cid,))

    async def unfinished_ids(self) -> list[str]:
        final = sorted(s.value for s in FINAL)
        rows = await self._run(f"SELECT id FROM consultations WHERE state NOT IN ({','.join('?' * len(final))}) "
                               "ORDER BY created_at", tuple(final))
        return [str(r[0]) for r in rows]

    async def close(self) -> None:
        async with self._lock:
            self.db.close()


class RedisRecords:
    def __init__(self, redis: Any, prefix: str, sealer: ValueSealer | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.sealer = sealer or ValueSealer(None)

    async def save_consultation(self, doc: dict[str, Any]) -> None:
        await self.redis.hset(self.prefix + "rec:consultations", doc["id"],
                              self.sealer.seal_json(doc, f"consultations|{doc['id']}"))

    async def get_consultation(self, cid: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.prefix + "rec:consultations", cid)
        return self.sealer.open_json(raw, f"consultations|{cid}") if raw else None

    async def save_report(self, cid: str, report: dict[str, Any], author: str, saved_at: float) -> None:
        await self.redis.hset(self.prefix + "rec:reports", cid, self.sealer.seal_json(
            {"report": report, "author": author, "saved_at": saved_at}, f"reports|{cid}"))

    async def get_report(self, cid: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.prefix + "rec:reports", cid)
        return self.sealer.open_json(raw, f"reports|{cid}") if raw else None

    async def add_still(self, still_id: str, consultation_id: str, meta: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.prefix + f"rec:stills:{consultation_id}", still_id,
                      self.sealer.seal_json(meta, f"stills|{still_id}"))
            pipe.rpush(self.prefix + f"rec:stills-order:{consultation_id}", still_id)
            await pipe.execute()

    async def stills(self, consultation_id: str) -> list[dict[str, Any]]:
        ids = await self.redis.lrange(self.prefix + f"rec:stills-order:{consultation_id}", 0, -1)
        raw = await self.redis.hgetall(self.prefix + f"rec:stills:{consultation_id}")
        return [{"id": i, **self.sealer.open_json(raw[i], f"stills|{i}")} for i in dict.fromkeys(ids) if i in raw]

    async def save_draft(self, cid: str, draft: dict[str, Any], author: str, saved_at: float) -> None:
        await self.redis.hset(self.prefix + "rec:drafts", cid, self.sealer.seal_json(
            {"report": draft, "author": author, "saved_at": saved_at}, f"drafts|{cid}"))

    async def get_draft(self, cid: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.prefix + "rec:drafts", cid)
        return self.sealer.open_json(raw, f"drafts|{cid}") if raw else None

    async def delete_draft(self, cid: str) -> None:
        await self.redis.hdel(self.prefix + "rec:drafts", cid)

    async def save_identity(self, cid: str, identity: dict[str, Any]) -> None:
        await self.redis.hset(self.prefix + "rec:identities", cid, self.sealer.seal_json(identity, f"identities|{cid}"))

    async def get_identity(self, cid: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.prefix + "rec:identities", cid)
        return self.sealer.open_json(raw, f"identities|{cid}") if raw else None

    async def delete_identity(self, cid: str) -> None:
        await self.redis.hdel(self.prefix + "rec:identities", cid)

    async def sealing_key(self) -> str:
        """The key id every process on this Redis seals the records with: the first process to
        start names it (its master key's fingerprint, ``clear`` without encryption) and the
        others read it back. A process with another key cannot open what the others archived
        (a consultation finished on one process and read on another answered ``internal``)."""
        key = self.prefix + "rec:key-id"
        await self.redis.set(key, self.sealer.key_id or CLEAR_KEY_ID, nx=True)
        return str(await self.redis.get(key))

    async def unfinished_ids(self) -> list[str]:
        """None to recover from the records: with Redis the store lives in the same server and
        keeps every open consultation (a finished one is archived before it leaves the store);
        those of a dead process are recovered by the sweep (``Sessions.sweep``)."""
        return []

    async def close(self) -> None:
        pass
