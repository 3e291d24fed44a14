"""A site's rate of visit requests, as a table: within it everything is taken; beyond it routine and
urgent requests are refused, emergencies are flagged (never refused, never demoted)."""

from __future__ import annotations

import pytest

from signalling import queue as queue_mod
from signalling.admission import Admission, admit
from signalling.matcher import Waiting, queue_order
from signalling.protocol import Priority


@pytest.mark.parametrize(("priority", "nth", "limit", "outcome"), [
    (Priority.ROUTINE, 30, 30, Admission.ADMIT),
    (Priority.ROUTINE, 31, 30, Admission.REFUSE),
    (Priority.URGENT, 31, 30, Admission.REFUSE),
    (Priority.EMERGENCY, 31, 30, Admission.FLAG),
    (Priority.EMERGENCY, 600, 30, Admission.FLAG),
    (Priority.ROUTINE, 10_000, 0, Admission.ADMIT),  # 0: no limit
])
def test_admission_table(priority: Priority, nth: int, limit: int, outcome: Admission) -> None:
    assert admit(priority, nth, limit) is outcome


def test_flagged_emergencies_wait_after_the_others_and_before_urgent_requests() -> None:
    entries = [
        {"id": "flood-1", "specialty": "s", "priority": "emergency", "since": 100.0, "flagged": True},
        {"id": "urgent", "specialty": "s", "priority": "urgent", "since": 50.0},
        {"id": "real", "specialty": "s", "priority": "emergency", "since": 200.0},
        {"id": "flood-2", "specialty": "s", "priority": "emergency", "since": 101.0, "flagged": True},
    ]
    by_policy = [w.consultation_id for w in queue_order(queue_mod.waiting(e) for e in entries)]
    by_store = [e["id"] for e in sorted(entries, key=queue_mod.order_key)]
    assert by_policy == by_store == ["real", "flood-1", "flood-2", "urgent"]
    assert isinstance(queue_mod.waiting(entries[0]), Waiting) and queue_mod.waiting(entries[0]).flagged
