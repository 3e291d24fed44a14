"""JSON from untrusted peers, with a bounded nesting depth.

The standard parser recurses once per nesting level: a frame of a few thousand
``[`` raises ``RecursionError`` (not a ``ValueError``), which escapes the
handlers that expect bad JSON to be a ``ValueError``, and a deep value that did
parse can still blow the stack of whatever walks it later. :func:`loads`
measures the depth first, without recursing, and refuses what is too deep with
:class:`JsonTooDeep`, a ``ValueError``: every caller's "not JSON" path answers
it (``bad_json`` on the socket, 400 on REST) and the connection goes on.

The depth is measured on the text: escaped characters are dropped, then
strings, and the brackets left are counted. Each step is a linear scan in C,
and a text with fewer brackets than the limit skips them.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

MAX_DEPTH = 32
"""Nesting allowed in a message or a REST body (protocol messages use 3 or 4 levels)."""

_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonTooDeep(ValueError):
    """A JSON text nested deeper than allowed."""


class JsonNotUnicode(ValueError):
    """A JSON text whose ``\\u`` escapes make a lone surrogate: a string that no UTF-8 encoder
    (a JWT library, SQLite, Redis, a log file) accepts, which would fail wherever it went."""


def nesting_depth(text: str) -> int:
    """How deeply ``text``'s arrays and objects nest (0 for a scalar). For invalid JSON, a
    number the parser's own error will make moot."""
    if text.count("[") + text.count("{") == 0:
        return 0
    # After the escapes are gone every '"' delimits a string, so strings match without backtracking.
    bare = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    return max(itertools.accumulate(map(_STEP.__getitem__, bare)), default=0)


def loads(data: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` of untrusted ``data``: ``ValueError`` for invalid JSON or text (bytes that are
    not UTF-8 included), :class:`JsonTooDeep` for nesting beyond ``max_depth``,
    :class:`JsonNotUnicode` for a string with a lone surrogate."""
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    if text.count("[") + text.count("{") > max_depth and nesting_depth(text) > max_depth:
        raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels")
    value = json.loads(text)
    if _SURROGATE_ESCAPE.search(text):  # rare: only then is the value encoded once to check it
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonNotUnicode("JSON text holds a lone surrogate (a \\u escape that is no character)") from None
    return value


__all__ = ["MAX_DEPTH", "JsonNotUnicode", "JsonTooDeep", "loads", "nesting_depth"]
