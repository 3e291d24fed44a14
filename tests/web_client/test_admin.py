"""The admin page: who is online, the queue, and the emergencies a site sent above its rate
(``visit.flagged``), marked in the queue and listed, real server, real Chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.signalling.client import SigClient
from tests.support import loopback_settings, start_server
from tests.web_client.conftest import Console, open_page

VISIT: dict[str, Any] = {"patient_ref": "PAT-ADM-1", "reason": "test", "specialty": "general", "priority": "emergency",
         "consent_teleconsultation": True}


async def test_a_flagged_emergency_is_listed_and_marked_in_the_queue(tmp_path: Path, chromium) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(loopback_settings(tmp_path / "data", signalling={
        "site_requests_per_window": 1, "site_request_window_s": 600.0}))
    console = Console()
    nurse = await SigClient.connect(server.ws_url, server.tokens.issue_access("nurse", "nurse-1", site="cabin-demo"))
    try:
        token = server.tokens.issue_access("admin", "admin-1", name="Admin One")
        page = await open_page(chromium, f"{server.url}/admin#token={token}", console=console)
        await page.wait_for_function("window.teleconsult && window.teleconsult.signalling.state === 'open'",
                                     timeout=15000)
        assert await page.locator("#flagged-empty").is_visible()
        within = (await nurse.request("visit.request", **VISIT))["consultation"]
        above = (await nurse.request("visit.request", **VISIT))["consultation"]
        assert within["flag"] is None and above["flag"] == "site_rate"
        item = page.locator(f"#flagged li[data-id='{above['id']}']")
        await item.wait_for(timeout=10000)
        assert "cabin-demo" in await item.text_content()
        assert await page.locator("#flagged-empty").is_hidden()
        await page.locator(f"#admin-queue li[data-id='{above['id']}'][data-flagged=true]").wait_for(timeout=10000)
        assert await page.get_attribute(f"#admin-queue li[data-id='{within['id']}']", "data-flagged") == "false"
        assert not console.errors, console.errors
        assert "PAT-ADM" not in console.text()
        await page.context.close()
    finally:
        await nurse.close()
        await server.server.close()
