"""The pages with `serve --media-workers 2` (a real redis-server, real Chromium): the room is on a
worker, another origin than the pages'; the call's media requests go on that worker's socket and
both pages decode each other's camera (and the recording, asked of the pages' origin, runs on
that worker), and again on the other worker once the first is killed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.teleconsult.test_workers import _tokens, serve_workers, stop_served
from tests.web_client.conftest import Console
from tests.web_client.test_consultation import Pages, decoded_frames_grow, into_call

pytestmark = pytest.mark.timeout(180)


async def test_a_consultation_whose_room_is_on_a_media_worker(tmp_path: Path, redis_url: str, chromium) -> None:  # type: ignore[no-untyped-def]
    served = serve_workers(tmp_path, redis_url, 2)
    tokens = _tokens(tmp_path)
    console = Console()
    try:
        nurse, physician = await into_call(Pages(served.url, tokens), chromium, console, record=True,
                                           timeout_ms=30000)
        for page in (physician, nurse):
            await decoded_frames_grow(page)
            # The room is on a worker: the media went on that worker's socket, not the page's.
            where = await page.evaluate("""() => {
              const id = window.teleconsult.view.consultation.id;
              return {node: window.teleconsult.rooms.sfuUrl(id), page: location.origin,
                      media: window.teleconsult.call.media.other?.origin || null};
            }""")
            assert where["node"] in {w.url for w in served.workers}, where
            assert where["media"] == where["node"] != where["page"], where
        # Recording runs where the room is: the page asks its own origin, which passes it on.
        await physician.click("#record")
        for page in (physician, nurse):
            await page.locator("#recording").wait_for(timeout=15000)
        await physician.click("#record")
        await nurse.locator("#recording").wait_for(state="hidden", timeout=15000)

        # The worker hosting the room dies (SIGKILL): the room is re-placed on the other one,
        # both pages follow it (room.moved) and decode each other's camera again.
        hosting = next(w for w in served.workers if w.url == where["node"])
        for page in (physician, nurse):
            assert await page.evaluate("document.querySelector('#call').dataset.moved || '0'") == "0"
        os.kill(hosting.pid, signal.SIGKILL)
        killed = time.monotonic()
        for page in (physician, nurse):
            await page.wait_for_function("document.querySelector('#call').dataset.moved === '1'", timeout=30000)
        for page in (physician, nurse):
            await decoded_frames_grow(page)
            now = await page.evaluate("window.teleconsult.rooms.sfuUrl(window.teleconsult.view.consultation.id)")
            assert now != hosting.url and now in {w.url for w in served.workers}
        print(f"video again on both pages {time.monotonic() - killed:.1f} s after the worker was killed")
        assert not console.errors, console.text()
    finally:
        stop_served(served)
