"""Questionnaires as data: one versioned JSON file per specialty, checked when loaded.

Files are ``<specialty>.v<version>.json`` in ``signalling/expertise/questionnaires/``
(the package's data); the highest version of a specialty is its current one. A case
keeps the ``<specialty>@<version>`` its answers were checked against.

A file holds ``specialty``, ``version``, ``title`` (``fr``, ``en``) and ``fields``, each
``{id, type, label: {fr, en}, required?}`` with, by type:

* ``choice``: ``options`` (one of them); ``multi``: ``options`` (a list of them, no repeats)
* ``text``: ``max_length``; ``number``: ``min``, ``max``; ``boolean``
* ``photos``: ``views`` (codes such as ``close_up``, ``distance``): checked at submission,
  when the case must hold an attachment of each view (answers never carry it)

:func:`validate` refuses unknown fields, missing required ones and wrong values with an
:class:`AnswerError` that names the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from core.vocabulary import Language

HERE = Path(__file__).resolve().parent / "questionnaires"
FIELD_TYPES = frozenset({"choice", "multi", "text", "number", "boolean", "photos"})
LANGUAGES = tuple(language.value for language in Language)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_FILE = re.compile(r"([a-z][a-z0-9_]*)\.v([0-9]+)\.json")
MAX_TEXT = 4000


class QuestionnaireError(ValueError):
    """A questionnaire file that breaks the format (its path and what is wrong)."""


class AnswerError(ValueError):
    """An answer that does not fit its questionnaire; ``field`` names the question."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Field:
    id: str
    type: str
    label: Mapping[str, str]
    required: bool = False
    options: tuple[str, ...] = ()
    max_length: int = MAX_TEXT
    min: float | None = None
    max: float | None = None
    views: tuple[str, ...] = ()


@dataclass(frozen=True)
class Questionnaire:
    specialty: str
    version: int
    title: Mapping[str, str]
    fields: tuple[Field, ...]
    source: Mapping[str, Any]
    """The file's JSON, as the pages get it."""

    @property
    def ref(self) -> str:
        return f"{self.specialty}@{self.version}"

    def photo_views(self) -> dict[str, tuple[str, ...]]:
        """Required photo fields -> the views each needs."""
        return {f.id: f.views for f in self.fields if f.type == "photos" and f.required}


def _labels(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or any(not isinstance(value.get(lang), str) or not value[lang].strip()
                                          for lang in LANGUAGES):
        raise QuestionnaireError(f"{where}: needs a label in {' and '.join(LANGUAGES)}")
    return {lang: value[lang] for lang in LANGUAGES}


def _codes(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or any(not isinstance(v, str) or not _NAME.fullmatch(v) for v in value):
        raise QuestionnaireError(f"{where}: needs a non-empty list of lower-case codes")
    if len(set(value)) != len(value):
        raise QuestionnaireError(f"{where}: codes repeat")
    return tuple(value)


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise QuestionnaireError(f"{where}: must be a number")
    return float(value)


def parse(data: Any, where: str = "questionnaire") -> Questionnaire:
    """A questionnaire from its JSON; :class:`QuestionnaireError` naming what is wrong."""
    if not isinstance(data, dict):
        raise QuestionnaireError(f"{where}: must be an object")
    specialty, version = data.get("specialty"), data.get("version")
    if not isinstance(specialty, str) or not _NAME.fullmatch(specialty):
        raise QuestionnaireError(f"{where}: specialty must be a lower-case code")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise QuestionnaireError(f"{where}: version must be a positive integer")
    title = _labels(data.get("title"), f"{where}: title")
    raw_fields = data.get("fields")
    if not isinstance(raw_fields, list) or not raw_fields:
        raise QuestionnaireError(f"{where}: fields must be a non-empty list")
    fields: list[Field] = []
    for i, raw in enumerate(raw_fields):
        at = f"{where}: fields[{i}]"
        if not isinstance(raw, dict):
            raise QuestionnaireError(f"{at}: must be an object")
        fid, kind = raw.get("id"), raw.get("type")
        if not isinstance(fid, str) or not _NAME.fullmatch(fid):
            raise QuestionnaireError(f"{at}: id must be a lower-case code")
        at = f"{where}: field {fid}"
        if kind not in FIELD_TYPES:
            raise QuestionnaireError(f"{at}: type must be one of {', '.join(sorted(FIELD_TYPES))}")
        known = {"id", "type", "label", "required", "options", "max_length", "min", "max", "views"}
        if set(raw) - known:
            raise QuestionnaireError(f"{at}: unknown keys {', '.join(sorted(set(raw) - known))}")
        required = raw.get("required", False)
        if not isinstance(required, bool):
            raise QuestionnaireError(f"{at}: required must be true or false")
        f = Field(id=fid, type=str(kind), label=_labels(raw.get("label"), at), required=required)
        if kind in ("choice", "multi"):
            f = dataclasses.replace(f, options=_codes(raw.get("options"), f"{at}: options"))
        elif kind == "photos":
            f = dataclasses.replace(f, views=_codes(raw.get("views"), f"{at}: views"))
        elif kind == "text":
            max_length = raw.get("max_length", MAX_TEXT)
            if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= MAX_TEXT:
                raise QuestionnaireError(f"{at}: max_length must be an integer in 1..{MAX_TEXT}")
            f = dataclasses.replace(f, max_length=max_length)
        elif kind == "number":
            lo, hi = _number(raw.get("min"), f"{at}: min"), _number(raw.get("max"), f"{at}: max")
            if lo is not None and hi is not None and lo > hi:
                raise QuestionnaireError(f"{at}: min is above max")
            f = dataclasses.replace(f, min=lo, max=hi)
        fields.append(f)
    ids = [f.id for f in fields]
    if len(set(ids)) != len(ids):
        raise QuestionnaireError(f"{where}: field ids repeat")
    return Questionnaire(specialty=specialty, version=version, title=title, fields=tuple(fields), source=data)


def load_file(path: Path) -> Questionnaire:
    match = _FILE.fullmatch(path.name)
    if match is None:
        raise QuestionnaireError(f"{path.name}: a questionnaire file is named <specialty>.v<version>.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QuestionnaireError(f"{path.name}: {exc}") from None
    q = parse(data, path.name)
    if (q.specialty, q.version) != (match.group(1), int(match.group(2))):
        raise QuestionnaireError(f"{path.name}: its specialty and version differ from its name")
    return q


class Questionnaires:
    """Every version of every specialty's questionnaire, loaded and checked once."""

    def __init__(self, questionnaires: Iterable[Questionnaire]) -> None:
        self._all: dict[str, Questionnaire] = {}
        self._current: dict[str, Questionnaire] = {}
        for q in questionnaires:
            if q.ref in self._all:
                raise QuestionnaireError(f"{q.ref} is defined twice")
            self._all[q.ref] = q
            if q.specialty not in self._current or self._current[q.specialty].version < q.version:
                self._current[q.specialty] = q

    @classmethod
    def load(cls, directory: Path = HERE) -> Questionnaires:
        return cls(load_file(p) for p in sorted(directory.glob("*.json")))

    def current(self, specialty: str) -> Questionnaire | None:
        return self._current.get(specialty)

    def get(self, ref: str) -> Questionnaire | None:
        return self._all.get(ref)

    @property
    def specialties(self) -> list[str]:
        return sorted(self._current)


def validate(q: Questionnaire, answers: Any) -> dict[str, Any]:
    """``answers`` checked against ``q`` (absent optional fields left out); :class:`AnswerError`."""
    if not isinstance(answers, dict):
        raise AnswerError("answers", "must be an object of field id -> value")
    by_id = {f.id: f for f in q.fields}
    for name in answers:
        if name not in by_id:
            raise AnswerError(str(name)[:64], f"not a question of {q.ref}")
        if by_id[name].type == "photos":
            raise AnswerError(name, "photos are attachments with this view, not answers")
    out: dict[str, Any] = {}
    for f in q.fields:
        if f.type == "photos":
            continue
        value = answers.get(f.id)
        if value is None:
            if f.required:
                raise AnswerError(f.id, "is required")
            continue
        out[f.id] = _check(f, value)
    return out


def _check(f: Field, value: Any) -> Any:
    if f.type == "choice":
        if value not in f.options:
            raise AnswerError(f.id, f"must be one of {', '.join(f.options)}")
        return value
    if f.type == "multi":
        if not isinstance(value, list) or any(v not in f.options for v in value):
            raise AnswerError(f.id, f"must be a list of {', '.join(f.options)}")
        if len(set(value)) != len(value):
            raise AnswerError(f.id, "repeats a choice")
        if f.required and not value:
            raise AnswerError(f.id, "is required")
        return list(value)
    if f.type == "boolean":
        if not isinstance(value, bool):
            raise AnswerError(f.id, "must be true or false")
        return value
    if f.type == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise AnswerError(f.id, "must be a number")
        if f.min is not None and value < f.min:
            raise AnswerError(f.id, f"must be at least {f.min:g}")
        if f.max is not None and value > f.max:
            raise AnswerError(f.id, f"must be at most {f.max:g}")
        return value
    if not isinstance(value, str):
        raise AnswerError(f.id, "must be text")
    if len(value) > f.max_length:
        raise AnswerError(f.id, f"must be at most {f.max_length} characters")
    if f.required and not value.strip():
        raise AnswerError(f.id, "is required")
    return value


def missing_photos(q: Questionnaire, views: Iterable[str | None]) -> tuple[str, str] | None:
    """The first (field, view) of a required photo field no attachment shows, or None."""
    have = set(views)
    for fid, needed in q.photo_views().items():
        for view in needed:
            if view not in have:
                return fid, view
    return None
