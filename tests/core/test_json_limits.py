"""Untrusted JSON: the nesting depth is measured without recursing and refused as a ValueError."""

from __future__ import annotations

import json
import time

import pytest

from core.json_limits import MAX_DEPTH, JsonNotUnicode, JsonTooDeep, loads, nesting_depth


def test_depth_counts_structure_not_strings() -> None:
    assert nesting_depth('{"a": [1, {"b": "[[[[{{{{"}], "c": "\\"[["}') == 3
    assert nesting_depth('"plain"') == 0
    assert nesting_depth("[[]]") == 2


def test_deep_json_is_a_value_error_not_a_recursion_error() -> None:
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RecursionError):
        json.loads(text)  # what the standard parser does with it
    with pytest.raises(JsonTooDeep, match=f"deeper than {MAX_DEPTH}"):
        loads(text)
    with pytest.raises(ValueError):
        loads('{"a":' * 5000)
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(JsonTooDeep):
        loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))


def test_bytes_and_bad_text() -> None:
    assert loads(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError):
        loads(b"\xff\xfe{")


def test_hostile_texts_cost_little() -> None:
    texts = ["[" * 65536, "[]" * 32768, '"\\' * 32768, '"' + "\\\"[" * 20000]
    started = time.perf_counter()
    for text in texts:
        with pytest.raises(ValueError):
            loads(text)
    assert time.perf_counter() - started < 0.5


def test_lone_surrogates_are_refused_pairs_kept() -> None:
    """``"\\ud800"`` parses to a string that UTF-8 cannot encode: PyJWT, SQLite and Redis then
    raised UnicodeEncodeError (an ``internal`` error, a 500). A pair is a character."""
    for text in ('{"token": "ab\\ud800cd"}', '{"\\udfff": 1}', '["x", ["\\uDC00"]]', '"\\ud83d"'):
        with pytest.raises(JsonNotUnicode):
            loads(text)
    assert loads('{"a": "\\ud83d\\ude00"}') == {"a": "\U0001F600"}
    assert loads('"\\\\ud800"') == "\\ud800"  # an escaped backslash: no surrogate at all
