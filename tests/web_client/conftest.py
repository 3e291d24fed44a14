"""Helpers for the browser pages' tests: Chromium contexts per language, a
Chromium that denies camera and microphone, screenshots under ARTIFACTS."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.support import ARTIFACTS, CHROMIUM_ARGS, launched_chromium

SCREENSHOTS = ARTIFACTS / "screenshots"


@pytest.fixture
async def denied_chromium() -> AsyncIterator[object]:
    """Chromium whose permission prompts for camera and microphone are answered "deny"."""
    args = ["--use-fake-ui-for-media-stream=deny" if a == "--use-fake-ui-for-media-stream" else a
            for a in CHROMIUM_ARGS]
    async with launched_chromium(args) as browser:
        yield browser


class Console:
    """Everything a page printed, to check that no patient data reaches the console."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.errors: list[str] = []

    def text(self) -> str:
        return "\n".join(self.lines + self.errors)


async def open_page(browser, url: str, *, locale: str = "en-US", console: Console | None = None,
                    viewport: dict[str, int] | None = None, enforce_csp: bool = False):  # type: ignore[no-untyped-def]
    """A new context (own sessionStorage, own language) and a page at ``url``.

    Playwright's polling predicates are evaluated with ``eval``, which the pages'
    Content-Security-Policy forbids: tests bypass it unless ``enforce_csp``.
    """
    context = await browser.new_context(locale=locale, viewport=viewport or {"width": 1400, "height": 900},
                                        bypass_csp=not enforce_csp)
    page = await context.new_page()
    if console is not None:
        page.on("console", lambda m: console.lines.append(m.text))
        page.on("pageerror", lambda e: console.errors.append(str(e)))
    await page.goto(url)
    return page


async def screenshot(page, name: str, *, full_page: bool = True) -> Path:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    if full_page:
        await page.evaluate("window.scrollTo(0, 0)")  # the sticky header at the top, where it belongs
    await page.screenshot(path=str(path), full_page=full_page)
    return path
