"""What each vital sign of a report is called: its LOINC code, its words in French and English, and
how its UCUM unit is printed.

The quantities and units are the report's (``signalling.protocol.VITAL_UNITS``, named as
``devices.measurements``); a test fails when one of them has no line here.
"""

from __future__ import annotations

from dataclasses import dataclass

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class VitalCode:
    loinc: str
    display: str
    """LOINC's long common name."""
    en: str
    fr: str
    also: tuple[tuple[str, str], ...] = ()
    """Further LOINC codings (code, display) the FHIR vital-signs profile expects."""


VITAL_CODES: dict[str, VitalCode] = {
    "heart_rate": VitalCode("8867-4", "Heart rate", "Heart rate", "Fréquence cardiaque"),
    "pulse_rate": VitalCode("8889-8", "Heart rate by Pulse oximetry", "Pulse rate (oximeter)",
                            "Pouls (oxymètre)"),
    "spo2": VitalCode("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "Oxygen saturation (SpO₂)",
                      "Saturation en oxygène (SpO₂)", also=(("2708-6", "Oxygen saturation in Arterial blood"),)),
    "systolic": VitalCode("8480-6", "Systolic blood pressure", "Systolic blood pressure",
                          "Pression artérielle systolique"),
    "diastolic": VitalCode("8462-4", "Diastolic blood pressure", "Diastolic blood pressure",
                           "Pression artérielle diastolique"),
    "mean_arterial_pressure": VitalCode("8478-0", "Mean blood pressure", "Mean arterial pressure",
                                        "Pression artérielle moyenne"),
    "body_temperature": VitalCode("8310-5", "Body temperature", "Body temperature", "Température corporelle"),
}

UNIT_DISPLAY: dict[str, str] = {
    "/min": "/min",
    "%": "%",
    "mm[Hg]": "mmHg",
    "kPa": "kPa",
    "Cel": "°C",
    "[degF]": "°F",
}
"""How a UCUM unit code reads to a person (the FHIR Quantity's ``unit``, the PDF's unit)."""


def vital_label(quantity: str, lang: str) -> str:
    code = VITAL_CODES[quantity]
    return code.fr if lang == "fr" else code.en

