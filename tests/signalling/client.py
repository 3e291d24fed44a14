"""A small signalling client for tests: requests by id, events collected, waits with timeouts."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, Callable

import aiohttp


class SigClient:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http = session
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.replies: dict[Any, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.reader = asyncio.ensure_future(self._read())
        self.hello: dict[str, Any] = {}

    @classmethod
    async def connect(cls, ws_url: str, token: str | None = None, *, resume: str | None = None,
                      headers: dict[str, str] | None = None, **ws_kw: Any) -> "SigClient":
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(ws_url, headers=headers or {}, **ws_kw)
        client = cls(http, ws)
        if token is not None:
            fields: dict[str, Any] = {"version": 1, "token": token}
            if resume:
                fields["resume"] = resume
            client.hello = await client.request("hello", **fields)
        return client

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                if data.get("id") is not None:
                    self.replies[data["id"]] = data
                else:
                    self.events.append(data)
                self._changed.set()
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            self._changed.set()

    async def send(self, data: dict[str, Any] | str) -> None:
        await self.ws.send_str(data if isinstance(data, str) else json.dumps(data))

    async def call(self, type_: str, timeout: float = 10, **fields: Any) -> dict[str, Any]:
        """Send a request; its reply (``.ok`` or ``error``)."""
        mid = next(self._ids)
        await self.send({"type": type_, "id": mid, **fields})
        return await self.wait(lambda: self.replies.pop(mid, None), timeout, f"reply to {type_}")

    async def request(self, type_: str, timeout: float = 10, **fields: Any) -> dict[str, Any]:
        reply = await self.call(type_, timeout, **fields)
        assert reply["type"] == f"{type_}.ok", reply
        return reply

    async def error(self, type_: str, code: str, **fields: Any) -> dict[str, Any]:
        reply = await self.call(type_, **fields)
        assert reply["type"] == "error" and reply["code"] == code, reply
        return reply

    async def wait(self, found: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = found()
            if value:
                return value
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; events: {[e['type'] for e in self.events]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    async def event(self, type_: str, timeout: float = 10, pop: bool = True, **match: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for i, e in enumerate(self.events):
                if e["type"] == type_ and all(_get(e, k) == v for k, v in match.items()):
                    if pop:
                        del self.events[i]
                    return e
            return None
        return await self.wait(find, timeout, f"event {type_} {match}")

    def has_event(self, type_: str, **match: Any) -> bool:
        return any(e["type"] == type_ and all(_get(e, k) == v for k, v in match.items()) for e in self.events)

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        await self.http.close()

    async def drop(self) -> None:
        """Die without a close handshake (as a lost network would)."""
        transport = self.ws._response.connection.transport if self.ws._response.connection else None  # type: ignore[union-attr]
        if transport is not None:
            transport.abort()
        self.reader.cancel()
        await self.http.close()


def _get(event: dict[str, Any], path: str) -> Any:
    value: Any = event
    for part in path.split("__"):
        value = value.get(part) if isinstance(value, dict) else None
    return value
