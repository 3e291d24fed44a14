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


FLAGGED_OFFSET = 5e9
"""Added to a flagged request's score: after every unflagged request of its priority (``since`` is a
Unix time, < 5e9 until the year 2128), before the next priority (1e10 apart)."""


def entry(c: Consultation) -> dict[str, Any]:
    return {"id": c.id, "specialty": c.specialty, "priority": c.priority.value, "since": c.created_at,
            "site": c.site, "language": c.language, "tried": list(c.tried), "flagged": c.flag is not None}


def waiting(e: dict[str, Any]) -> Waiting:
    return Waiting(consultation_id=e["id"], specialty=e["specialty"], priority=Priority(e["priority"]),
                   since=float(e["since"]), site=e.get("site", ""), language=e.get("language"),
                   tried=frozenset(e.get("tried") or ()), flagged=bool(e.get("flagged")))


def score(e: dict[str, Any]) -> float:
    """The entry's place in its specialty's ordered queue (lower goes first), as the matcher's
    :meth:`~signalling.matcher.Waiting.order_key` orders: priority, then flagged after unflagged,
    then since; equal scores order by id (a Redis sorted set orders equal scores by member)."""
    return -Priority(e["priority"]).rank * 1e10 + (FLAGGED_OFFSET if e.get("flagged") else 0.0) + float(e["since"])


def order_key(e: dict[str, Any]) -> tuple[float, str]:
    return (score(e), e["id"])
