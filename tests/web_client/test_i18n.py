"""The pages' dictionaries (web_client/static/i18n/*.js): the same keys in every language,
and every key the pages name literally exists (a missing one shows as its key on screen)."""

from __future__ import annotations

import re
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "web_client" / "static"
KEY = re.compile(r'^\s+"([^"]+)":', re.M)
# t("key"...), setText(el, "key"...), "data-i18n": "key", data-i18n="key" (literal keys only).
USED = [re.compile(r'\bt\("([a-z0-9_.]+)"'), re.compile(r'setText\([^,]+, "([a-z0-9_.]+)"'),
        re.compile(r'"data-i18n(?:-aria-label)?": "([a-z0-9_.]+)"'), re.compile(r'data-i18n(?:-aria-label)?="([a-z0-9_.]+)"')]


def keys(lang: str) -> set[str]:
    return set(KEY.findall((STATIC / "i18n" / f"{lang}.js").read_text()))


def test_every_language_has_the_same_keys() -> None:
    english, french = keys("en"), keys("fr")
    assert english - french == set(), "missing in French"
    assert french - english == set(), "missing in English"


def test_every_key_the_pages_name_exists() -> None:
    known = keys("en")
    missing = set()
    for path in [*STATIC.glob("*.js"), *STATIC.glob("*.html")]:
        text = path.read_text()
        for pattern in USED:
            missing |= {f"{path.name}: {key}" for key in pattern.findall(text) if key not in known}
    assert not missing, sorted(missing)
