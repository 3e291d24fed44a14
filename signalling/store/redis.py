"""The Redis store: several signalling processes share queue, presence, consultations and events.

Layout (all keys under the configured prefix ``P``):

* ``P c:<id>``      hash ``v`` (version) and ``doc`` (JSON) of a consultation
* ``P queue``       hash id -> waiting entry (JSON) of requests not ringing anyone
* ``P qz:<spec>``   sorted set id -> ``signalling.queue.score``: the queue of one specialty in
  matcher order (kept by the same scripts as ``queue``)
* ``P offers``      sorted set id -> offer deadline
* ``P lock:<phys>`` string: the consultation ringing that physician (with a TTL)
* ``P open:<party>`` set of open consultation ids of ``site:<id>`` / ``user:<phys>``
* ``P presence``    hash physician -> entry (JSON: status, session, proc, ...)
* ``P proc:<id>``   a live process (TTL refreshed by the process)
* ``P sess:<id>``   a resumable session (TTL)
* ``P owned:<proc>`` set of the session ids whose socket a process holds
* ``P procs``       set of process ids that own sessions (to find dead ones)
* ``P dropped``     sorted set session id -> resume deadline (any process ends it; ZREM claims)
* ``P nodes``       hash node id -> info (JSON: url, load, draining) of SFU nodes
* ``P node:<id>``   a live node (TTL refreshed by its heartbeat)
* ``P roomnode``    hash room -> node id: where each consultation's room is placed
* ``P room:<room>`` hash ``node``, ``v`` (version) and ``doc`` (JSON): the room's state as its node
  wrote it (participants, publications); TTL of the node's heartbeat, dropped when the room is
  placed again or unplaced
* ``P directory``   the directory (JSON)
* ``P rate:<site>:<n>`` visit requests of a site in its ``n``-th window (expires after two windows)
* ``P events``      pub/sub channel of envelopes

Transitions and claims are Lua scripts: a compare-and-set of the version plus
every index change, in one atomic step (Redis runs a script alone). A matching
decision is one read script (:meth:`RedisStore.match_view`: free physicians and
queue pages) and one pipeline of claims.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable, Iterable, Sequence, cast

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from signalling.queue import score as queue_score
from signalling.store.base import Envelope, MatchView, OfferClaim, QueueOp, Versioned

logger = logging.getLogger(__name__)

_CLAIM = """
local v = redis.call('HGET', KEYS[1], 'v')
if v ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local p = redis.call('HGET', KEYS[5], ARGV[3])
if not p then return 0 end
local pe = cjson.decode(p)
if pe['status'] ~= 'available' or pe['connected'] == false then return 0 end
local nv = tonumber(v) + 1
redis.call('HSET', KEYS[1], 'v', nv, 'doc', ARGV[2])
redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[4])
redis.call('HDEL', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
redis.call('SADD', KEYS[6], ARGV[6])
redis.call('ZREM', KEYS[7], ARGV[6])
return nv
"""

_MATCH_VIEW = """
local prefix, all_free = ARGV[1], ARGV[2] == '1'
local offset, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local np, nr = tonumber(ARGV[5]), tonumber(ARGV[6])
local hinted = {}
for i = 7, 6 + np do hinted[ARGV[i]] = true end
local paged = {}
local free = {}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local ph, raw = flat[i], flat[i + 1]
  -- the plain find skips decoding the many entries that are not available
  if string.find(raw, '"status":"available"', 1, true) then
    local pe = cjson.decode(raw)
    if pe['status'] == 'available' and pe['connected'] ~= false
        and redis.call('EXISTS', prefix .. 'lock:' .. ph) == 0 then
      free[#free + 1] = ph
      free[#free + 1] = raw
      if (all_free or hinted[ph]) and type(pe['specialties']) == 'table' then
        for _, sp in ipairs(pe['specialties']) do paged[sp] = true end
      end
    end
  end
end
local reqs = {}
for i = 7 + np, 6 + np + nr do
  local raw = redis.call('HGET', KEYS[2], ARGV[i])
  if raw then
    reqs[#reqs + 1] = raw
    paged[cjson.decode(raw)['specialty']] = true
  end
end
for i = 7 + np + nr, #ARGV do paged[ARGV[i]] = true end
local queues = {}
if #free == 0 then return {free, reqs, queues} end
for sp, _ in pairs(paged) do
  local ids = redis.call('ZRANGE', prefix .. 'qz:' .. sp, offset, offset + count - 1)
  local entries = {}
  for j, id in ipairs(ids) do entries[j] = redis.call('HGET', KEYS[2], id) end
  queues[#queues + 1] = sp
  queues[#queues + 1] = entries
end
return {free, reqs, queues}
"""

_UPDATE = """
local v = redis.call('HGET', KEYS[1], 'v')
if v ~= ARGV[1] then return 0 end
local nv = tonumber(v) + 1
if ARGV[9] == '1' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'v', nv, 'doc', ARGV[2])
end
if ARGV[3] == 'add' then
  redis.call('HSET', KEYS[2], ARGV[6], ARGV[4])
  redis.call('ZADD', KEYS[5], ARGV[10], ARGV[6])
elseif ARGV[3] == 'del' then
  redis.call('HDEL', KEYS[2], ARGV[6])
  redis.call('ZREM', KEYS[5], ARGV[6])
end
if ARGV[5] == '1' and redis.call('GET', KEYS[4]) == ARGV[6] then
  redis.call('DEL', KEYS[4])
end
if ARGV[8] == '1' then redis.call('ZREM', KEYS[3], ARGV[6]) end
local nr = tonumber(ARGV[7])
for i = 6, 5 + nr do redis.call('SREM', KEYS[i], ARGV[6]) end
for i = 6 + nr, #KEYS do redis.call('SADD', KEYS[i], ARGV[6]) end
return nv
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_REMOVE_PRESENCE = """
local p = redis.call('HGET', KEYS[1], ARGV[1])
if not p then return 0 end
if ARGV[2] ~= '' and cjson.decode(p)['session'] ~= ARGV[2] then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', 1, 'doc', ARGV[1])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
for i = 4, #KEYS do redis.call('SADD', KEYS[i], ARGV[3]) end
return 1
"""


_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, sid in ipairs(due) do redis.call('ZREM', KEYS[1], sid) end
return due
"""

_TAKE_OWNED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {} end
local sids = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return sids
"""


_FORGET_NODE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
return redis.call('HDEL', KEYS[2], ARGV[1])
"""


_EXPIRE_NODE = """
redis.call('DEL', KEYS[1])
local placed = redis.call('HGETALL', KEYS[2])
for i = 1, #placed, 2 do
  if placed[i + 1] == ARGV[2] then redis.call('DEL', ARGV[1] .. 'room:' .. placed[i]) end
end
return 1
"""

_PUT_ROOM_STATE = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
local held = redis.call('HMGET', KEYS[1], 'node', 'v')
if held[1] == ARGV[2] and tonumber(held[2]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'node', ARGV[2], 'v', ARGV[3], 'doc', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


MAX_CONNECTIONS = 64
"""Connections to Redis per process (pub/sub reader and pipelines included); Redis runs one
command at a time, so more would only queue there instead of here."""
POOL_WAIT_S = 20.0


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class RedisStore:
    def __init__(self, url: str, prefix: str, process_id: str) -> None:
        self.url = url
        self.prefix = prefix
        self.process_id = process_id
        # A blocking pool: a burst (hundreds of hellos at once) waits for a connection instead of
        # failing with MaxConnectionsError, redis-py's default beyond 100 connections.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_S,
                                                        decode_responses=True, health_check_interval=10)
        self._pool = pool
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        """Replies are text (``decode_responses``), which redis-py's types cannot say: hence the casts."""
        self._subscribers: list[Callable[[Envelope], None]] = []
        self._outbox: tuple[list[str], asyncio.Future[None]] | None = None
        """Envelopes of this turn of the event loop, published together (:meth:`publish`)."""
        self._flushes: set[asyncio.Future[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._claim = self.redis.register_script(_CLAIM)
        self._update = self.redis.register_script(_UPDATE)
        self._match_view = self.redis.register_script(_MATCH_VIEW)
        self._release_script = self.redis.register_script(_RELEASE)
        self._remove_presence = self.redis.register_script(_REMOVE_PRESENCE)
        self._create = self.redis.register_script(_CREATE)
        self._claim_due = self.redis.register_script(_CLAIM_DUE)
        self._take_owned = self.redis.register_script(_TAKE_OWNED)
        self._forget_node = self.redis.register_script(_FORGET_NODE)
        self._put_room_state = self.redis.register_script(_PUT_ROOM_STATE)
        self._expire_node = self.redis.register_script(_EXPIRE_NODE)

    def k(self, name: str) -> str:
        return self.prefix + name

    async def start(self) -> None:
        await self.redis.ping()
        self._reader = asyncio.create_task(self._read_events(), name="redis-events")
        await asyncio.wait_for(self._ready.wait(), 10)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
            self._reader = None
        await self.redis.aclose()
        await self._pool.disconnect()

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), 2))
        except Exception:
            return False

    # -- consultations -------------------------------------------------------
    async def create_consultation(self, cid: str, doc: dict[str, Any], queue_entry: dict[str, Any],
                                  parties: Iterable[str]) -> None:
        keys = [self.k(f"c:{cid}"), self.k("queue"), self.k(f"qz:{queue_entry['specialty']}")] + \
            [self.k(f"open:{p}") for p in parties]
        if not await self._create(keys=keys, args=[_dumps(doc), _dumps(queue_entry), cid,
                                                   repr(queue_score(queue_entry))]):
            raise KeyError(f"consultation {cid} exists")

    async def get_consultation(self, cid: str) -> Versioned | None:
        v, doc = await self.redis.hmget(self.k(f"c:{cid}"), ["v", "doc"])
        if v is None or doc is None:
            return None
        return Versioned(json.loads(doc), int(v))

    async def get_consultations(self, cids: Iterable[str]) -> list[Versioned]:
        cids = list(cids)
        if not cids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.hmget(self.k(f"c:{cid}"), ["v", "doc"])
            rows = await pipe.execute()
        return [Versioned(json.loads(doc), int(v)) for v, doc in rows if v is not None and doc is not None]

    async def update_consultation(
        self, cid: str, version: int, doc: dict[str, Any], *,
        queue: QueueOp = QueueOp.KEEP, queue_entry: dict[str, Any] | None = None,
        parties_remove: Iterable[str] = (), parties_add: Iterable[str] = (),
        release_lock_of: str | None = None, clear_offer: bool = False, delete: bool = False,
    ) -> int | None:
        remove = [self.k(f"open:{p}") for p in parties_remove]
        add = [self.k(f"open:{p}") for p in parties_add]
        keys = [self.k(f"c:{cid}"), self.k("queue"), self.k("offers"),
                self.k(f"lock:{release_lock_of or '-'}"), self.k(f"qz:{doc.get('specialty', '')}")] + remove + add
        args = [str(version), _dumps(doc), queue.value, _dumps(queue_entry or {}),
                "1" if release_lock_of else "0", cid, str(len(remove)), "1" if clear_offer else "0",
                "1" if delete else "0", repr(queue_score(queue_entry)) if queue_entry else "0"]
        result = await self._update(keys=keys, args=args)
        return int(result) or None

    async def claim_offer(self, cid: str, version: int, doc: dict[str, Any], physician: str,
                          expires_at: float, lock_ttl_s: float) -> int | None:
        keys, args = self._claim_call(OfferClaim(cid, version, doc, physician, expires_at, lock_ttl_s))
        result = await self._claim(keys=keys, args=args)
        return int(result) or None

    def _claim_call(self, c: OfferClaim) -> tuple[list[str], list[str]]:
        keys = [self.k(f"c:{c.cid}"), self.k("queue"), self.k("offers"), self.k(f"lock:{c.physician}"),
                self.k("presence"), self.k(f"open:user:{c.physician}"), self.k(f"qz:{c.doc.get('specialty', '')}")]
        args = [str(c.version), _dumps(c.doc), c.physician, str(int(c.lock_ttl_s * 1000)), repr(c.expires_at), c.cid]
        return keys, args

    async def claim_offers(self, claims: Sequence[OfferClaim]) -> list[int | None]:
        if not claims:
            return []
        calls = [self._claim_call(c) for c in claims]
        for _ in range(2):
            # EVALSHA in a plain pipeline, not the Script object: a pipeline with scripts asks
            # SCRIPT EXISTS first, a second round trip. Each claim stays atomic on its own.
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(self._claim.sha, len(keys), *keys, *args)
                try:
                    results = await pipe.execute()
                except NoScriptError:  # a restarted (or flushed) Redis: load it, then once more
                    await self.redis.script_load(_CLAIM)
                    continue
            return [int(r) or None for r in results]
        raise RuntimeError("the claim script could not be loaded")

    async def match_view(self, *, physicians: Iterable[str] = (), requests: Iterable[str] = (),
                         specialties: Iterable[str] = (), all_free: bool = False, offset: int = 0,
                         count: int = 32) -> MatchView:
        physicians, requests = list(physicians), list(requests)
        args = [self.prefix, "1" if all_free else "0", str(offset), str(count), str(len(physicians)),
                str(len(requests)), *physicians, *requests, *specialties]
        free_flat, raw_requests, queues_flat = await self._match_view(
            keys=[self.k("presence"), self.k("queue")], args=args)
        free = {str(free_flat[i]): json.loads(free_flat[i + 1]) for i in range(0, len(free_flat), 2)}
        queues = {str(queues_flat[i]): [json.loads(v) for v in queues_flat[i + 1] if v is not None]
                  for i in range(0, len(queues_flat), 2)}
        return MatchView(free, [json.loads(v) for v in raw_requests], queues)

    async def release_offer_lock(self, physician: str, cid: str) -> None:
        await self._release_script(keys=[self.k(f"lock:{physician}")], args=[cid])

    async def offer_locks(self, physicians: Iterable[str]) -> set[str]:
        physicians = list(physicians)
        if not physicians:
            return set()
        values = await self.redis.mget([self.k(f"lock:{ph}") for ph in physicians])
        return {ph for ph, v in zip(physicians, values) if v is not None}

    async def open_for(self, party: str) -> list[str]:
        return list(cast(set[str], await self.redis.smembers(self.k(f"open:{party}"))))

    async def waiting(self) -> list[dict[str, Any]]:
        return [json.loads(v) for v in (await self.redis.hvals(self.k("queue")))]

    async def queue_ids(self, specialty: str, start: int = 0, stop: int = -1) -> list[str]:
        return list(cast(list[str], await self.redis.zrange(self.k(f"qz:{specialty}"), start, stop)))

    async def queue_entries(self, cids: Iterable[str]) -> list[dict[str, Any]]:
        cids = list(cids)
        if not cids:
            return []
        return [json.loads(v) for v in await self.redis.hmget(self.k("queue"), cids) if v is not None]

    async def queue_rank(self, cid: str, specialty: str) -> int | None:
        rank = cast(int | None, await self.redis.zrank(self.k(f"qz:{specialty}"), cid))
        return None if rank is None else int(rank)

    async def due_offers(self, now: float) -> list[str]:
        return list(cast(list[str], await self.redis.zrangebyscore(self.k("offers"), "-inf", repr(now))))

    # -- presence ------------------------------------------------------------
    async def set_presence(self, physician: str, entry: dict[str, Any]) -> None:
        await self.redis.hset(self.k("presence"), physician, _dumps(entry))

    async def remove_presence(self, physician: str, session: str | None = None) -> bool:
        return bool(await self._remove_presence(keys=[self.k("presence")], args=[physician, session or ""]))

    async def presence(self, physician: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.k("presence"), physician)
        return cast(dict[str, Any], json.loads(raw)) if raw else None

    async def presences(self) -> dict[str, dict[str, Any]]:
        raw = cast(dict[str, str], await self.redis.hgetall(self.k("presence")))
        return {k: json.loads(v) for k, v in raw.items()}

    async def touch_process(self, ttl_s: float) -> None:
        await self.redis.set(self.k(f"proc:{self.process_id}"), "1", px=int(ttl_s * 1000))

    async def live_processes(self, procs: Iterable[str]) -> set[str]:
        procs = list(dict.fromkeys(procs))
        if not procs:
            return set()
        values = await self.redis.mget([self.k(f"proc:{p}") for p in procs])
        return {p for p, v in zip(procs, values) if v is not None}

    # -- sessions ------------------------------------------------------------
    async def put_session(self, sid: str, data: dict[str, Any], ttl_s: float) -> None:
        await self.redis.set(self.k(f"sess:{sid}"), _dumps(data), px=max(1, int(ttl_s * 1000)))

    async def get_session(self, sid: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.k(f"sess:{sid}"))
        return json.loads(raw) if raw else None

    async def delete_session(self, sid: str) -> None:
        await self.redis.delete(self.k(f"sess:{sid}"))

    # -- resume grace across processes ----------------------------------------
    async def own_session(self, sid: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self.k(f"owned:{self.process_id}"), sid)
            pipe.sadd(self.k("procs"), self.process_id)
            await pipe.execute()

    async def disown_session(self, sid: str) -> None:
        await self.redis.srem(self.k(f"owned:{self.process_id}"), sid)

    async def mark_dropped(self, sid: str, deadline: float) -> None:
        await self.redis.zadd(self.k("dropped"), {sid: deadline})

    async def clear_dropped(self, sid: str) -> bool:
        return bool(await self.redis.zrem(self.k("dropped"), sid))

    async def claim_due_dropped(self, now: float, limit: int = 100) -> list[str]:
        return list(await self._claim_due(keys=[self.k("dropped")], args=[repr(now), str(limit)]))

    async def orphans(self) -> list[str]:
        procs = [p for p in cast(set[str], await self.redis.smembers(self.k("procs"))) if p != self.process_id]
        out: list[str] = []
        for proc in procs:
            # Atomic: only while proc:<id> is absent (dead), and only one caller gets the set.
            out += await self._take_owned(keys=[self.k(f"proc:{proc}"), self.k(f"owned:{proc}"), self.k("procs")],
                                          args=[proc])
        return out

    # -- media nodes -------------------------------------------------------------
    async def register_node(self, node_id: str, info: dict[str, Any], ttl_s: float,
                            rooms: Iterable[str] = ()) -> None:
        ttl_ms = max(1, int(ttl_s * 1000))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.k("nodes"), node_id, _dumps(info))
            pipe.set(self.k(f"node:{node_id}"), "1", px=ttl_ms)
            for room in rooms:
                pipe.pexpire(self.k(f"room:{room}"), ttl_ms)
            await pipe.execute()

    async def nodes(self) -> dict[str, dict[str, Any]]:
        raw = cast(dict[str, str], await self.redis.hgetall(self.k("nodes")))
        if not raw:
            return {}
        ids = list(raw)
        alive = await self.redis.mget([self.k(f"node:{nid}") for nid in ids])
        return {nid: {**json.loads(raw[nid]), "alive": a is not None} for nid, a in zip(ids, alive)}

    async def expire_node(self, node_id: str) -> None:
        # With its rooms' state documents, in one step (a rare event: the placements are read whole).
        await self._expire_node(keys=[self.k(f"node:{node_id}"), self.k("roomnode")], args=[self.prefix, node_id])

    async def forget_node(self, node_id: str) -> bool:
        return bool(await self._forget_node(keys=[self.k(f"node:{node_id}"), self.k("nodes")], args=[node_id]))

    async def place_room(self, room: str, node_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.k("roomnode"), room, node_id)
            pipe.delete(self.k(f"room:{room}"))
            await pipe.execute()

    async def room_node(self, room: str) -> str | None:
        value = await self.redis.hget(self.k("roomnode"), room)
        return str(value) if value is not None else None

    async def unplace_room(self, room: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.k("roomnode"), room)
            pipe.delete(self.k(f"room:{room}"))
            await pipe.execute()

    async def put_room_state(self, room: str, node_id: str, version: int, doc: dict[str, Any],
                             ttl_s: float) -> bool:
        return bool(await self._put_room_state(
            keys=[self.k(f"room:{room}"), self.k("roomnode")],
            args=[room, node_id, str(version), _dumps(doc), str(max(1, int(ttl_s * 1000)))]))

    async def room_state(self, room: str) -> Versioned | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.k("roomnode"), room)
            pipe.hmget(self.k(f"room:{room}"), ["node", "v", "doc"])
            placed, (node, v, doc) = await pipe.execute()
        if placed is None or node != placed or v is None or doc is None:
            return None
        return Versioned(json.loads(doc), int(v))

    async def placements(self) -> dict[str, str]:
        return dict(cast(dict[str, str], await self.redis.hgetall(self.k("roomnode"))))

    # -- rates ---------------------------------------------------------------
    async def count_site_request(self, site: str, window_s: float) -> int:
        key = self.k(f"rate:{site}:{int(time.time() // window_s)}")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.pexpire(key, max(1, int(window_s * 2000)))
            count, _ = await pipe.execute()
        return int(count)

    # -- directory -----------------------------------------------------------
    async def get_directory(self) -> dict[str, Any] | None:
        raw = await self.redis.get(self.k("directory"))
        return json.loads(raw) if raw else None

    async def put_directory(self, data: dict[str, Any]) -> None:
        await self.redis.set(self.k("directory"), _dumps(data))

    # -- events --------------------------------------------------------------
    async def publish(self, envelope: Envelope) -> None:
        """Envelopes published in one turn of the event loop (an offer's events, a batch of offers')
        go out together, in order, in one pipeline: one round trip."""
        batch = self._outbox
        if batch is None:
            batch = self._outbox = ([], asyncio.get_running_loop().create_future())
            flush = asyncio.ensure_future(self._flush(batch))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        batch[0].append(_dumps(envelope))
        await asyncio.shield(batch[1])

    async def _flush(self, batch: tuple[list[str], asyncio.Future[None]]) -> None:
        items, done = batch
        try:
            try:
                await asyncio.sleep(0)  # the other publishes of this turn join the batch
            finally:  # cancelled here too: later publishes must not join a batch nobody sends
                if self._outbox is batch:
                    self._outbox = None
            async with self.redis.pipeline(transaction=False) as pipe:
                for data in items:
                    pipe.publish(self.k("events"), data)
                await pipe.execute()
        except asyncio.CancelledError:
            done.cancel()
            raise
        except Exception as exc:
            done.set_exception(exc)
            done.exception()  # retrieved: its publishers raise it, even if none waits any more
        else:
            done.set_result(None)

    def subscribe(self, callback: Callable[[Envelope], None]) -> None:
        self._subscribers.append(callback)

    async def _read_events(self) -> None:
        """Deliver the channel's envelopes to subscribers; reconnects after errors."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.k("events"))
                self._ready.set()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    try:
                        envelope = json.loads(message["data"])
                    except ValueError:
                        continue
                    for callback in list(self._subscribers):
                        try:
                            callback(envelope)
                        except Exception:
                            logger.exception("event subscriber failed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("redis event channel lost, reconnecting: %s", exc)
                await asyncio.sleep(0.5)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
