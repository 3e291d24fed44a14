"""Which waiting request goes to which physician: pure policy, no I/O.

Rules:

1. Requests go in order: emergency, then urgent, then routine; within a
   priority the unflagged first (a flagged emergency came above its site's
   rate of requests: it stays an emergency, after the other sites' ones), then
   the longest waiting first (ties: the id, so the order is total).
2. A physician is eligible for a request when available, has the request's
   specialty, speaks its language when one is asked, and has not already
   declined or let it time out (``tried``).
3. Each request gets at most one physician and each physician at most one
   request per plan (one offer rings one physician at a time).
4. Among eligible physicians the one available longest is chosen (fairness).

The plan is greedy in request order, so a request is never passed over for a
lower one that competes for the same physician, and no eligible pair is left
unmatched at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from signalling.protocol import Priority


@dataclass(frozen=True)
class Waiting:
    """A request waiting for a physician (what the matcher needs of it)."""

    consultation_id: str
    specialty: str
    priority: Priority
    since: float
    site: str = ""
    language: str | None = None
    tried: frozenset[str] = frozenset()
    flagged: bool = False

    def order_key(self) -> tuple[int, bool, float, str]:
        return (-self.priority.rank, self.flagged, self.since, self.consultation_id)


@dataclass(frozen=True)
class Candidate:
    """An available physician."""

    physician: str
    specialties: frozenset[str]
    languages: frozenset[str] = frozenset()
    available_since: float = 0.0


@dataclass(frozen=True)
class Pairing:
    consultation_id: str
    physician: str


def eligible(request: Waiting, candidate: Candidate) -> bool:
    return (request.specialty in candidate.specialties
            and (request.language is None or request.language in candidate.languages)
            and candidate.physician not in request.tried)


def queue_order(requests: Iterable[Waiting]) -> list[Waiting]:
    return sorted(requests, key=Waiting.order_key)


def plan(requests: Iterable[Waiting], candidates: Iterable[Candidate]) -> list[Pairing]:
    """Offers to make now, best request first."""
    by_specialty: dict[str, list[Candidate]] = {}
    for c in sorted(candidates, key=lambda c: (c.available_since, c.physician)):
        for s in c.specialties:
            by_specialty.setdefault(s, []).append(c)
    used: set[str] = set()
    out: list[Pairing] = []
    if not by_specialty:
        return out
    for request in queue_order(requests):
        pool = by_specialty.get(request.specialty)
        if not pool:
            continue
        for c in pool:
            if c.physician not in used and eligible(request, c):
                used.add(c.physician)
                out.append(Pairing(request.consultation_id, c.physician))
                break
    return out


def positions(requests: Iterable[Waiting]) -> dict[str, int]:
    """1-based place of each request in the queue of its specialty."""
    counters: dict[str, int] = {}
    out: dict[str, int] = {}
    for r in queue_order(requests):
        counters[r.specialty] = counters.get(r.specialty, 0) + 1
        out[r.consultation_id] = counters[r.specialty]
    return out


def estimated_wait_s(position: int, online: int, free: int, mean_length_s: float | None) -> float | None:
    """A rough wait for the request at ``position`` (1-based) of its specialty's queue: none when a
    physician is free for it (``free`` of the ``online`` physicians taking patients), else the
    consultations ahead of it beyond the free ones shared among the physicians online, each
    ``mean_length_s`` long. None when it cannot be said: nobody online, or no length known."""
    if online <= 0:
        return None
    if position <= free:
        return 0.0
    if mean_length_s is None:
        return None
    return round((position - free) / online * mean_length_s, 1)


__all__ = ["Waiting", "Candidate", "Pairing", "plan", "eligible", "queue_order", "positions", "estimated_wait_s"]
