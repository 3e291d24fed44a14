"""Sans-I/O: message parsing, validation, and the protocol document kept in step with the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.auth import TokenService
from signalling import protocol as p
from signalling.consultation import TRANSITIONS, Consultation, InvalidTransition, State, transition
from signalling.journal import FileJournal
from signalling.protocol import ErrorCode, ProtocolError
from signalling.records import SqliteRecords
from signalling.service import SignallingService
from signalling.store.memory import MemoryStore
from tests.support import loopback_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_doc_matches_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    _, _, rest = text.partition(p.GENERATED_BEGIN)
    generated, _, _ = rest.partition(p.GENERATED_END)
    assert generated.strip() == p.render_reference().strip(), \
        "docs/protocol.md drifted: run python -m signalling.protocol docs/protocol.md"
    for type_ in list(p.REQUESTS) + list(p.EVENTS):
        assert f"### `{type_}`" in text
    for code in ErrorCode:
        assert f"`{code.value}`" in text


async def test_every_request_has_a_reply_and_a_handler(tmp_path: Path) -> None:
    settings = loopback_settings(tmp_path, auth={"signing_key": "k" * 40})
    journal, records = FileJournal(str(tmp_path)), SqliteRecords(str(tmp_path))
    service = SignallingService(settings, MemoryStore(), TokenService(settings.auth, str(tmp_path)), journal,
                                records)
    try:
        for type_, spec in p.REQUESTS.items():
            assert type_ in p.REPLIES, type_
            assert spec.cls in service.handlers, type_
    finally:
        await journal.close()
        await records.close()


@pytest.mark.parametrize("frame, code", [
    ("not json", "bad_json"), ("[1,2]", "bad_json"), ('{"id":1}', "bad_message"),
    ('{"type":"nope","id":1}', "unknown_type"), ('{"type":"ping"}', "bad_message"),
    ('{"type":"hello","id":1,"version":"1","token":"x"}', "bad_message"),
    ('{"type":"hello","id":1,"version":1,"token":"x","extra":1}', "bad_message"),
    ('{"type":"presence.set","id":1,"status":"sleeping"}', "bad_message"),
    ('{"type":"visit.request","id":true}', "bad_message"),
    ('{"type":"hello","id":1,"version":1,"token":"' + "x" * 9000 + '"}', "too_large"),
    ('{"type":"ping","id":1,"x":' + "[" * 5000 + "]" * 5000 + "}", "bad_json"),  # a RecursionError before
])
def test_bad_frames(frame: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        p.parse_request(p.parse_frame(frame))
    assert info.value.code.value == code


def test_parse_visit_request() -> None:
    mid, msg = p.parse_request({"type": "visit.request", "id": "a", "patient_ref": "p", "reason": "r",
                                "specialty": "general", "priority": "emergency",
                                "consent_teleconsultation": True})
    assert mid == "a" and msg.priority is p.Priority.EMERGENCY and msg.language is None


def test_a_role_that_may_not_send_a_request_is_forbidden_before_its_fields_are_read() -> None:
    """A nurse's ``offer.accept`` with no consultation id: ``forbidden`` (a nurse never accepts),
    not ``bad_message`` naming the field a physician must send."""
    with pytest.raises(ProtocolError) as info:
        p.parse_request({"type": "offer.accept", "id": 7}, "nurse")
    assert info.value.code is ErrorCode.FORBIDDEN and info.value.id == 7
    with pytest.raises(ProtocolError) as info:
        p.parse_request({"type": "offer.accept", "id": 7}, "physician")
    assert info.value.code is ErrorCode.BAD_MESSAGE
    assert p.parse_request({"type": "offer.accept", "id": 7, "consultation_id": "c"}, "physician")[1] \
        == p.OfferAccept(consultation_id="c")


def test_report_validation() -> None:
    assert p.validate_report({"findings": "x"})["prescriptions"] == []
    with pytest.raises(ValueError):
        p.validate_report({"diagnosis": "x"})
    with pytest.raises(ValueError):
        p.validate_report({"prescriptions": "x"})


def _c() -> Consultation:
    return Consultation(id="c1", site="s", specialty="general", priority=p.Priority.ROUTINE, patient_ref="p",
                        reason="r", created_at=0.0, requested_by="n")


def test_state_machine_table() -> None:
    c = _c()
    for target in State:
        if target in TRANSITIONS[State.REQUESTED]:
            assert transition(c, target, 1.0).state is target
        else:
            with pytest.raises(InvalidTransition):
                transition(c, target, 1.0)
    for final in (State.ENDED, State.CANCELLED, State.EXPIRED, State.FAILED):
        assert not TRANSITIONS[final]
    offered = transition(c, State.OFFERED, 1.0, offered_to="d", offer_expires_at=5.0)
    back = transition(offered, State.REQUESTED, 2.0)
    assert back.offered_to is None and back.offer_expires_at is None
    with pytest.raises(InvalidTransition):
        transition(transition(offered, State.ACCEPTED, 2.0), State.REQUESTED, 3.0)


def test_views_hide_clinical_fields() -> None:
    view = _c().view(clinical=False)
    assert not {"patient_ref", "ins", "reason"} & set(view)
    assert Consultation.from_dict(_c().to_dict()) == _c()
