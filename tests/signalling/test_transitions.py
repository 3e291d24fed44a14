"""Sans-I/O: what each lifecycle step implies (store change and effects, in order), without a server."""

from __future__ import annotations

import pytest

from core.vocabulary import Act
from signalling import consultation as lifecycle
from signalling import protocol as p
from signalling.consultation import (Archive, Busy, CloseRoom, Consultation, Forget, FreePhysician, GrantSeats,
                                     JournalAct, Kick, Notify, QueueMove, ReleaseOfferLock, State, VisitNotice,
                                     transition)
from signalling.hub import agents, nurses, user


def _requested() -> Consultation:
    return Consultation(id="c1", site="s", specialty="general", priority=p.Priority.ROUTINE, patient_ref="p",
                        reason="r", created_at=0.0, requested_by="n")


def _kinds(t: lifecycle.Transition) -> list[type]:
    return [type(e) for e in t.effects]


def test_check_in_then_queued() -> None:
    c = _requested()
    t = lifecycle.check_in(c)
    assert t.old is None and t.store.queue is QueueMove.ENTER
    assert [e.act for e in t.effects if isinstance(e, JournalAct)] == [Act.VISIT_CHECKIN, Act.CONSENT]
    assert _kinds(t) == [JournalAct, JournalAct, Archive]
    assert [type(e) for e in lifecycle.queued(c)] == [Notify, Kick, VisitNotice]


def test_offer_claims_and_rings() -> None:
    t = lifecycle.offer(_requested(), "dr", 10.0, 30.0)
    assert t.new.state is State.OFFERED and t.new.offer_seq == 1 and t.new.offer_expires_at == 40.0
    assert t.store.lock_for == "dr" and t.store.queue is QueueMove.LEAVE
    journal, to_physician, to_nurses, notice = t.effects
    assert isinstance(journal, JournalAct) and journal.act is Act.OFFER and journal.actor == lifecycle.MATCHER
    assert isinstance(to_physician, Notify) and to_physician.targets == (user("dr"),)
    assert isinstance(to_nurses, Notify) and to_nurses.targets == (nurses("s"),)
    assert isinstance(notice, VisitNotice) and notice.status is p.VisitStatus.OFFERED


def test_withdraw_names_the_decliner_only() -> None:
    offered = lifecycle.offer(_requested(), "dr", 10.0, 30.0).new
    declined = lifecycle.withdraw(offered, p.WithdrawReason.DECLINED, "dr", 12.0)
    timed_out = lifecycle.withdraw(offered, p.WithdrawReason.TIMEOUT, "dr", 40.0)
    assert declined.new.state is State.REQUESTED and declined.new.tried == ("dr",)
    assert declined.store.queue is QueueMove.ENTER and declined.store.release_lock_of == "dr"
    first = declined.effects[0]
    assert isinstance(first, JournalAct) and (first.act, first.actor) == (Act.OFFER_DECLINE, "dr")
    first = timed_out.effects[0]
    assert isinstance(first, JournalAct) and (first.act, first.actor) == (Act.OFFER_TIMEOUT, lifecycle.MATCHER)
    assert _kinds(declined)[-1] is Kick


def test_accept_turns_busy_before_the_lock_goes() -> None:
    offered = lifecycle.offer(_requested(), "dr", 10.0, 30.0).new
    t = lifecycle.accept(offered, "dr", "session-1", 11.0)
    assert t.new.state is State.ACCEPTED and t.new.room == "c1"
    assert t.store.clear_offer and t.store.release_lock_of is None
    assert _kinds(t) == [Busy, ReleaseOfferLock, JournalAct]
    started = lifecycle.start(t.new, "dr", "http://node", 12.0)
    assert _kinds(started) == [Archive, JournalAct, GrantSeats]


def test_finish_live_frees_the_physician_first_and_tells_every_seat() -> None:
    accepted = lifecycle.accept(lifecycle.offer(_requested(), "dr", 10.0, 30.0).new, "dr", "s1", 11.0).new
    active = transition(accepted, State.ACTIVE, 12.0)
    t = lifecycle.finish(active, State.ENDED, "dr", "completed", 20.0)
    assert t.new.state is State.ENDED and t.new.end_reason == "completed"
    assert _kinds(t) == [FreePhysician, CloseRoom, Archive, Forget, JournalAct, Notify, Notify, Notify, Kick]
    targets = [e.targets for e in t.effects if isinstance(e, Notify)]
    assert targets == [(nurses("s"),), (user("dr"),), (agents("s"),)]


def test_finish_while_offered_withdraws_the_offer() -> None:
    offered = lifecycle.offer(_requested(), "dr", 10.0, 30.0).new
    t = lifecycle.finish(offered, State.CANCELLED, "n", "cancelled", 11.0)
    assert t.store.queue is QueueMove.LEAVE and t.store.release_lock_of == "dr" and t.store.clear_offer
    journal = t.effects[2]
    assert isinstance(journal, JournalAct) and journal.act is Act.CONSULTATION_CANCEL
    withdrawn = t.effects[3]
    assert isinstance(withdrawn, Notify) and withdrawn.event == p.OfferWithdrawn(consultation_id="c1",
                                                                                  reason="cancelled")
    kick = t.effects[-1]
    assert isinstance(kick, Kick) and kick.physicians == ("dr",)


def test_only_an_answer_keeps_a_physician_from_ringing_again() -> None:
    offered = lifecycle.offer(_requested(), "dr", 10.0, 30.0, "Dr Who").new
    assert offered.offered_to_name == "Dr Who"
    vanished = lifecycle.withdraw(offered, p.WithdrawReason.VANISHED, lifecycle.MATCHER, 12.0)
    assert vanished.new.tried == () and vanished.new.offered_to_name is None
    notices = [e for e in vanished.effects if isinstance(e, VisitNotice)]
    assert [(e.status, e.physician, e.physician_name) for e in notices] == \
        [(p.VisitStatus.PHYSICIAN_LEFT, "dr", "Dr Who")]
    for why, status in ((p.WithdrawReason.DECLINED, p.VisitStatus.DECLINED),
                        (p.WithdrawReason.TIMEOUT, p.VisitStatus.NOT_ANSWERED)):
        t = lifecycle.withdraw(offered, why, "dr", 12.0)
        assert t.new.tried == ("dr",) and [e.status for e in t.effects if isinstance(e, VisitNotice)] == [status]


def test_a_pick_rings_nobody_and_names_stay() -> None:
    picked = lifecycle.offer(_requested(), "dr", 10.0, 30.0, "Dr Who", ring=False)
    assert _kinds(picked) == [JournalAct, Notify]
    first = picked.effects[0]
    assert isinstance(first, JournalAct) and first.actor == "dr"
    accepted = lifecycle.accept(picked.new, "dr", "s1", 11.0)
    assert accepted.new.physician_name == "Dr Who"
    started = lifecycle.start(accepted.new, "dr", None, 12.0)
    assert started.new.started_at == 12.0 and started.new.view(True)["physician_name"] == "Dr Who"


def test_an_accept_says_when_and_on_which_process_off_the_wire() -> None:
    offered = lifecycle.offer(_requested(), "dr", 10.0, 30.0).new
    accepted = lifecycle.accept(offered, "dr", "session-1", 11.0, process="proc-a").new
    assert (accepted.accepted_at, accepted.accepted_on) == (11.0, "proc-a")
    assert Consultation.from_dict(accepted.to_dict()) == accepted
    assert "accepted_on" not in accepted.view(True) and "accepted_at" not in accepted.view(False)


def test_an_accept_taken_over_journals_it_only_when_the_dead_process_did_not() -> None:
    offered = lifecycle.offer(_requested(), "dr", 10.0, 30.0).new
    accepted = lifecycle.accept(offered, "dr", "session-1", 11.0, process="proc-a").new
    lost = lifecycle.take_over(accepted, "proc-b", 20.0, accept_journaled=False)
    assert lost.new.state is State.ACCEPTED and lost.new.accepted_on == "proc-b"
    assert lost.new.accepted_at == 11.0 and lost.store == lifecycle.QueueChange()
    unlock, journal = lost.effects
    assert isinstance(unlock, ReleaseOfferLock) and unlock.physician == "dr"
    assert isinstance(journal, JournalAct) and (journal.act, journal.actor) == (Act.OFFER_ACCEPT, "dr")
    assert dict(journal.fields) == {"physician": "dr", "accepted_at": 11.0, "recovered_by": lifecycle.RECOVERY,
                                    "process": "proc-a"}
    kept = lifecycle.take_over(accepted, "proc-b", 20.0, accept_journaled=True)
    assert _kinds(kept) == [ReleaseOfferLock]
    started = lifecycle.start(lost.new, lifecycle.RECOVERY, "https://node", 21.0)
    assert started.new.state is State.ACTIVE and started.new.started_at == 21.0
    for not_accepted in (offered, started.new):
        with pytest.raises(lifecycle.InvalidTransition):
            lifecycle.take_over(not_accepted, "proc-b", 22.0, accept_journaled=False)
