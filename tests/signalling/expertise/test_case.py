"""The case's transition table (sans I/O): every allowed and every refused step, who may do
what, who sees what, and random sequences of actions that keep the case valid."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.auth import Principal
from core.vocabulary import Role
from signalling.expertise.case import (ACTORS, ACTS, FINAL, OPEN, TRANSITIONS, Action, Answer, Attachment, Case,
                                       CaseState, Message, Party, Recommendation, Refused, Urgency, new_case, party,
                                       step)

NOW = 1_000_000.0
MSG = Message(id="m1", author="x", role="requester", kind="note", text="hello", at=NOW)
ATT = Attachment(id="a1", kind="upload", mime="image/jpeg", size=10, width=1, height=1, added_by="n1", at=NOW)
ANSWER = Answer(opinion="benign", diagnosis="seborrhoeic keratosis", recommendation=Recommendation.ADVICE,
                follow_up="none")


def case(state: CaseState = CaseState.DRAFT, **changes: Any) -> Case:
    base = new_case(id="x1", site="ehpad-demo", requested_by="nurse-1", patient_ref="p-1", specialty="dermatology",
                    urgency=Urgency.STANDARD, questionnaire="dermatology@1", answers={}, consent=True, now=NOW)
    return dataclasses.replace(base, state=state, **changes)


def extras(action: Action) -> dict[str, Any]:
    return {"message": MSG, "attachment": ATT, "answer": ANSWER}


def allowed_party(action: Action) -> Party:
    return sorted(ACTORS[action])[0]


ALL = [(s, a) for s in CaseState for a in Action]


@pytest.mark.parametrize(("state", "action"), ALL, ids=[f"{s.value}-{a.value}" for s, a in ALL])
def test_every_state_and_action(state: CaseState, action: Action) -> None:
    c = case(state, expert="dr-derma" if action is Action.DECLINE else None)
    target = TRANSITIONS[state].get(action)
    if target is None:
        with pytest.raises(Refused) as refused:
            step(c, action, allowed_party(action), "someone", NOW + 1, **extras(action))
        assert refused.value.code == "conflict"
        return
    s = step(c, action, allowed_party(action), "someone", NOW + 1, **extras(action))
    assert s.new.state is target and s.act is ACTS[action] and s.new.updated_at == NOW + 1
    assert s.fields["state"] == target.value and s.fields["from_state"] == state.value


def test_the_table_is_as_documented() -> None:
    assert set(TRANSITIONS) == set(CaseState)
    for state in FINAL:
        assert TRANSITIONS[state] == {}
    assert TRANSITIONS[CaseState.DRAFT][Action.SUBMIT] is CaseState.SUBMITTED
    assert TRANSITIONS[CaseState.SUBMITTED][Action.ASK] is CaseState.QUESTION
    assert TRANSITIONS[CaseState.QUESTION][Action.REPLY] is CaseState.SUBMITTED
    assert TRANSITIONS[CaseState.ANSWERED][Action.CLOSE] is CaseState.CLOSED
    assert set(ACTS) == set(Action) == set(ACTORS)


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("who", [p for p in Party])
def test_actor_rules(action: Action, who: Party) -> None:
    state = next(s for s in CaseState if action in TRANSITIONS[s])
    c = case(state, expert="dr-derma" if action is Action.DECLINE else None)
    if who in ACTORS[action]:
        step(c, action, who, "someone", NOW, **extras(action))
    else:
        with pytest.raises(Refused) as refused:
            step(c, action, who, "someone", NOW, **extras(action))
        assert refused.value.code == "forbidden"


def test_take_once_and_decline_to_the_pool() -> None:
    c = case(CaseState.SUBMITTED)
    taken = step(c, Action.TAKE, Party.POOL, "dr-derma", NOW).new
    assert taken.expert == "dr-derma" and not taken.in_pool
    with pytest.raises(Refused, match="another expert"):
        step(taken, Action.TAKE, Party.POOL, "dr-demo", NOW)
    with pytest.raises(Refused, match="reason"):
        step(taken, Action.DECLINE, Party.EXPERT, "dr-derma", NOW,
             message=dataclasses.replace(MSG, text="  "))
    back = step(taken, Action.DECLINE, Party.EXPERT, "dr-derma", NOW, message=MSG).new
    assert back.expert is None and back.in_pool and back.declined_by == ("dr-derma",)
    assert back.messages[-1] == MSG


def test_submit_needs_consent_and_restarts_the_due_date() -> None:
    with pytest.raises(Refused, match="consent"):
        step(case(consent=False), Action.SUBMIT, Party.REQUESTER, "nurse-1", NOW)
    urgent = case(urgency=Urgency.URGENT)
    s = step(urgent, Action.SUBMIT, Party.REQUESTER, "nurse-1", NOW + 100).new
    assert s.due_at == NOW + 100 + 48 * 3600 and s.submitted_at == NOW + 100
    assert case().due_at == NOW + 7 * 86400


def test_overdue_is_flagged_once_and_opens_the_pool() -> None:
    named = case(CaseState.SUBMITTED, named_expert="dr-derma")
    assert not named.in_pool and "open" in named.indexes()
    flagged = step(named, Action.OVERDUE, Party.SWEEPER, "sweeper", NOW).new
    assert flagged.in_pool and flagged.flagged_at == NOW and "open" not in flagged.indexes()
    with pytest.raises(Refused):
        step(flagged, Action.OVERDUE, Party.SWEEPER, "sweeper", NOW)


def p(role: Role, sub: str, site: str | None = None, specialties: tuple[str, ...] = ()) -> Principal:
    return Principal(subject=sub, role=role, site=site, specialties=specialties)


NURSE = p(Role.NURSE, "nurse-1", "ehpad-demo")
NEXT_SHIFT = p(Role.NURSE, "nurse-2", "ehpad-demo")
OTHER_NURSE = p(Role.NURSE, "nurse-9", "cabin-demo")
DERMA = p(Role.PHYSICIAN, "dr-derma", specialties=("dermatology",))
DERMA2 = p(Role.PHYSICIAN, "dr-demo", specialties=("general", "dermatology"))
CARDIO = p(Role.PHYSICIAN, "dr-cardio", specialties=("cardiology",))
ADMIN = p(Role.ADMIN, "admin-1")
AGENT = p(Role.AGENT, "agent-1", "ehpad-demo")


def test_who_sees_what() -> None:
    draft = case()
    assert [party(x, draft) for x in (NURSE, NEXT_SHIFT, OTHER_NURSE, DERMA, CARDIO, ADMIN, AGENT)] == [
        Party.REQUESTER, Party.REQUESTER, Party.OUTSIDER, Party.OUTSIDER, Party.OUTSIDER, Party.ADMIN,
        Party.OUTSIDER]
    pooled = case(CaseState.SUBMITTED)
    assert party(DERMA, pooled) is Party.POOL and party(DERMA2, pooled) is Party.POOL
    assert party(CARDIO, pooled) is Party.OUTSIDER
    taken = dataclasses.replace(pooled, expert="dr-derma")
    assert party(DERMA, taken) is Party.EXPERT and party(DERMA2, taken) is Party.OUTSIDER
    named = case(CaseState.SUBMITTED, named_expert="dr-derma")
    assert party(DERMA, named) is Party.POOL and party(DERMA2, named) is Party.OUTSIDER
    assert party(DERMA2, dataclasses.replace(named, pooled=True)) is Party.POOL


def test_round_trip_through_the_store_form() -> None:
    c = step(step(case(CaseState.SUBMITTED, attachments=(ATT,), messages=(MSG,)), Action.TAKE, Party.POOL,
                  "dr-derma", NOW).new, Action.ANSWER, Party.EXPERT, "dr-derma", NOW, answer=ANSWER).new
    assert Case.from_dict(c.to_dict()) == c
    assert set(c.metadata()) & {"patient_ref", "answers", "answer"} == set()


# -- random sequences of actions ------------------------------------------------------------
PEOPLE = [(NURSE, "nurse-1"), (NEXT_SHIFT, "nurse-2"), (DERMA, "dr-derma"), (DERMA2, "dr-demo"),
          (CARDIO, "dr-cardio"), (None, "sweeper")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Action)), st.integers(0, len(PEOPLE) - 1)), max_size=30),
       st.booleans())
def test_random_sequences_keep_a_case_valid(actions: list[tuple[Action, int]], named: bool) -> None:
    c = case(named_expert="dr-derma" if named else None)
    journal: list[str] = []
    done = 0
    for i, (action, who_i) in enumerate(actions):
        principal, actor = PEOPLE[who_i]
        who = party(principal, c) if principal is not None else Party.SWEEPER
        before = c
        try:
            s = step(c, action, who, actor, NOW + i, **extras(action))
        except Refused:
            assert c == before
            continue
        journal.append(s.act.value)
        done += 1
        c = s.new
        # States stay valid: a held case is held by an expert of the specialty; nothing is lost.
        assert c.state in TRANSITIONS
        assert c.expert in (None, "dr-derma", "dr-demo")
        assert len(c.messages) >= len(before.messages) and len(c.attachments) >= len(before.attachments)
        assert c.messages[:len(before.messages)] == before.messages
        if c.state is CaseState.ANSWERED:
            assert c.answer is not None
        if c.in_pool:
            assert c.state in OPEN and c.expert is None
    assert len(journal) == done  # every step that happened has its act
