"""Who and where: assisted sites and clinicians.

A directory is an immutable value (sites and clinicians by id) read from a
JSON file (``signalling.directory_file``; empty: the development directory
shipped in ``signalling/data/directory.json``) or replaced through the admin
REST API. The service keeps the current one in the store so that every
signalling process sees admin changes.

File format::

    {"sites": [{"id", "name", "kind", "region", "email"}],
     "clinicians": [{"id", "name", "specialties": [..], "languages": [..], "rpps", "email"}]}

A clinician's ``rpps`` (optional) is their national professional id (RPPS: 11 digits, the
last a Luhn check digit): Pro Santé Connect sign-in finds the clinician by it. Ids
stay the pseudonymous subjects every token, record and journal entry names.

``email`` (optional, one plain address) is where notifications go (télé-expertise): a
clinician's own, or a site's shared mailbox (a nursing home's care team: nurses change
shifts and are not in the directory). Only admins read addresses through the API.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RPPS = re.compile(r"^\d{11}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"^[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]{{1,64}}@{_LABEL}(?:\.{_LABEL})+$")


class SiteKind(str, enum.Enum):
    CABIN = "cabin"
    EHPAD = "ehpad"
    PHARMACY = "pharmacy"
    MOBILE_UNIT = "mobile_unit"
    HOSPITAL = "hospital"


class DirectoryError(ValueError):
    """A directory document is invalid; the message says where."""


@dataclass(frozen=True)
class Site:
    id: str
    name: str
    kind: SiteKind
    region: str = ""
    email: str = ""
    """The site's shared mailbox for notifications ("" when none)."""

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "name": self.name, "kind": self.kind.value, "region": self.region}
        if self.email:
            out["email"] = self.email
        return out


@dataclass(frozen=True)
class Clinician:
    id: str
    name: str
    specialties: tuple[str, ...]
    languages: tuple[str, ...] = ()
    rpps: str = ""
    """The RPPS number ("" when unknown)."""
    email: str = ""
    """Where notifications to them go ("" when none)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "specialties": list(self.specialties),
                               "languages": list(self.languages)}
        if self.rpps:
            out["rpps"] = self.rpps
        if self.email:
            out["email"] = self.email
        return out


def _str(obj: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = obj.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value):
        raise DirectoryError(f"{where}.{key}: must be a non-empty string" if required else f"{where}.{key}: must be a string")
    return value


def _strs(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise DirectoryError(f"{where}.{key}: must be a list of strings")
    return tuple(dict.fromkeys(value))


def _entry_id(obj: Any, where: str, keys: set[str]) -> str:
    """Check a directory entry's shape and return its id."""
    if not isinstance(obj, dict):
        raise DirectoryError(f"{where}: must be an object")
    extra = set(obj) - keys
    if extra:
        raise DirectoryError(f"{where}: unknown key(s) {sorted(extra)}")
    entry_id = _str(obj, "id", where)
    if not _ID.match(entry_id):
        raise DirectoryError(f"{where}.id: letters, digits, '.', '_', '-' (at most 64)")
    return entry_id


def check_email(value: str, where: str = "email") -> str:
    """One plain address (no display name), as mail relays take it."""
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise DirectoryError(f"{where}: one e-mail address such as name@example.org")
    return value


def _email(obj: dict[str, Any], where: str) -> str:
    value = _str(obj, "email", where, required=False)
    return check_email(value, f"{where}.email") if value else ""


def parse_site(obj: Any, where: str = "site") -> Site:
    sid = _entry_id(obj, where, {"id", "name", "kind", "region", "email"})
    try:
        kind = SiteKind(obj.get("kind"))
    except ValueError:
        raise DirectoryError(f"{where}.kind: one of {[k.value for k in SiteKind]}") from None
    return Site(sid, _str(obj, "name", where), kind, _str(obj, "region", where, required=False),
                _email(obj, where))


def luhn_ok(digits: str) -> bool:
    """Whether the last digit of ``digits`` is its Luhn check digit."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def check_rpps(value: str, where: str = "rpps") -> str:
    if not _RPPS.match(value) or not luhn_ok(value):
        raise DirectoryError(f"{where}: an RPPS number is 11 digits, the last a Luhn check digit")
    return value


def parse_clinician(obj: Any, where: str = "clinician") -> Clinician:
    cid = _entry_id(obj, where, {"id", "name", "specialties", "languages", "rpps", "email"})
    specialties = _strs(obj, "specialties", where)
    if not specialties:
        raise DirectoryError(f"{where}.specialties: at least one")
    rpps = _str(obj, "rpps", where, required=False)
    return Clinician(cid, _str(obj, "name", where), specialties, _strs(obj, "languages", where),
                     check_rpps(rpps, f"{where}.rpps") if rpps else "", _email(obj, where))


@dataclass(frozen=True)
class Directory:
    sites: dict[str, Site] = field(default_factory=dict)
    clinicians: dict[str, Clinician] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> "Directory":
        if not isinstance(data, dict) or set(data) - {"sites", "clinicians"}:
            raise DirectoryError("directory: an object with 'sites' and 'clinicians'")
        for key in ("sites", "clinicians"):
            if not isinstance(data.get(key, []), list):
                raise DirectoryError(f"{key}: a list")
        sites: dict[str, Site] = {}
        for i, s in enumerate(data.get("sites", [])):
            site = parse_site(s, f"sites[{i}]")
            if site.id in sites:
                raise DirectoryError(f"sites[{i}].id: duplicate {site.id!r}")
            sites[site.id] = site
        clinicians: dict[str, Clinician] = {}
        for i, c in enumerate(data.get("clinicians", [])):
            clinician = parse_clinician(c, f"clinicians[{i}]")
            if clinician.id in clinicians:
                raise DirectoryError(f"clinicians[{i}].id: duplicate {clinician.id!r}")
            if clinician.rpps and any(c.rpps == clinician.rpps for c in clinicians.values()):
                raise DirectoryError(f"clinicians[{i}].rpps: duplicate {clinician.rpps!r}")
            clinicians[clinician.id] = clinician
        return cls(sites, clinicians)

    def to_dict(self) -> dict[str, Any]:
        return {"sites": [s.to_dict() for s in self.sites.values()],
                "clinicians": [c.to_dict() for c in self.clinicians.values()]}

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without e-mail addresses: what roles other than admin read."""
        out = self.to_dict()
        for entry in (*out["sites"], *out["clinicians"]):
            entry.pop("email", None)
        return out

    def specialties(self) -> list[str]:
        return sorted({s for c in self.clinicians.values() for s in c.specialties})

    def specialties_of(self, subject: str, claimed: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A physician's specialties: the directory's, else those their token claims."""
        clinician = self.clinicians.get(subject)
        return clinician.specialties if clinician else claimed

    def by_rpps(self, rpps: str) -> Clinician | None:
        """The clinician with this RPPS number (None: unknown)."""
        return next((c for c in self.clinicians.values() if rpps and c.rpps == rpps), None)

    def languages_of(self, subject: str) -> tuple[str, ...]:
        clinician = self.clinicians.get(subject)
        return clinician.languages if clinician else ()

    def with_site(self, site: Site) -> "Directory":
        return Directory({**self.sites, site.id: site}, self.clinicians)

    def without_site(self, site_id: str) -> "Directory":
        return Directory({k: v for k, v in self.sites.items() if k != site_id}, self.clinicians)

    def with_clinician(self, clinician: Clinician) -> "Directory":
        other = self.by_rpps(clinician.rpps)
        if other is not None and other.id != clinician.id:
            raise DirectoryError(f"rpps: {clinician.rpps!r} is already {other.id!r}'s")
        return Directory(self.sites, {**self.clinicians, clinician.id: clinician})

    def without_clinician(self, clinician_id: str) -> "Directory":
        return Directory(self.sites, {k: v for k, v in self.clinicians.items() if k != clinician_id})


def load_directory(path: str = "") -> Directory:
    """The directory of ``path``, or the development one shipped with the code."""
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise DirectoryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    else:
        text = resources.files("signalling").joinpath("data/directory.json").read_text(encoding="utf-8")
        path = "signalling/data/directory.json"
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DirectoryError(f"{path}: not valid JSON: {exc}") from None
    try:
        return Directory.from_dict(data)
    except DirectoryError as exc:
        raise DirectoryError(f"{path}: {exc}") from None
