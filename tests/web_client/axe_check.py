"""axe-core in the browser pages: the rules' serious and critical violations, as a list of
readable lines (empty when there are none). The axe script is the one the PyPI package
``axe-playwright-python`` ships."""

from __future__ import annotations

from typing import Any

from axe_playwright_python.base import AXE_SCRIPT

SERIOUS = ("serious", "critical")


async def axe_violations(page, impacts: tuple[str, ...] = SERIOUS) -> list[str]:  # type: ignore[no-untyped-def]
    """Run axe on ``page`` (the tests' contexts bypass the page's CSP to inject it)."""
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.add_script_tag(content=AXE_SCRIPT)
    results: dict[str, Any] = await page.evaluate(
        "axe.run(document, {resultTypes: ['violations']})")
    out = []
    for violation in results["violations"]:
        if violation.get("impact") not in impacts:
            continue
        targets = [", ".join(node.get("target", [])) for node in violation.get("nodes", [])][:5]
        out.append(f"{violation['id']} ({violation['impact']}): {violation['help']} at {targets}")
    return out
