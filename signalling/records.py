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
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any, Protocol


class Records(Protocol):
    async def save_consultation(self, doc: dict[str, Any]) -> None: ...
    async def get_consultation(self, cid: str) -> dict[str, Any] | None: ...
    async def save_report(self, cid: str, report: dict[str, Any], author: str, saved_at: float) -> None: ...
    async def get_report(self, cid: str) -> dict[str, Any] | None: ...
    async def add_still(self, still_id: str, consultation_id: str, meta: dict[str, Any]) -> None: ...
    async def stills(self, consultation_id: str) -> list[dict[str, Any]]: ...
    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS consultations (id TEXT PRIMARY KEY, site TEXT, physician TEXT, state TEXT,
    created_at REAL, ended_at REAL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reports (consultation_id TEXT PRIMARY KEY, author TEXT, saved_at REAL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stills (id TEXT PRIMARY KEY, consultation_id TEXT NOT NULL, meta TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS stills_by_consultation ON stills (consultation_id);
"""


class SqliteRecords:
    def __init__(self, data_dir: str) -> None:
        path = Path(data_dir) / "records.sqlite3"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self._lock = asyncio.Lock()

    async def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        async with self._lock:
            return await asyncio.to_thread(lambda: self.db.execute(sql, args).fetchall())

    async def save_consultation(self, doc: dict[str, Any]) -> None:
        await self._run(
            "INSERT INTO consultations VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
            "physician=excluded.physician, state=excluded.state, ended_at=excluded.ended_at, doc=excluded.doc",
            (doc["id"], doc["site"], doc.get("physician"), doc["state"], doc["created_at"], doc.get("ended_at"),
             json.dumps(doc)))

    async def get_consultation(self, cid: str) -> dict[str, Any] | None:
        rows = await self._run("SELECT doc FROM consultations WHERE id=?", (cid,))
        return json.loads(rows[0][0]) if rows else None

    async def save_report(self, cid: str, report: dict[str, Any], author: str, saved_at: float) -> None:
        await self._run("INSERT OR REPLACE INTO reports VALUES (?,?,?,?)", (cid, author, saved_at, json.dumps(report)))

    async def get_report(self, cid: str) -> dict[str, Any] | None:
        rows = await self._run("SELECT author, saved_at, doc FROM reports WHERE consultation_id=?", (cid,))
        if not rows:
            return None
        author, saved_at, doc = rows[0]
        return {"report": json.loads(doc), "author": author, "saved_at": saved_at}

    async def add_still(self, still_id: str, consultation_id: str, meta: dict[str, Any]) -> None:
        await self._run("INSERT OR REPLACE INTO stills VALUES (?,?,?)", (still_id, consultation_id, json.dumps(meta)))

    async def stills(self, consultation_id: str) -> list[dict[str, Any]]:
        rows = await self._run("SELECT id, meta FROM stills WHERE consultation_id=? ORDER BY rowid", (consultation_id,))
        return [{"id": i, **json.loads(m)} for i, m in rows]

    async def close(self) -> None:
        async with self._lock:
            self.db.close()


class RedisRecords:
    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    async def save_consultation(self, doc: dict[str, Any]) -> None:
        await self.redis.hset(self.prefix + "rec:consultations", doc["id"], json.dumps(doc))

    async def get_consultation(self, cid: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.prefix + "rec:consultations", cid)
        return json.loads(raw) if raw else None

    async def save_report(self, cid: str, report: dict[str, Any], author: str, saved_at: float) -> None:
        await self.redis.hset(self.prefix + "rec:reports", cid,
                              json.dumps({"report": report, "author": author, "saved_at": saved_at}))

    async def get_report(self, cid: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.prefix + "rec:reports", cid)
        return json.loads(raw) if raw else None

    async def add_still(self, still_id: str, consultation_id: str, meta: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.prefix + f"rec:stills:{consultation_id}", still_id, json.dumps(meta))
            pipe.rpush(self.prefix + f"rec:stills-order:{consultation_id}", still_id)
            await pipe.execute()

    async def stills(self, consultation_id: str) -> list[dict[str, Any]]:
        ids = await self.redis.lrange(self.prefix + f"rec:stills-order:{consultation_id}", 0, -1)
        raw = await self.redis.hgetall(self.prefix + f"rec:stills:{consultation_id}")
        return [{"id": i, **json.loads(raw[i])} for i in dict.fromkeys(ids) if i in raw]

    async def close(self) -> None:
        pass
