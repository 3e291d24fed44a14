"""The in-process store: dicts, atomic because nothing awaits inside an operation."""

from __future__ import annotations

import bisect
import time
from typing import Any, Callable, Iterable, Sequence

from signalling.queue import order_key
from signalling.store.base import Envelope, MatchView, OfferClaim, QueueOp, Versioned


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._docs: dict[str, Versioned] = {}
        self._queue: dict[str, dict[str, Any]] = {}
        self._ordered: dict[str, list[tuple[float, str]]] = {}
        """specialty -> sorted (score, id): the queue in matcher order, kept on every change."""
        self._offers: dict[str, float] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._index: dict[str, set[str]] = {}
        self._presence: dict[str, dict[str, Any]] = {}
        self._sessions: dict[str, tuple[dict[str, Any], float]] = {}
        self._dropped: dict[str, float] = {}
        self._nodes: dict[str, tuple[dict[str, Any], float]] = {}
        self._placements: dict[str, str] = {}
        self._room_states: dict[str, tuple[str, Versioned, float]] = {}
        """room -> (node that wrote it, its document and version, expiry)."""
        self._directory: dict[str, Any] | None = None
        self._subscribers: list[Callable[[Envelope], None]] = []
        self._site_requests: dict[str, tuple[int, int]] = {}
        """site -> (window number, requests in it)."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self._subscribers.clear()

    async def ping(self) -> bool:
        return True

    # -- consultations -------------------------------------------------------
    async def create_consultation(self, cid: str, doc: dict[str, Any], queue_entry: dict[str, Any],
                                  parties: Iterable[str]) -> None:
        if cid in self._docs:
            raise KeyError(f"consultation {cid} exists")
        self._docs[cid] = Versioned(doc, 1)
        self._queue_put(cid, queue_entry)
        for p in parties:
            self._index.setdefault(p, set()).add(cid)

    async def get_consultation(self, cid: str) -> Versioned | None:
        return self._docs.get(cid)

    async def get_consultations(self, cids: Iterable[str]) -> list[Versioned]:
        return [v for v in (self._docs.get(c) for c in cids) if v is not None]

    async def update_consultation(
        self, cid: str, version: int, doc: dict[str, Any], *,
        queue: QueueOp = QueueOp.KEEP, queue_entry: dict[str, Any] | None = None,
        parties_remove: Iterable[str] = (), parties_add: Iterable[str] = (),
        release_lock_of: str | None = None, clear_offer: bool = False, delete: bool = False,
    ) -> int | None:
        current = self._docs.get(cid)
        if current is None or current.version != version:
            return None
        new = version + 1
        if delete:
            del self._docs[cid]
        else:
            self._docs[cid] = Versioned(doc, new)
        if queue is QueueOp.ADD:
            assert queue_entry is not None
            self._queue_put(cid, queue_entry)
        elif queue is QueueOp.REMOVE:
            self._queue_pop(cid)
        if release_lock_of is not None:
            self._release(release_lock_of, cid)
        if clear_offer:
            self._offers.pop(cid, None)
        for p in parties_remove:
            members = self._index.get(p)
            if members is not None:
                members.discard(cid)
                if not members:
                    del self._index[p]
        for p in parties_add:
            self._index.setdefault(p, set()).add(cid)
        return new

    def _queue_put(self, cid: str, entry: dict[str, Any]) -> None:
        self._queue_pop(cid)
        self._queue[cid] = entry
        bisect.insort(self._ordered.setdefault(entry["specialty"], []), order_key(entry))

    def _queue_pop(self, cid: str) -> None:
        entry = self._queue.pop(cid, None)
        if entry is None:
            return
        ordered = self._ordered[entry["specialty"]]
        key = order_key(entry)
        i = bisect.bisect_left(ordered, key)
        if i < len(ordered) and ordered[i] == key:
            del ordered[i]

    def _release(self, physician: str, cid: str) -> None:
        lock = self._locks.get(physician)
        if lock is not None and lock[0] == cid:
            del self._locks[physician]

    async def claim_offer(self, cid: str, version: int, doc: dict[str, Any], physician: str,
                          expires_at: float, lock_ttl_s: float) -> int | None:
        current = self._docs.get(cid)
        if current is None or current.version != version:
            return None
        lock = self._locks.get(physician)
        if lock is not None and lock[1] > self.clock():
            return None
        presence = self._presence.get(physician)
        if presence is None or presence.get("status") != "available" or presence.get("connected") is False:
            return None
        self._docs[cid] = Versioned(doc, version + 1)
        self._locks[physician] = (cid, self.clock() + lock_ttl_s)
        self._queue_pop(cid)
        self._offers[cid] = expires_at
        self._index.setdefault(f"user:{physician}", set()).add(cid)
        return version + 1

    async def claim_offers(self, claims: Sequence[OfferClaim]) -> list[int | None]:
        return [await self.claim_offer(c.cid, c.version, c.doc, c.physician, c.expires_at, c.lock_ttl_s)
                for c in claims]

    def _free(self, physician: str) -> bool:
        """Available, connected, nothing ringing: what :meth:`claim_offer` checks."""
        presence = self._presence.get(physician)
        lock = self._locks.get(physician)
        return presence is not None and presence.get("status") == "available" \
            and presence.get("connected") is not False and (lock is None or lock[1] <= self.clock())

    async def match_view(self, *, physicians: Iterable[str] = (), requests: Iterable[str] = (),
                         specialties: Iterable[str] = (), all_free: bool = False, offset: int = 0,
                         count: int = 32) -> MatchView:
        free = {ph: dict(e) for ph, e in self._presence.items() if self._free(ph)}
        entries = [e for e in (self._queue.get(c) for c in requests) if e is not None]
        paged = set(specialties) | {e["specialty"] for e in entries}
        for ph in free if all_free else [ph for ph in physicians if ph in free]:
            paged.update(free[ph].get("specialties") or ())
        queues = {sp: [self._queue[cid] for _, cid in self._ordered.get(sp, [])[offset:offset + count]]
                  for sp in sorted(paged)} if free else {}
        return MatchView(free, entries, queues)

    async def release_offer_lock(self, physician: str, cid: str) -> None:
        self._release(physician, cid)

    async def offer_locks(self, physicians: Iterable[str]) -> set[str]:
        now = self.clock()
        return {ph for ph in physicians if ph in self._locks and self._locks[ph][1] > now}

    async def open_for(self, party: str) -> list[str]:
        return list(self._index.get(party, ()))

    async def waiting(self) -> list[dict[str, Any]]:
        return list(self._queue.values())

    async def queue_ids(self, specialty: str, start: int = 0, stop: int = -1) -> list[str]:
        ordered = self._ordered.get(specialty, [])
        return [cid for _, cid in ordered[start:None if stop == -1 else stop + 1]]

    async def queue_entries(self, cids: Iterable[str]) -> list[dict[str, Any]]:
        return [e for e in (self._queue.get(c) for c in cids) if e is not None]

    async def queue_rank(self, cid: str, specialty: str) -> int | None:
        entry = self._queue.get(cid)
        if entry is None or entry["specialty"] != specialty:
            return None
        return bisect.bisect_left(self._ordered[specialty], order_key(entry))

    async def due_offers(self, now: float) -> list[str]:
        return [cid for cid, at in self._offers.items() if at <= now]

    # -- presence ------------------------------------------------------------
    async def set_presence(self, physician: str, entry: dict[str, Any]) -> None:
        self._presence[physician] = entry

    async def remove_presence(self, physician: str, session: str | None = None) -> bool:
        entry = self._presence.get(physician)
        if entry is None or (session is not None and entry.get("session") != session):
            return False
        del self._presence[physician]
        return True

    async def presence(self, physician: str) -> dict[str, Any] | None:
        entry = self._presence.get(physician)
        return dict(entry) if entry is not None else None

    async def presences(self) -> dict[str, dict[str, Any]]:
        return dict(self._presence)

    async def touch_process(self, ttl_s: float) -> None:
        pass

    async def live_processes(self, procs: Iterable[str]) -> set[str]:
        return set(procs)

    # -- sessions ------------------------------------------------------------
    async def put_session(self, sid: str, data: dict[str, Any], ttl_s: float) -> None:
        self._sessions[sid] = (data, self.clock() + ttl_s)

    async def get_session(self, sid: str) -> dict[str, Any] | None:
        item = self._sessions.get(sid)
        if item is None:
            return None
        if item[1] < self.clock():
            del self._sessions[sid]
            return None
        return item[0]

    async def delete_session(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    # -- resume grace (one process: its own timers suffice; kept for one interface) --
    async def own_session(self, sid: str) -> None:
        pass

    async def disown_session(self, sid: str) -> None:
        pass

    async def mark_dropped(self, sid: str, deadline: float) -> None:
        self._dropped[sid] = deadline

    async def clear_dropped(self, sid: str) -> bool:
        return self._dropped.pop(sid, None) is not None

    async def claim_due_dropped(self, now: float, limit: int = 100) -> list[str]:
        due = sorted((at, sid) for sid, at in self._dropped.items() if at <= now)[:limit]
        for _, sid in due:
            del self._dropped[sid]
        return [sid for _, sid in due]

    async def orphans(self) -> list[str]:
        return []

    # -- media nodes (one process: the one implicit node) ----------------------
    async def register_node(self, node_id: str, info: dict[str, Any], ttl_s: float,
                            rooms: Iterable[str] = ()) -> None:
        until = self.clock() + ttl_s
        self._nodes[node_id] = (info, until)
        for room in rooms:
            state = self._room_states.get(room)
            if state is not None:
                self._room_states[room] = (state[0], state[1], until)

    async def nodes(self) -> dict[str, dict[str, Any]]:
        now = self.clock()
        return {nid: {**info, "alive": at > now} for nid, (info, at) in self._nodes.items()}

    async def expire_node(self, node_id: str) -> None:
        item = self._nodes.get(node_id)
        if item is not None:
            self._nodes[node_id] = (item[0], self.clock())
        for room in [r for r, nid in self._placements.items() if nid == node_id]:
            self._room_states.pop(room, None)

    async def forget_node(self, node_id: str) -> bool:
        item = self._nodes.get(node_id)
        if item is None or item[1] > self.clock():
            return False
        del self._nodes[node_id]
        return True

    async def place_room(self, room: str, node_id: str) -> None:
        self._placements[room] = node_id
        self._room_states.pop(room, None)

    async def room_node(self, room: str) -> str | None:
        return self._placements.get(room)

    async def unplace_room(self, room: str) -> None:
        self._placements.pop(room, None)
        self._room_states.pop(room, None)

    async def put_room_state(self, room: str, node_id: str, version: int, doc: dict[str, Any],
                             ttl_s: float) -> bool:
        if self._placements.get(room) != node_id:
            return False
        now = self.clock()
        current = self._room_states.get(room)
        if current is not None and current[0] == node_id and current[2] > now and current[1].version >= version:
            return False
        self._room_states[room] = (node_id, Versioned(doc, version), now + ttl_s)
        return True

    async def room_state(self, room: str) -> Versioned | None:
        state = self._room_states.get(room)
        if state is None or state[0] != self._placements.get(room) or state[2] <= self.clock():
            return None
        return state[1]

    async def placements(self) -> dict[str, str]:
        return dict(self._placements)

    # -- rates ---------------------------------------------------------------
    async def count_site_request(self, site: str, window_s: float) -> int:
        window = int(self.clock() // window_s)
        seen, count = self._site_requests.get(site, (window, 0))
        count = count + 1 if seen == window else 1
        self._site_requests[site] = (window, count)
        return count

    # -- directory -----------------------------------------------------------
    async def get_directory(self) -> dict[str, Any] | None:
        return self._directory

    async def put_directory(self, data: dict[str, Any]) -> None:
        self._directory = data

    # -- events --------------------------------------------------------------
    async def publish(self, envelope: Envelope) -> None:
        for callback in list(self._subscribers):
            callback(envelope)

    def subscribe(self, callback: Callable[[Envelope], None]) -> None:
        self._subscribers.append(callback)
