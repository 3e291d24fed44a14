"""Where cases live: a versioned JSON document each, with sorted indexes.

Backends: :class:`RedisCaseStore` with the Redis store (every process on one Redis);
:class:`SqliteCaseStore` with the memory store (cases last days: they must outlive the
process, as the records do); :class:`MemoryCaseStore` for benches and tests.

Every change is a compare-and-set of the case's version that also moves the case
between its indexes (``Case.indexes``: name -> score, the due date) in the same
atomic step, so that an inbox never shows a case in a state it left. Taking a
case is one such compare-and-set: of two experts taking it at once, one wins and
the other reads it again and finds it taken (409), on Redis as on memory. The
sweeper's flag is one too: two processes flagging a case, one succeeds.

Redis layout (prefix ``P``): ``P xc:<id>`` hash ``v`` (version), ``doc`` (JSON), ``ix``
(its index names and scores, JSON); ``P xr`` hash id -> row (the light form lists read,
JSON); ``P xi:<name>`` sorted set id -> score.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, TypeVar, cast

from core.sealing import ValueSealer
from signalling.store.base import Versioned

T = TypeVar("T")

Indexes = dict[str, float]


class CaseStore(Protocol):
    async def create(self, case_id: str, doc: dict[str, Any], row: dict[str, Any], indexes: Indexes) -> None:
        """A new case (version 1); ``KeyError`` if the id exists. ``row`` is its light form for lists."""
        ...

    async def get(self, case_id: str) -> Versioned | None: ...
    async def get_many(self, case_ids: Iterable[str]) -> list[Versioned]:
        """Those of ``case_ids`` that exist, in the same order."""
        ...

    async def update(self, case_id: str, version: int, doc: dict[str, Any], row: dict[str, Any],
                     indexes: Indexes) -> int | None:
        """Compare-and-set; the new version, or None when ``version`` is stale."""
        ...

    async def rows(self, case_ids: Iterable[str]) -> list[dict[str, Any]]:
        """The light forms of those of ``case_ids`` that exist, in the same order (lists read
        these, not whole documents)."""
        ...

    async def index(self, name: str, limit: int, until: float | None = None) -> list[str]:
        """Up to ``limit`` ids of index ``name`` by score (lowest first), only those scored up to
        ``until`` when given."""
        ...

    async def count(self, name: str) -> int: ...
    async def close(self) -> None: ...


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class MemoryCaseStore:
    """One process's cases. Documents are kept as JSON text, as on Redis, so that no caller
    can change a stored case by mutating what it read."""

    def __init__(self) -> None:
        self._docs: dict[str, tuple[int, str, Indexes]] = {}
        self._rows: dict[str, str] = {}
        self._opened = OpenedRows(ValueSealer(None))
        self._indexes: dict[str, dict[str, float]] = {}

    async def create(self, case_id: str, doc: dict[str, Any], row: dict[str, Any], indexes: Indexes) -> None:
        if case_id in self._docs:
            raise KeyError(f"case {case_id} exists")
        self._put(case_id, 1, doc, row, indexes, {})

    def _put(self, case_id: str, version: int, doc: dict[str, Any], row: dict[str, Any], indexes: Indexes,
             old: Indexes) -> None:
        self._rows[case_id] = _dumps(row)
        for name in old.keys() - indexes.keys():
            self._indexes.get(name, {}).pop(case_id, None)
        for name, score in indexes.items():
            self._indexes.setdefault(name, {})[case_id] = float(score)
        self._docs[case_id] = (version, _dumps(doc), dict(indexes))

    async def get(self, case_id: str) -> Versioned | None:
        got = self._docs.get(case_id)
        return None if got is None else Versioned(json.loads(got[1]), got[0])

    async def get_many(self, case_ids: Iterable[str]) -> list[Versioned]:
        return [v for v in [await self.get(c) for c in case_ids] if v is not None]

    async def update(self, case_id: str, version: int, doc: dict[str, Any], row: dict[str, Any],
                     indexes: Indexes) -> int | None:
        got = self._docs.get(case_id)
        if got is None or got[0] != version:
            return None
        self._put(case_id, version + 1, doc, row, indexes, got[2])
        return version + 1

    async def rows(self, case_ids: Iterable[str]) -> list[dict[str, Any]]:
        return [self._opened.open(c, self._rows[c]) for c in case_ids if c in self._rows]

    async def index(self, name: str, limit: int, until: float | None = None) -> list[str]:
        entries = self._indexes.get(name, {})
        ranked = sorted(entries.items(), key=lambda kv: (kv[1], kv[0]))
        if until is not None:
            ranked = [kv for kv in ranked if kv[1] <= until]
        return [cid for cid, _ in ranked[:limit]]

    async def count(self, name: str) -> int:
        return len(self._indexes.get(name, {}))

    async def close(self) -> None:
        pass


_PUT = """
local v = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '0' then
  if v then return 0 end
elseif v ~= ARGV[1] then
  return 0
end
local new = cjson.decode(ARGV[3])
local old = redis.call('HGET', KEYS[1], 'ix')
if old then
  for name, _ in pairs(cjson.decode(old)) do
    if new[name] == nil then redis.call('ZREM', ARGV[4] .. 'xi:' .. name, ARGV[5]) end
  end
end
for name, score in pairs(new) do
  redis.call('ZADD', ARGV[4] .. 'xi:' .. name, score, ARGV[5])
end
local nv = (tonumber(v) or 0) + 1
redis.call('HSET', KEYS[1], 'v', nv, 'doc', ARGV[2], 'ix', ARGV[3])
redis.call('HSET', ARGV[4] .. 'xr', ARGV[5], ARGV[6])
return nv
"""
# The index keys are named inside the script (a case's index set is only known there, from
# its ``ix``): fine on one Redis, which is what the project runs; not for Redis Cluster.


def _scores(indexes: Indexes) -> str:
    # As strings: a Lua number would reach ZADD through tostring's 14 significant digits.
    return _dumps({name: repr(float(score)) for name, score in indexes.items()})


class OpenedRows:
    """Rows opened once per stored text: an inbox reads the same thousand sealed rows again and
    again, and opening them (AES-GCM, JSON) was most of its cost. Keyed by case, checked against
    the exact sealed text, so a changed row (a new nonce) is opened again; bounded."""

    def __init__(self, sealer: ValueSealer, limit: int = 20_000) -> None:
        self.sealer = sealer
        self.limit = limit
        self._opened: dict[str, tuple[str, dict[str, Any]]] = {}

    def open(self, case_id: str, text: str) -> dict[str, Any]:
        got = self._opened.get(case_id)
        if got is not None and got[0] == text:
            return dict(got[1])
        value: dict[str, Any] = self.sealer.open_json(text, f"case_rows|{case_id}")
        if len(self._opened) >= self.limit:
            self._opened.pop(next(iter(self._opened)))
        self._opened[case_id] = (text, value)
        return dict(value)


class RedisCaseStore:
    """Cases shared by every process on one Redis (the signalling store's connection). Documents
    and rows are sealed like the Redis records (``core.sealing``, bound to their case): cases
    hold clinical data for days."""

    def __init__(self, redis: Any, prefix: str, sealer: ValueSealer | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.sealer = sealer or ValueSealer(None)
        self._rows = OpenedRows(self.sealer)
        self._put = redis.register_script(_PUT)

    def _key(self, case_id: str) -> str:
        return f"{self.prefix}xc:{case_id}"

    async def _cas(self, case_id: str, version: int, doc: dict[str, Any], row: dict[str, Any],
                   indexes: Indexes) -> int:
        return int(await self._put(keys=[self._key(case_id)], args=[
            str(version), self.sealer.seal_json(doc, f"cases|{case_id}"), _scores(indexes), self.prefix, case_id,
            self.sealer.seal_json(row, f"case_rows|{case_id}")]))

    async def create(self, case_id: str, doc: dict[str, Any], row: dict[str, Any], indexes: Indexes) -> None:
        if not await self._cas(case_id, 0, doc, row, indexes):
            raise KeyError(f"case {case_id} exists")

    async def get(self, case_id: str) -> Versioned | None:
        v, doc = await self.redis.hmget(self._key(case_id), ["v", "doc"])
        return None if v is None else Versioned(self.sealer.open_json(doc, f"cases|{case_id}"), int(v))

    async def get_many(self, case_ids: Iterable[str]) -> list[Versioned]:
        ids = list(case_ids)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hmget(self._key(cid), ["v", "doc"])
            rows = await pipe.execute()
        return [Versioned(self.sealer.open_json(doc, f"cases|{cid}"), int(v))
                for cid, (v, doc) in zip(ids, rows) if v is not None]

    async def update(self, case_id: str, version: int, doc: dict[str, Any], row: dict[str, Any],
                     indexes: Indexes) -> int | None:
        return await self._cas(case_id, version, doc, row, indexes) or None

    async def rows(self, case_ids: Iterable[str]) -> list[dict[str, Any]]:
        ids = list(case_ids)
        if not ids:
            return []
        # One HMGET of one hash: a thousand rows in one command and one reply.
        found = await self.redis.hmget(f"{self.prefix}xr", ids)
        return [self._rows.open(cid, r) for cid, r in zip(ids, found) if r is not None]

    async def index(self, name: str, limit: int, until: float | None = None) -> list[str]:
        key = f"{self.prefix}xi:{name}"
        if until is None:
            return list(cast(list[str], await self.redis.zrange(key, 0, limit - 1)))
        return list(cast(list[str], await self.redis.zrangebyscore(key, "-inf", repr(until), start=0, num=limit)))

    async def count(self, name: str) -> int:
        return int(await self.redis.zcard(f"{self.prefix}xi:{name}"))

    async def close(self) -> None:
        pass  # the connection is the signalling store's


_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (id TEXT PRIMARY KEY, version INTEGER NOT NULL, doc TEXT NOT NULL,
                                  row TEXT NOT NULL, ix TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS case_index (name TEXT NOT NULL, id TEXT NOT NULL, score REAL NOT NULL,
                                       PRIMARY KEY (name, id));
CREATE INDEX IF NOT EXISTS case_index_order ON case_index (name, score, id);
"""


class SqliteCaseStore:
    """Cases that outlive the process with the memory store: ``<data_dir>/expertise.sqlite3``
    (WAL, ``synchronous=FULL``; several processes on one host may share it, each compare-and-set
    is one ``BEGIN IMMEDIATE`` transaction). Documents and rows hold clinical data (the patient's
    reference, answers, the thread): they are sealed by the records' sealer, bound to their case."""

    def __init__(self, data_dir: str | Path, sealer: ValueSealer) -> None:
        path = Path(data_dir) / "expertise.sqlite3"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # 0600 before SQLite (and its WAL) open it
        self.sealer = sealer
        self._rows = OpenedRows(sealer)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA secure_delete=ON")
        self.db.executescript(_SCHEMA)
        self._lock = asyncio.Lock()

    async def _run(self, work: Callable[[], T]) -> T:
        async with self._lock:
            return await asyncio.to_thread(work)

    def _put(self, case_id: str, version: int, doc: dict[str, Any], row: dict[str, Any], indexes: Indexes) -> int:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            got = self.db.execute("SELECT version, ix FROM cases WHERE id=?", (case_id,)).fetchone()
            if (got is None) != (version == 0) or (got is not None and got[0] != version):
                return 0
            for name in set(json.loads(got[1]) if got else {}) - indexes.keys():
                self.db.execute("DELETE FROM case_index WHERE name=? AND id=?", (name, case_id))
            self.db.executemany("INSERT OR REPLACE INTO case_index VALUES (?,?,?)",
                                [(name, case_id, float(score)) for name, score in indexes.items()])
            self.db.execute("INSERT OR REPLACE INTO cases VALUES (?,?,?,?,?)", (
                case_id, version + 1, self.sealer.seal_json(doc, f"cases|{case_id}"),
                self.sealer.seal_json(row, f"case_rows|{case_id}"), _dumps(sorted(indexes))))
            return version + 1

    async def create(self, case_id: str, doc: dict[str, Any], row: dict[str, Any], indexes: Indexes) -> None:
        if not await self._run(lambda: self._put(case_id, 0, doc, row, indexes)):
            raise KeyError(f"case {case_id} exists")

    async def get(self, case_id: str) -> Versioned | None:
        got = await self._run(lambda: self.db.execute("SELECT version, doc FROM cases WHERE id=?",
                                                      (case_id,)).fetchone())
        return None if got is None else Versioned(self.sealer.open_json(got[1], f"cases|{case_id}"), int(got[0]))

    async def get_many(self, case_ids: Iterable[str]) -> list[Versioned]:
        return [v for v in [await self.get(c) for c in case_ids] if v is not None]

    async def update(self, case_id: str, version: int, doc: dict[str, Any], row: dict[str, Any],
                     indexes: Indexes) -> int | None:
        if version < 1:
            return None
        return await self._run(lambda: self._put(case_id, version, doc, row, indexes)) or None

    async def rows(self, case_ids: Iterable[str]) -> list[dict[str, Any]]:
        ids = list(case_ids)

        def read() -> dict[str, str]:
            found: dict[str, str] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(self.db.execute(f"SELECT id, row FROM cases WHERE id IN ({marks})", chunk).fetchall())
            return found
        found = await self._run(read)
        return [self._rows.open(c, found[c]) for c in ids if c in found]

    async def index(self, name: str, limit: int, until: float | None = None) -> list[str]:
        def read() -> list[str]:
            if until is None:
                rows = self.db.execute("SELECT id FROM case_index WHERE name=? ORDER BY score, id LIMIT ?",
                                       (name, limit)).fetchall()
            else:
                rows = self.db.execute("SELECT id FROM case_index WHERE name=? AND score<=? ORDER BY score, id "
                                       "LIMIT ?", (name, until, limit)).fetchall()
            return [r[0] for r in rows]
        return await self._run(read)

    async def count(self, name: str) -> int:
        return int(await self._run(lambda: self.db.execute("SELECT count(*) FROM case_index WHERE name=?",
                                                           (name,)).fetchone()[0]))

    async def close(self) -> None:
        await self._run(self.db.close)
