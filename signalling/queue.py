"""Visit requests waiting for a physician: the compact entry the store's queue keeps.

The queue holds only what matching and positions need (ids, specialty,
priority, language, site, since, who already declined); never patient data.
A request that rings a physician leaves the queue and comes back on decline,
timeout or a vanished physician.
"""

from __future__ import annotations

from typing import Any

from signalling.consultation import Consultation
from signalling.matcher import Waiting
from signalling.protocol import Priority

MAX_WAIT_S = 4 * 3600.0
"""A request waiting longer than this expires."""


def entry(c: Consultation) -> dict[str, Any]:
    return {"id": c.id, "specialty": c.specialty, "priority": c.priority.value, "since": c.created_at,
            "site": c.site, "language": c.language, "tried": list(c.tried)}


def waiting(e: dict[str, Any]) -> Waiting:
    return Waiting(consultation_id=e["id"], specialty=e["specialty"], priority=Priority(e["priority"]),
                   since=float(e["since"]), site=e.get("site", ""), language=e.get("language"),
                   tried=frozenset(e.get("tried") or ()))


def score(e: dict[str, Any]) -> float:
    """The entry's place in its specialty's ordered queue (lower goes first), as the matcher's
    :meth:`~signalling.matcher.Waiting.order_key` orders: priority, then since; equal scores
    order by id (a Redis sorted set orders equal scores by member)."""
    return -Priority(e["priority"]).rank * 1e10 + float(e["since"])


def order_key(e: dict[str, Any]) -> tuple[float, str]:
    return (score(e), e["id"])
