"""Questionnaires as data: the shipped files load, broken ones are refused with what is wrong,
and answers are checked with an error naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from signalling.expertise.questionnaire import (AnswerError, QuestionnaireError, Questionnaires, load_file,
                                                missing_photos, parse, validate)

DERMA: dict[str, Any] = {"location": "face", "duration_weeks": 6, "evolution": "growing",
                         "abcde_asymmetry": True, "abcde_border": False, "abcde_colour": True,
                         "abcde_diameter_mm": 7, "abcde_evolving": True, "symptoms": ["itching"]}


def shipped() -> Questionnaires:
    return Questionnaires.load()


def test_dermatology_and_wound_care_ship() -> None:
    qs = shipped()
    assert {"dermatology", "wound_care"} <= set(qs.specialties)
    derma = qs.current("dermatology")
    assert derma is not None and derma.ref == "dermatology@1"
    assert derma.photo_views() == {"photos": ("close_up", "distance")}
    assert qs.get("wound_care@1") is not None and qs.current("cardiology") is None


def test_valid_answers_pass() -> None:
    derma = shipped().current("dermatology")
    assert derma is not None
    assert validate(derma, DERMA) == DERMA


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"location": "moon"}, "location", "must be one of"),
    ({"location": None}, "location", "is required"),
    ({"duration_weeks": -1}, "duration_weeks", "at least 0"),
    ({"duration_weeks": "six"}, "duration_weeks", "must be a number"),
    ({"duration_weeks": True}, "duration_weeks", "must be a number"),
    ({"abcde_border": "yes"}, "abcde_border", "true or false"),
    ({"symptoms": ["itching", "itching"]}, "symptoms", "repeats"),
    ({"symptoms": ["sneezing"]}, "symptoms", "must be a list of"),
    ({"history": "x" * 2001}, "history", "at most 2000"),
    ({"colour_of_car": "red"}, "colour_of_car", "not a question"),
    ({"photos": ["a"]}, "photos", "attachments"),
])
def test_a_wrong_answer_names_its_field(change: dict[str, Any], field: str, words: str) -> None:
    derma = shipped().current("dermatology")
    assert derma is not None
    answers = {k: v for k, v in {**DERMA, **change}.items() if v is not None}
    with pytest.raises(AnswerError) as err:
        validate(derma, answers)
    assert err.value.field == field and words in str(err.value)


def test_answers_must_be_an_object() -> None:
    derma = shipped().current("dermatology")
    assert derma is not None
    with pytest.raises(AnswerError, match="answers"):
        validate(derma, ["face"])


def test_missing_photos() -> None:
    derma = shipped().current("dermatology")
    assert derma is not None
    assert missing_photos(derma, []) == ("photos", "close_up")
    assert missing_photos(derma, ["close_up", None]) == ("photos", "distance")
    assert missing_photos(derma, ["distance", "close_up"]) is None


def good() -> dict[str, Any]:
    return {"specialty": "demo", "version": 2, "title": {"fr": "T", "en": "T"},
            "fields": [{"id": "a", "type": "choice", "options": ["x"], "label": {"fr": "A", "en": "A"}}]}


@pytest.mark.parametrize(("mutate", "words"), [
    (lambda d: d.update(version=0), "version"),
    (lambda d: d.update(specialty="Derma"), "specialty"),
    (lambda d: d.update(title={"fr": "T"}), "title"),
    (lambda d: d.update(fields=[]), "fields"),
    (lambda d: d["fields"][0].update(type="slider"), "type must be one of"),
    (lambda d: d["fields"][0].update(options=[]), "options"),
    (lambda d: d["fields"][0].update(colour="red"), "unknown keys"),
    (lambda d: d["fields"].append(dict(d["fields"][0])), "repeat"),
    (lambda d: d["fields"][0].update(type="number", min=3, max=1, options=None), "min is above max"),
])
def test_a_broken_questionnaire_is_refused(mutate: Any, words: str) -> None:
    data = good()
    mutate(data)
    if data["fields"] and data["fields"][0].get("options") is None:
        data["fields"][0].pop("options", None)
    with pytest.raises(QuestionnaireError, match=words):
        parse(data)


def test_files_are_named_for_their_content(tmp_path: Path) -> None:
    (tmp_path / "demo.v2.json").write_text(json.dumps(good()))
    assert Questionnaires.load(tmp_path).current("demo") is not None
    (tmp_path / "demo.v3.json").write_text(json.dumps(good()))
    with pytest.raises(QuestionnaireError, match="differ from its name"):
        load_file(tmp_path / "demo.v3.json")
    (tmp_path / "demo.json").write_text("{}")
    with pytest.raises(QuestionnaireError, match="named"):
        load_file(tmp_path / "demo.json")


def test_the_highest_version_is_current(tmp_path: Path) -> None:
    old, new = good(), good()
    old["version"], new["version"] = 1, 2
    qs = Questionnaires([parse(old), parse(new)])
    current = qs.current("demo")
    assert current is not None and current.version == 2 and qs.get("demo@1") is not None
