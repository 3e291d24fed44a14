"""The one vocabulary: its JS copy is generated, sources know their kind, acts are well named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.vocabulary import (DEVICES, MEDIA_DEVICES, MEDIA_SOURCES, RECORDED, STILL_DEVICES, Act, MediaKind, Role,
                             Source, render_js)

JS = Path(__file__).resolve().parents[2] / "web_client" / "static" / "vocabulary.js"


def test_the_pages_copy_is_generated_from_the_python_vocabulary() -> None:
    assert JS.read_text() == render_js(), (
        "web_client/static/vocabulary.js drifted: run python -m core.vocabulary web_client/static/vocabulary.js")


def test_every_source_has_a_kind() -> None:
    for source in Source:
        assert isinstance(source.kind, MediaKind)
    assert [s for s in Source if s.kind is MediaKind.DATA] == [Source.VITALS]
    assert set(MEDIA_SOURCES) == {s for s in Source if s.is_media}
    assert set(MEDIA_DEVICES) < set(DEVICES) and set(STILL_DEVICES) <= set(MEDIA_DEVICES)
    assert all(s.is_media for s in RECORDED) and Source.SCREEN not in RECORDED
    assert Source.parse("otoscope") is Source.OTOSCOPE
    with pytest.raises(ValueError, match=r"unknown source 'xray' \(known: camera, microphone, "):
        Source.parse("xray")


def test_acts_are_unique_lower_case_dotted_names() -> None:
    values = [a.value for a in Act]
    assert len(values) == len(set(values))
    for value in values:
        assert re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*", value), value


def test_members_are_their_wire_strings() -> None:
    # Code that still holds plain strings (a parsed message, a token claim) meets the same values.
    assert Role.NURSE == "nurse" and f"{Role.NURSE}" == "nurse"
    assert f"{Source.CAMERA.kind}" == "video"
    keyed: dict[str, int] = {Source.CAMERA: 1}
    assert keyed["camera"] == 1
