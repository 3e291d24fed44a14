"""Every vital a report keeps has a LOINC code and words in both languages; every unit reads to a person."""

from __future__ import annotations

from interop.vital_codes import UNIT_DISPLAY, VITAL_CODES, vital_label
from signalling.protocol import VITAL_UNITS


def test_every_vital_and_unit_has_its_line() -> None:
    assert set(VITAL_CODES) == set(VITAL_UNITS)
    assert {u for units in VITAL_UNITS.values() for u in units} <= set(UNIT_DISPLAY)
    for quantity, code in VITAL_CODES.items():
        assert code.loinc and code.display and vital_label(quantity, "fr") != vital_label(quantity, "en")
