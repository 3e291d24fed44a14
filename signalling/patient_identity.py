"""The patient's national health identity (INS): the matricule with its OID and the INS traits.

A check-in may carry ``ins_identity`` beside the free ``ins`` string: what the INS
teleservice (INSi) returned for the patient, as the identity of a shared-record
deposit needs it::

    {"matricule": "295109912611193", "oid": "1.2.250.1.213.1.4.8",
     "birth_names": "MARTIN", "first_names": "MARIE ANNE", "birth_date": "1995-10-21",
     "sex": "F", "birth_place_code": "99126"}

* ``matricule``: a NIR or a NIA, 15 characters (13 + a 2-digit key; Corsica's
  department is ``2A``/``2B``); the key is checked: ``97 - (n mod 97)``, where
  ``n`` is the first 13 characters read as a number with ``2A`` as ``19`` and
  ``2B`` as ``18``. Spaces are dropped and letters upper-cased.
* ``oid``: which register the matricule is from (:data:`INS_OIDS`).
* ``birth_names``, ``first_names``: the INS traits as INSi gives them: capitals
  without accents, words separated by a space, a hyphen (or two) or an apostrophe.
* ``birth_date``: ``YYYY-MM-DD``; ``sex``: ``M`` or ``F``; ``birth_place_code``: the
  INSEE code of the commune (5 characters, ``2A``/``2B`` in Corsica; ``99xxx``: abroad).

Pure: no I/O. The identity is health data: the records keep it sealed
(``Records.save_identity``); it is never logged nor journaled, and the live
store and the directory keep only the site's pseudonymous ``patient_ref``.
"""

from __future__ import annotations

import datetime
import enum
import re
from dataclasses import asdict, dataclass
from typing import Any


class InsKind(str, enum.Enum):
    """The register an INS matricule comes from, named by its OID."""

    NIR = "NIR"
    NIA = "NIA"
    """A temporary identifier (before a NIR is given)."""
    NIR_TEST = "NIR-TEST"
    """A fictitious test patient's."""
    NIR_DEMO = "NIR-DEMO"
    """A fictitious demonstration patient's."""


INS_OIDS: dict[str, InsKind] = {
    "1.2.250.1.213.1.4.8": InsKind.NIR,
    "1.2.250.1.213.1.4.9": InsKind.NIA,
    "1.2.250.1.213.1.4.10": InsKind.NIR_TEST,
    "1.2.250.1.213.1.4.11": InsKind.NIR_DEMO,
}

FIELDS = ("matricule", "oid", "birth_names", "first_names", "birth_date", "sex", "birth_place_code")
SEXES = ("M", "F")
MAX_NAMES = 100

_MATRICULE = re.compile(r"^[1-478]\d{2}(0[1-9]|1[0-2]|[2-9]\d)(\d{2}|2[AB])\d{6}(\d{2})$")
"""Sex (1/2; 3/4 and 7/8 provisional), year, month (20+: unknown), department, commune, order, key."""
_NAMES = re.compile(r"^[A-Z]+(?:(?: |-|--|')[A-Z]+)*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PLACE = re.compile(r"^(\d{5}|2[AB]\d{3})$")
_CORSICA = {"2A": "19", "2B": "18"}


def nir_key(first13: str) -> int:
    """The check key of a NIR's (or NIA's) first 13 characters (Corsica: 2A as 19, 2B as 18)."""
    department = first13[5:7].upper()
    digits = first13[:5] + _CORSICA.get(department, department) + first13[7:]
    if len(digits) != 13 or not digits.isdigit():
        raise ValueError("a NIR's first 13 characters are digits (2A or 2B for Corsica's department)")
    return 97 - int(digits) % 97


def check_matricule(value: str) -> str:
    """``value`` as a canonical INS matricule (no spaces, capitals); ValueError when its format or
    its key is wrong."""
    matricule = value.replace(" ", "").upper()
    match = _MATRICULE.match(matricule)
    if match is None:
        raise ValueError("ins_identity.matricule must be a NIR or NIA: 13 characters and a 2-digit key")
    if int(match.group(3)) != nir_key(matricule[:13]):
        raise ValueError("ins_identity.matricule: the check key does not match (97 - n mod 97)")
    return matricule


@dataclass(frozen=True)
class InsIdentity:
    matricule: str
    oid: str
    birth_names: str
    first_names: str
    birth_date: str
    sex: str
    birth_place_code: str

    @property
    def kind(self) -> InsKind:
        return INS_OIDS[self.oid]

    @property
    def first_name(self) -> str:
        """The first of the first names (the INS "premier prénom")."""
        return self.first_names.split(" ")[0]

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _names(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_NAMES or not _NAMES.match(value):
        raise ValueError(f"ins_identity.{key} must be the INS trait: capitals without accents, words "
                         f"separated by a space, hyphen or apostrophe (at most {MAX_NAMES} characters)")
    return value


def parse_ins_identity(obj: Any) -> InsIdentity:
    """An ``ins_identity`` object checked for format (raises ValueError saying which key is wrong)."""
    if not isinstance(obj, dict):
        raise ValueError("ins_identity must be an object")
    extra = set(obj) - set(FIELDS)
    if extra:
        raise ValueError(f"ins_identity: unknown key(s) {', '.join(sorted(extra))[:80]}")
    missing = [k for k in FIELDS if k not in obj]
    if missing:
        raise ValueError(f"ins_identity: missing {', '.join(missing)}")
    if not isinstance(obj["matricule"], str) or len(obj["matricule"]) > 32:
        raise ValueError("ins_identity.matricule must be a string")
    matricule = check_matricule(obj["matricule"])
    oid = obj["oid"]
    if oid not in INS_OIDS:
        raise ValueError(f"ins_identity.oid must be one of {', '.join(INS_OIDS)}")
    birth_date = obj["birth_date"]
    if not isinstance(birth_date, str) or not _DATE.match(birth_date):
        raise ValueError("ins_identity.birth_date must be YYYY-MM-DD")
    try:
        born = datetime.date.fromisoformat(birth_date)
    except ValueError:
        raise ValueError("ins_identity.birth_date is not a date") from None
    if born.year < 1850:
        raise ValueError("ins_identity.birth_date is before 1850")
    sex = obj["sex"]
    if sex not in SEXES:
        raise ValueError("ins_identity.sex must be M or F")
    place = obj["birth_place_code"]
    if not isinstance(place, str) or not _PLACE.match(place):
        raise ValueError("ins_identity.birth_place_code must be an INSEE code: 5 characters (2A/2B in Corsica)")
    return InsIdentity(matricule=matricule, oid=oid, birth_names=_names(obj, "birth_names"),
                       first_names=_names(obj, "first_names"), birth_date=birth_date, sex=sex,
                       birth_place_code=place)
