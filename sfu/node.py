"""A node: one SFU process registered in the store, with its URL, load and liveness.

Each process that runs an SFU heartbeats a :class:`NodeInfo` into the store
(``Store.register_node``, with a TTL of a few heartbeats). At accept, the
signalling layer places the consultation's room on the least loaded live node
that is not draining (:func:`choose_node`) and gives clients that node's URL
(``sfu_url``): its WHIP/WHEP endpoints, or its ``/ws`` for ``media.offer``.
A node whose heartbeat expired loses its rooms: another process re-places
them and tells the parties (``room.moved``). SIGTERM drains a node: it keeps
its rooms but is offered no new ones. On the memory store the one process is
the one node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class NodeInfo:
    id: str
    """The node id (its process id)."""
    url: str
    """Base URL of the node's HTTP server (``/whip``, ``/whep``, ``/ws``)."""
    rooms: int = 0
    """Rooms open on the node (its own count, as of its last heartbeat)."""
    participants: int = 0
    draining: bool = False
    """Draining (SIGTERM): keeps its rooms, gets no new ones."""
    alive: bool = True
    """Its heartbeat has not expired (filled in by the store)."""

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "rooms": self.rooms, "participants": self.participants, "draining": self.draining}

    @classmethod
    def from_dict(cls, node_id: str, d: Mapping[str, Any]) -> "NodeInfo":
        return cls(id=node_id, url=str(d.get("url", "")), rooms=int(d.get("rooms", 0)),
                   participants=int(d.get("participants", 0)), draining=bool(d.get("draining", False)),
                   alive=bool(d.get("alive", True)))


def choose_node(nodes: Iterable[NodeInfo], placed: Mapping[str, int]) -> NodeInfo | None:
    """The least loaded live node that is not draining: fewest rooms placed on it (the store's
    count, exact even between heartbeats), then fewest participants, then id; None if none."""
    usable = [n for n in nodes if n.alive and not n.draining]
    if not usable:
        return None
    return min(usable, key=lambda n: (placed.get(n.id, 0), n.participants, n.id))


__all__ = ["NodeInfo", "choose_node"]
