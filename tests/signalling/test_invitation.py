"""signalling.invitation, sans I/O (issue 14): every step from every state (the STEPS table),
admission by two people in either order, the reasons a link is gone, create's and clean_name's
validation, the secret (only its hash kept, never shown, compared in constant time), and the
stored form's round trip."""

from __future__ import annotations

import dataclasses
import hmac
import json
from typing import Any

import pytest

from core.vocabulary import GUEST_ROLES, Role
from signalling import invitation as iv
from signalling.invitation import (FINAL, MAX_LABEL_CHARS, MAX_NAME_CHARS, MAX_TTL_S, MIN_TTL_S, STEPS, Gone,
                                   Invitation, InvitationError, InvitationState, Step, clean_name, create, step)

S = InvitationState
T0 = 1_000_000.0
TTL = 600
SECRET = "the-links-secret-0123456789abcdef"
WIRE_KEYS = {"id", "consultation_id", "role", "label", "state", "name", "identity", "admitted", "consent",
             "emailed", "created_at", "expires_at", "present", "clinician"}
"""The invitation object on the wire (the issue's contract), nothing more."""


def fresh(role: Role = Role.INTERPRETER) -> Invitation:
    return create("iv-0123456789ab", role, "  Spanish interpreter  ", TTL, "dr-demo", SECRET, T0)


def at(state: InvitationState) -> Invitation:
    """An invitation in ``state``, reached by the steps themselves (never by hand)."""
    inv = fresh()
    if state is S.PENDING:
        return inv
    if state is S.REVOKED:
        return step(inv, Step.REVOKE, T0 + 1)
    inv = step(inv, Step.CLAIM, T0 + 1, name="Ana Lopez")
    if state is S.WAITING:
        return inv
    if state is S.REFUSED:
        return step(inv, Step.REFUSE, T0 + 2)
    inv = step(step(inv, Step.ADMIT, T0 + 2), Step.CONSENT, T0 + 3, by="nurse-1")
    if state is S.ADMITTED:
        return inv
    assert state is S.REMOVED
    return step(dataclasses.replace(inv, present=True), Step.REMOVE, T0 + 4)


def test_the_fixtures_reach_every_state() -> None:
    assert {at(s).state for s in S} == set(S)
    assert FINAL == {S.REFUSED, S.REVOKED, S.REMOVED}


def expected(before: Invitation, what: Step) -> dict[str, Any]:
    """The documented result of an allowed step (the module docstring's table)."""
    if what is Step.CLAIM:
        return {"state": S.WAITING, "name": "Eve"}
    if what is Step.ADMIT:
        return {"admitted": True, "state": S.ADMITTED if before.consent else S.WAITING}
    if what is Step.CONSENT:
        admitted = before.admitted and before.state is S.WAITING
        return {"consent": True, "consent_by": "nurse-2", "state": S.ADMITTED if admitted else before.state}
    if what is Step.REFUSE:
        return {"state": S.REFUSED}
    if what is Step.REVOKE:
        return {"state": S.REVOKED}
    return {"state": S.REMOVED, "present": False}


@pytest.mark.parametrize("state", list(S), ids=str)
@pytest.mark.parametrize("what", list(Step), ids=str)
def test_every_step_from_every_state(what: Step, state: InvitationState) -> None:
    before = at(state)
    now = T0 + 10
    if state in STEPS[what]:
        after = step(before, what, now, name="Eve", by="nurse-2")
        want = expected(before, what)
        assert {k: getattr(after, k) for k in want} == want
        assert after.updated_at == now
        # Nothing else moves: not the secret's hash, not the role, not the validity.
        untouched = set(f.name for f in dataclasses.fields(Invitation)) - set(want) - {"updated_at"}
        assert {k: getattr(after, k) for k in untouched} == {k: getattr(before, k) for k in untouched}
        assert before.state is state  # frozen: the step made a new one
    else:
        with pytest.raises(InvitationError) as refused:
            step(before, what, now, name="Eve", by="nurse-2")
        if what is Step.CLAIM:  # a claim says why the link no longer works (410)
            assert refused.value.gone is (Gone.REVOKED if state is S.REVOKED else Gone.USED)
        else:
            assert refused.value.gone is None
            assert what.value in refused.value.reason and state.value in refused.value.reason


def test_the_steps_table_is_as_documented() -> None:
    assert STEPS == {Step.CLAIM: {S.PENDING}, Step.ADMIT: {S.WAITING}, Step.CONSENT: {S.PENDING, S.WAITING},
                     Step.REFUSE: {S.WAITING}, Step.REVOKE: {S.PENDING, S.WAITING}, Step.REMOVE: {S.ADMITTED}}
    # A final state leaves by no step.
    assert not any(FINAL & starts for starts in STEPS.values())


def test_admission_takes_admit_and_consent_in_either_order() -> None:
    waiting = step(fresh(), Step.CLAIM, T0 + 1, name="Ana")
    admitted_first = step(waiting, Step.ADMIT, T0 + 2)
    assert (admitted_first.state, admitted_first.admitted, admitted_first.consent) == (S.WAITING, True, False)
    both = step(admitted_first, Step.CONSENT, T0 + 3, by="nurse-1")
    assert (both.state, both.consent_by) == (S.ADMITTED, "nurse-1")

    consent_first = step(waiting, Step.CONSENT, T0 + 2, by="nurse-1")
    assert (consent_first.state, consent_first.admitted, consent_first.consent) == (S.WAITING, False, True)
    assert step(consent_first, Step.ADMIT, T0 + 3).state is S.ADMITTED

    # The nurse may confirm consent before the guest arrives: kept through the claim, then one admit.
    early = step(fresh(), Step.CONSENT, T0 + 1, by="nurse-1")
    assert (early.state, early.consent) == (S.PENDING, True)
    arrived = step(early, Step.CLAIM, T0 + 2, name="Ana")
    assert (arrived.state, arrived.consent, arrived.name) == (S.WAITING, True, "Ana")
    assert step(arrived, Step.ADMIT, T0 + 3).state is S.ADMITTED

    # Neither alone admits, however often.
    again = step(step(waiting, Step.ADMIT, T0 + 2), Step.ADMIT, T0 + 3)
    assert again.state is S.WAITING
    twice = step(step(waiting, Step.CONSENT, T0 + 2, by="n1"), Step.CONSENT, T0 + 3, by="n2")
    assert twice.state is S.WAITING


def test_a_claim_of_a_link_that_no_longer_works_says_why() -> None:
    inv = fresh()
    # In validity up to (not including) expires_at.
    assert iv.gone(inv, inv.expires_at - 0.001) is None
    assert step(inv, Step.CLAIM, inv.expires_at - 0.001, name="Ana").state is S.WAITING
    for now in (inv.expires_at, inv.expires_at + 3600):
        assert iv.gone(inv, now) is Gone.EXPIRED
        with pytest.raises(InvitationError) as expired:
            step(inv, Step.CLAIM, now, name="Ana")
        assert expired.value.gone is Gone.EXPIRED and "expired" in expired.value.reason
    assert inv.shown_state(inv.expires_at) == "expired" and inv.shown_state(inv.expires_at - 1) == "pending"
    assert inv.view("c-1", inv.expires_at)["state"] == "expired"
    # Revoked wins over expired, used over expired: the reason is the link's fate, not the clock's.
    revoked = at(S.REVOKED)
    assert iv.gone(revoked, T0 + 2 * TTL) is Gone.REVOKED
    with pytest.raises(InvitationError) as gone_revoked:
        step(revoked, Step.CLAIM, T0 + 2, name="Ana")
    assert gone_revoked.value.gone is Gone.REVOKED
    for state in (S.WAITING, S.ADMITTED, S.REFUSED, S.REMOVED):
        assert iv.gone(at(state), T0 + 2 * TTL) is Gone.USED
        with pytest.raises(InvitationError) as used:
            step(at(state), Step.CLAIM, T0 + 5, name="Ana")
        assert used.value.gone is Gone.USED
    # Only a pending one shows as expired: a waiting guest past the link's validity is still waiting.
    assert at(S.WAITING).shown_state(T0 + 2 * TTL) == "waiting"


@pytest.mark.parametrize("role", sorted(GUEST_ROLES), ids=str)
def test_create_a_guest_role(role: Role) -> None:
    inv = create("iv-abcdef012345", role, "  a label ", TTL, "dr-demo", SECRET, T0)
    assert (inv.state, inv.role, inv.label, inv.created_by) == (S.PENDING, role, "a label", "dr-demo")
    assert (inv.created_at, inv.expires_at, inv.updated_at) == (T0, T0 + TTL, T0)
    assert (inv.name, inv.admitted, inv.consent, inv.consent_by, inv.emailed, inv.present) == \
        ("", False, False, None, False, False)
    assert inv.identity == f"{role.value}-abcdef01"


@pytest.mark.parametrize("role", sorted(set(Role) - GUEST_ROLES), ids=str)
def test_create_refuses_a_role_that_is_not_a_guests(role: Role) -> None:
    with pytest.raises(ValueError, match="role must be one of"):
        create("iv-abcdef012345", role, "", TTL, "dr-demo", SECRET, T0)


@pytest.mark.parametrize("ttl,ok", [(MIN_TTL_S - 1, False), (MIN_TTL_S, True), (3600, True), (MAX_TTL_S, True),
                                    (MAX_TTL_S + 1, False), (0, False), (-60, False)])
def test_create_validity_bounds(ttl: int, ok: bool) -> None:
    assert (MIN_TTL_S, MAX_TTL_S) == (60, 86400)
    if ok:
        assert create("iv-1", Role.GUEST, "", ttl, "dr", SECRET, T0).expires_at == T0 + ttl
    else:
        with pytest.raises(ValueError, match="ttl_s"):
            create("iv-1", Role.GUEST, "", ttl, "dr", SECRET, T0)


@pytest.mark.parametrize("label,ok", [("", True), ("x" * MAX_LABEL_CHARS, True), ("é" * MAX_LABEL_CHARS, True),
                                      ("  " + "x" * MAX_LABEL_CHARS + "  ", True),
                                      ("x" * (MAX_LABEL_CHARS + 1), False), ("line\nbreak", False),
                                      ("tab\there", False), ("nul\x00", False), ("bell\x07", False)])
def test_create_label(label: str, ok: bool) -> None:
    if ok:
        assert create("iv-1", Role.GUEST, label, TTL, "dr", SECRET, T0).label == label.strip()
    else:
        with pytest.raises(ValueError, match="label"):
            create("iv-1", Role.GUEST, label, TTL, "dr", SECRET, T0)


@pytest.mark.parametrize("name,want", [("Ana Lopez", "Ana Lopez"), ("  Ana   Lopez ", "Ana Lopez"),
                                       ("Ana\tLopez\n", "Ana Lopez"), ("Zoë Ørsted", "Zoë Ørsted"),
                                       ("x" * MAX_NAME_CHARS, "x" * MAX_NAME_CHARS)])
def test_clean_name_keeps_a_name(name: str, want: str) -> None:
    assert clean_name(name) == want


@pytest.mark.parametrize("name", [None, 5, b"Ana", ["Ana"], "", "   ", "\n\t", "x" * (MAX_NAME_CHARS + 1),
                                  "Ana\x00", "Ana\u200bLopez", "Ana\x1b[31m"])
def test_clean_name_refuses(name: Any) -> None:
    with pytest.raises(ValueError, match="name"):
        clean_name(name)


def test_the_secret_is_kept_as_its_hash_and_never_shown() -> None:
    for state in S:
        inv = at(state)
        assert inv.secret_hash == iv.digest(SECRET) != SECRET
        view = inv.view("c-1", T0 + 5)
        assert set(view) == WIRE_KEYS
        text = json.dumps(view)
        assert inv.secret_hash not in text and SECRET not in text and "secret" not in text
        assert view["consultation_id"] == "c-1" and view["identity"] == inv.identity
    assert "secret" not in " ".join(WIRE_KEYS)
    secrets = {iv.new_secret() for _ in range(50)}
    assert len(secrets) == 50 and all(len(s) >= 32 and s.replace("-", "").replace("_", "").isalnum()
                                      for s in secrets)


def test_matches_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    inv = fresh()
    assert inv.matches(SECRET)
    for wrong in ("", SECRET[:-1], SECRET + "x", SECRET.upper(), inv.secret_hash, "x" * len(SECRET)):
        assert not inv.matches(wrong), wrong
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert inv.matches(SECRET) and not inv.matches("forged")
    # Both compares went through hmac.compare_digest, on digests (fixed length: no length oracle either).
    assert compared == [(inv.secret_hash, iv.digest(SECRET)), (inv.secret_hash, iv.digest("forged"))]
    assert {len(a) for a, _ in compared} | {len(b) for _, b in compared} == {64}


@pytest.mark.parametrize("state", list(S), ids=str)
def test_stored_form_round_trip(state: InvitationState) -> None:
    inv = dataclasses.replace(at(state), emailed=True)
    stored = json.loads(json.dumps(inv.to_dict()))  # the store keeps JSON
    assert stored["role"] == inv.role.value and stored["state"] == state.value
    assert stored["secret_hash"] == inv.secret_hash  # kept in the store (never on the wire)
    back = Invitation.from_dict(stored)
    assert back == inv and isinstance(back.role, Role) and isinstance(back.state, InvitationState)
    assert back.identity == inv.identity
    # A field a later version adds is ignored, not an error.
    assert Invitation.from_dict({**stored, "added_later": 1}) == inv
