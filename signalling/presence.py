"""Physicians online: status (available, busy, away), what they can take, which connection owns it.

An entry lives in the store while its connection lives: it is removed when the
connection closes *or dies* (missed heartbeats), and entries of a process that
stopped refreshing its liveness key are reaped by the other processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from signalling.matcher import Candidate
from signalling.protocol import PresenceStatus


@dataclass(frozen=True)
class Presence:
    physician: str
    status: PresenceStatus
    specialties: tuple[str, ...]
    languages: tuple[str, ...]
    since: float
    """When the status last changed (available longest goes first)."""
    session: str
    proc: str

    def to_dict(self) -> dict[str, Any]:
        return {"physician": self.physician, "status": self.status.value, "specialties": list(self.specialties),
                "languages": list(self.languages), "since": self.since, "session": self.session, "proc": self.proc}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Presence":
        return cls(d["physician"], PresenceStatus(d["status"]), tuple(d["specialties"]), tuple(d["languages"]),
                   float(d["since"]), d["session"], d["proc"])

    def candidate(self) -> Candidate:
        return Candidate(self.physician, frozenset(self.specialties), frozenset(self.languages), self.since)

    def public(self, name: str = "") -> dict[str, Any]:
        return {"physician": self.physician, "name": name, "status": self.status.value,
                "specialties": list(self.specialties), "languages": list(self.languages)}
