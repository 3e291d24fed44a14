"""The store interface (what the service needs of shared state), backend-neutral.

Consultations are JSON documents with a version; every change is a
compare-and-set (:meth:`Store.update_consultation`) that also keeps the
waiting queue, the offer deadlines, the per-party indexes (``site:<id>``,
``user:<physician>``) and the physician's offer lock consistent, in one atomic
step. :meth:`Store.claim_offer` additionally checks, atomically, that the
physician is available (and connected) and has no other offer ringing: this is what keeps a
request from ringing two physicians and a physician from getting two offers,
across processes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

Envelope = dict[str, Any]
"""An event between processes: ``{"t": [[kind, key], ...], "m": message}``, or a
control note (``{"kick": 1}``: run the matcher; ``{"directory": 1}``: reload)."""


@dataclass(frozen=True)
class Versioned:
    doc: dict[str, Any]
    version: int


@dataclass(frozen=True)
class OfferClaim:
    """One :meth:`Store.claim_offer` of a batch (:meth:`Store.claim_offers`)."""

    cid: str
    version: int
    doc: dict[str, Any]
    physician: str
    expires_at: float
    lock_ttl_s: float


@dataclass(frozen=True)
class MatchView:
    """What one matching decision reads, in one step (:meth:`Store.match_view`)."""

    free: dict[str, dict[str, Any]]
    """Presence entries of the physicians free for an offer: available, connected, nothing ringing."""
    requests: list[dict[str, Any]]
    """The waiting entries asked for by id (those still in the queue, in the order asked)."""
    queues: dict[str, list[dict[str, Any]]]
    """Per specialty paged: its waiting entries ``offset..offset+count-1``, in queue order."""


class QueueOp(str, enum.Enum):
    KEEP = "keep"
    ADD = "add"
    """Put (or replace) the consultation's entry in the waiting queue."""
    REMOVE = "del"


class Store(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...

    # -- consultations -------------------------------------------------------
    async def create_consultation(self, cid: str, doc: dict[str, Any], queue_entry: dict[str, Any],
                                  parties: Iterable[str]) -> None: ...
    async def get_consultation(self, cid: str) -> Versioned | None: ...
    async def get_consultations(self, cids: Iterable[str]) -> list[Versioned]: ...
    async def update_consultation(
        self, cid: str, version: int, doc: dict[str, Any], *,
        queue: QueueOp = QueueOp.KEEP, queue_entry: dict[str, Any] | None = None,
        parties_remove: Iterable[str] = (), parties_add: Iterable[str] = (),
        release_lock_of: str | None = None, clear_offer: bool = False, delete: bool = False,
    ) -> int | None:
        """Compare-and-set; the new version, or None when ``version`` is stale."""
        ...

    async def claim_offer(self, cid: str, version: int, doc: dict[str, Any], physician: str,
                          expires_at: float, lock_ttl_s: float) -> int | None:
        """Offer ``cid`` to ``physician`` if the version holds, the physician is
        available and has no offer ringing; the new version, or None."""
        ...

    async def claim_offers(self, claims: Sequence[OfferClaim]) -> list[int | None]:
        """:meth:`claim_offer` of each claim (each atomic on its own), in one round trip; the new
        versions, None where a claim did not hold."""
        ...

    async def match_view(self, *, physicians: Iterable[str] = (), requests: Iterable[str] = (),
                         specialties: Iterable[str] = (), all_free: bool = False, offset: int = 0,
                         count: int = 32) -> MatchView:
        """In one round trip: the free physicians (:attr:`MatchView.free`), the waiting entries of
        ``requests``, and a page (``offset``, ``count``) of the queues of ``specialties``, of the
        specialties of ``requests`` and of those of the free physicians among ``physicians`` (of
        every free physician when ``all_free``); no page when no physician is free (nothing to match)."""
        ...

    async def release_offer_lock(self, physician: str, cid: str) -> None: ...
    async def offer_locks(self, physicians: Iterable[str]) -> set[str]:
        """Those of ``physicians`` with an offer ringing."""
        ...

    async def open_for(self, party: str) -> list[str]: ...
    async def waiting(self) -> list[dict[str, Any]]: ...
    async def queue_ids(self, specialty: str, start: int = 0, stop: int = -1) -> list[str]:
        """Ids waiting for ``specialty`` in queue order (``signalling.queue.order_key``),
        ``start..stop`` inclusive (``-1``: to the end)."""
        ...

    async def queue_entries(self, cids: Iterable[str]) -> list[dict[str, Any]]:
        """The waiting entries of those of ``cids`` still in the queue, in the same order."""
        ...

    async def queue_rank(self, cid: str, specialty: str) -> int | None:
        """0-based place of ``cid`` in its specialty's queue, or None."""
        ...

    async def due_offers(self, now: float) -> list[str]: ...

    # -- presence (physicians online) ---------------------------------------
    async def set_presence(self, physician: str, entry: dict[str, Any]) -> None: ...
    async def remove_presence(self, physician: str, session: str | None = None) -> bool:
        """Remove (only if still owned by ``session`` when given); True if removed."""
        ...

    async def presence(self, physician: str) -> dict[str, Any] | None: ...
    async def presences(self) -> dict[str, dict[str, Any]]: ...
    async def touch_process(self, ttl_s: float) -> None: ...
    async def live_processes(self, procs: Iterable[str]) -> set[str]: ...

    # -- sessions (for resume on any process) -------------------------------
    async def put_session(self, sid: str, data: dict[str, Any], ttl_s: float) -> None: ...
    async def get_session(self, sid: str) -> dict[str, Any] | None: ...
    async def delete_session(self, sid: str) -> None: ...

    # -- resume grace across processes ----------------------------------------
    async def own_session(self, sid: str) -> None:
        """This process holds ``sid``'s socket (if the process dies, others time the session out)."""
        ...

    async def disown_session(self, sid: str) -> None: ...
    async def mark_dropped(self, sid: str, deadline: float) -> None:
        """``sid`` lost its socket: whichever process sees ``deadline`` pass first ends it."""
        ...

    async def clear_dropped(self, sid: str) -> bool:
        """``sid`` is back (or is being ended here): True if this call removed its deadline
        (atomic: exactly one caller wins)."""
        ...

    async def claim_due_dropped(self, now: float, limit: int = 100) -> list[str]:
        """Sessions whose deadline passed, each removed and returned to exactly one caller."""
        ...

    async def orphans(self) -> list[str]:
        """Sessions owned by processes that stopped heartbeating, taken over (returned once)."""
        ...

    # -- media nodes (sfu.node) ----------------------------------------------
    async def register_node(self, node_id: str, info: dict[str, Any], ttl_s: float,
                            rooms: Iterable[str] = ()) -> None:
        """Heartbeat of an SFU node: its info (url, load, draining), alive for ``ttl_s``; the state
        documents of ``rooms`` (those it hosts, :meth:`put_room_state`) live as long."""
        ...

    async def nodes(self) -> dict[str, dict[str, Any]]:
        """Every registered node's info, with ``alive`` (heartbeat not expired)."""
        ...

    async def forget_node(self, node_id: str) -> bool:
        """Remove a node whose heartbeat expired; True for the one caller that removed it."""
        ...

    async def expire_node(self, node_id: str) -> None:
        """Its heartbeat expires now: a node known dead (its process exited) before its TTL says so;
        the state documents of its rooms go with it."""
        ...

    async def place_room(self, room: str, node_id: str) -> None:
        """The room is on ``node_id`` now; its state document (another node's) is dropped."""
        ...

    async def room_node(self, room: str) -> str | None: ...
    async def unplace_room(self, room: str) -> None:
        """The room is nowhere (closed, or no node could take it); its state document goes with it."""
        ...

    async def put_room_state(self, room: str, node_id: str, version: int, doc: dict[str, Any],
                             ttl_s: float) -> bool:
        """The hosting node's document of the room's state (participants, publications), alive for
        ``ttl_s`` (its heartbeats extend it: :meth:`register_node`). Written only while the room is
        placed on ``node_id`` and ``version`` is newer than that node's last (a node that lost the
        room, or a late write, changes nothing); True when written."""
        ...

    async def room_state(self, room: str) -> Versioned | None:
        """The state document of the node the room is placed on now, with its version; None when
        the room is placed nowhere or that node has written none (or it expired)."""
        ...

    async def placements(self) -> dict[str, str]:
        """room -> node of every placed room."""
        ...

    # -- rates ---------------------------------------------------------------
    async def count_site_request(self, site: str, window_s: float) -> int:
        """Count one visit request of ``site`` in the current window of ``window_s`` (fixed windows,
        shared by every process); the count so far, this one included."""
        ...

    # -- directory -----------------------------------------------------------
    async def get_directory(self) -> dict[str, Any] | None: ...
    async def put_directory(self, data: dict[str, Any]) -> None: ...

    # -- events --------------------------------------------------------------
    async def publish(self, envelope: Envelope) -> None: ...
    def subscribe(self, callback: Callable[[Envelope], None]) -> None: ...
