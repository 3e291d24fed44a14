"""The request context middleware: one error shape, outages answered 503, never a traceback."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from core import appkeys
from core.http import read_body, request_context
from core.metrics import Metrics


class StoreDown(ConnectionError):
    """Stands for a component's own outage type (e.g. redis' ConnectionError)."""


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_an_outage_is_503_unavailable_and_a_bug_stays_500(caplog: pytest.LogCaptureFixture) -> None:
    async def down(request: web.Request) -> web.Response:
        raise StoreDown("connection refused")

    async def bug(request: web.Request) -> web.Response:
        raise KeyError("oops")

    app = web.Application(middlewares=[request_context])
    app[appkeys.METRICS] = Metrics()
    outages: list[type[BaseException]] = [StoreDown]
    app[appkeys.OUTAGES] = outages
    app.router.add_get("/down", down)
    app.router.add_get("/bug", bug)
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            with caplog.at_level(logging.WARNING, logger="core.http"):
                async with http.get(f"{url}/down") as r:
                    assert r.status == 503 and r.headers["Retry-After"]
                    assert (await r.json())["error"] == "unavailable"
            assert not any(r.exc_info for r in caplog.records), "an outage is no bug: no traceback"
            async with http.get(f"{url}/bug") as r:
                assert r.status == 500 and (await r.json())["error"] == "internal"
    finally:
        await runner.cleanup()


async def test_a_body_is_read_whole_across_segments_and_refused_past_its_limit() -> None:
    async def echo_length(request: web.Request) -> web.Response:
        return web.json_response({"size": len(await read_body(request, 10_000))})

    async def slowly(parts: list[bytes]) -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await asyncio.sleep(0.05)  # each part its own segment, as on a slow uplink

    app = web.Application(middlewares=[request_context])
    app[appkeys.METRICS] = Metrics()
    app.router.add_post("/body", echo_length)
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/body", data=slowly([b"x" * 1000] * 5)) as r:
                assert r.status == 200 and (await r.json())["size"] == 5000
            async with http.post(f"{url}/body", data=slowly([b"x" * 4000] * 3)) as r:
                assert r.status == 413 and (await r.json())["error"] == "too_large"
            async with http.post(f"{url}/body", data=b"x" * 10_001) as r:  # announced by Content-Length
                assert r.status == 413 and (await r.json())["error"] == "too_large"
            async with http.post(f"{url}/body", data=b"x" * 10) as r:
                assert r.status == 200, "the service keeps serving"
    finally:
        await runner.cleanup()
