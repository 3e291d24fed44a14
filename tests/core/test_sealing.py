import pytest

from core.keyring import MasterKey
from core.sealing import SealingError, ValueSealer, is_sealed

DOC = {"id": "c-1", "reason": "douleur thoracique", "patient_ref": "P-4242", "ins": "1 85 05 78 006 084 91"}


def test_round_trip_without_clear_text() -> None:
    sealer = ValueSealer(MasterKey.generate())
    text = sealer.seal_json(DOC, "consultations|c-1")
    assert is_sealed(text)
    for clear in ("douleur", "P-4242", "reason", "006 084"):
        assert clear not in text
    assert sealer.open_json(text, "consultations|c-1") == DOC
    assert sealer.open_json(text.encode(), "consultations|c-1") == DOC  # Redis may give bytes
    assert sealer.seal_json(DOC, "consultations|c-1") != text  # a fresh nonce each time


def test_a_value_is_bound_to_its_row() -> None:
    sealer = ValueSealer(MasterKey.generate())
    text = sealer.seal_json(DOC, "reports|c-1")
    with pytest.raises(SealingError, match="altered or moved"):
        sealer.open_json(text, "reports|c-2")
    with pytest.raises(SealingError, match="altered or moved"):
        sealer.open_json(text, "consultations|c-1")


def test_tampering_and_other_keys_are_detected() -> None:
    sealer = ValueSealer(MasterKey.generate())
    text = sealer.seal_json(DOC, "reports|c-1")
    flipped = text[:-6] + ("A" if text[-6] != "A" else "B") + text[-5:]
    with pytest.raises(SealingError):
        sealer.open_json(flipped, "reports|c-1")
    with pytest.raises(SealingError, match="sealed with master key"):
        ValueSealer(MasterKey.generate()).open_json(text, "reports|c-1")
    with pytest.raises(SealingError, match="not a sealed value|too short"):
        sealer.open_json("tcs1:!!!", "reports|c-1")


def test_modes_do_not_mix() -> None:
    plain, sealed = ValueSealer(None), ValueSealer(MasterKey.generate())
    assert not plain.encrypted and sealed.encrypted
    clear = plain.seal_json(DOC, "reports|c-1")
    assert plain.open_json(clear, "reports|c-1") == DOC
    with pytest.raises(SealingError, match="stored in clear"):
        sealed.open_json(clear, "reports|c-1")
    with pytest.raises(SealingError, match="no master key"):
        plain.open_json(sealed.seal_json(DOC, "reports|c-1"), "reports|c-1")
