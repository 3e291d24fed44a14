"""Ids that become path components (a consultation's directory, a still's file name)."""

from __future__ import annotations

import re

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_id(value: str, what: str = "consultation id") -> str:
    """``value`` if it stays inside the directory it names; ``ValueError`` otherwise."""
    if not _ID_RE.match(value) or ".." in value:
        raise ValueError(f"invalid {what}: {value!r}")
    return value
