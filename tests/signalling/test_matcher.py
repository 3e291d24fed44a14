"""The matcher: pure policy, unit and property tests."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from signalling.matcher import Candidate, Waiting, eligible, estimated_wait_s, plan, positions
from signalling.protocol import Priority


def w(cid: str, priority: str = "routine", since: float = 0.0, specialty: str = "general",
      language: str | None = None, tried: frozenset[str] = frozenset()) -> Waiting:
    return Waiting(cid, specialty, Priority(priority), since, language=language, tried=tried)


def d(pid: str, specialties: tuple[str, ...] = ("general",), languages: tuple[str, ...] = ("fr",),
      since: float = 0.0) -> Candidate:
    return Candidate(pid, frozenset(specialties), frozenset(languages), since)


def test_priority_then_longest_waiting() -> None:
    reqs = [w("r-old", "routine", 1), w("u-new", "urgent", 9), w("e", "emergency", 10), w("u-old", "urgent", 5)]
    out = plan(reqs, [d("a"), d("b"), d("c")])
    assert [x.consultation_id for x in out] == ["e", "u-old", "u-new"]


def test_specialty_and_language() -> None:
    reqs = [w("c", specialty="cardiology"), w("en", language="en"), w("g")]
    out = {x.consultation_id: x.physician for x in plan(reqs, [d("gen-fr"), d("card", ("cardiology",), ("en",))])}
    assert out == {"c": "card", "g": "gen-fr"}  # nobody available speaks en for general


def test_tried_physicians_are_skipped_and_fairness() -> None:
    out = plan([w("r", tried=frozenset({"a"}))], [d("a", since=0), d("b", since=5), d("c", since=3)])
    assert [(x.consultation_id, x.physician) for x in out] == [("r", "c")]


def test_positions_per_specialty() -> None:
    reqs = [w("a", since=1), w("b", "urgent", 2), w("c", since=0, specialty="cardiology")]
    assert positions(reqs) == {"b": 1, "a": 2, "c": 1}


specialties = st.sampled_from(["general", "cardiology", "dermatology"])
requests_st = st.lists(st.builds(
    Waiting, consultation_id=st.uuids().map(str), specialty=specialties,
    priority=st.sampled_from(list(Priority)), since=st.floats(0, 1000),
    language=st.sampled_from([None, "fr", "en"]),
    tried=st.frozensets(st.sampled_from(["p0", "p1", "p2", "p3"]), max_size=2)), max_size=25,
    unique_by=lambda r: r.consultation_id)
candidates_st = st.lists(st.builds(
    Candidate, physician=st.sampled_from([f"p{i}" for i in range(8)]),
    specialties=st.frozensets(specialties, min_size=1), languages=st.frozensets(st.sampled_from(["fr", "en"])),
    available_since=st.floats(0, 1000)), max_size=8, unique_by=lambda c: c.physician)


@settings(max_examples=300, deadline=None)
@given(requests_st, candidates_st)
def test_plan_properties(requests: list[Waiting], candidates: list[Candidate]) -> None:
    out = plan(requests, candidates)
    by_id = {r.consultation_id: r for r in requests}
    by_phys = {c.physician: c for c in candidates}
    # No request to two physicians, no physician with two requests.
    assert len({x.consultation_id for x in out}) == len(out)
    assert len({x.physician for x in out}) == len(out)
    # Every pairing is eligible.
    for x in out:
        assert eligible(by_id[x.consultation_id], by_phys[x.physician])
    matched = {x.consultation_id for x in out}
    used = {x.physician for x in out}
    # Maximal: no unmatched request has an unused eligible physician.
    for r in requests:
        if r.consultation_id not in matched:
            assert not any(eligible(r, c) for c in candidates if c.physician not in used)
    # Priority: an unmatched request never loses a physician to a lower-ranked one it was eligible for.
    for x in out:
        taken = by_id[x.consultation_id]
        for r in requests:
            if r.consultation_id not in matched and eligible(r, by_phys[x.physician]):
                assert taken.order_key() < r.order_key()


def test_wait_estimates() -> None:
    assert estimated_wait_s(1, online=0, free=0, mean_length_s=600.0) is None  # nobody to wait for
    assert estimated_wait_s(2, online=2, free=2, mean_length_s=None) == 0.0  # a physician is free for it
    assert estimated_wait_s(1, online=1, free=0, mean_length_s=None) is None  # no length known
    assert estimated_wait_s(3, online=2, free=1, mean_length_s=300.0) == 300.0
