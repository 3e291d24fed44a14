"""The WebSocket endpoint ``/ws``: the I/O around the protocol and the service.

Per connection: the Origin is checked before upgrading; aiohttp's heartbeat
pings (a dead peer is dropped, its presence with it) and ``max_msg_size`` are
set; a token bucket limits messages per second; a bounded send queue drained
by one writer task decouples the service from the socket (a client that does
not read is disconnected, never waited for). Requests of one connection are
handled in order; while one runs, the next frames are read ahead
(:class:`Frames`), so a socket that closes meanwhile detaches its session at
once, whatever the request waits for (the request finishes in the background,
within ``ABANDONED_REQUEST_S``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any, Awaitable, TypeVar

from aiohttp import WSMessage, WSMsgType, web
from prometheus_client import Counter, Gauge

from core import appkeys
from core.http import json_error
from signalling import protocol as p
from signalling.appkeys import SIGNALLING
from signalling.protocol import ErrorCode, ProtocolError
from signalling.service import SignallingService
from signalling.session import Session

logger = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
CLOSE_AUTH = 4401
CLOSE_SLOW = 4408
READ_AHEAD = 16
"""Frames read ahead while a request runs (beyond, the socket waits for the request)."""
ABANDONED_REQUEST_S = 30.0
"""A request still running when its socket closed may finish for this long."""

T = TypeVar("T")
_CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.clock = clock
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Connection:
    """One socket of a session: what the hub sends to."""

    def __init__(self, ws: web.WebSocketResponse, session: Session, queue_size: int) -> None:
        self.ws = ws
        self.session_id = session.id
        self.subject = session.sub
        self.role = session.role.value
        self.site = session.principal.site
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self.closing = False
        self.writer = asyncio.create_task(self._write())

    def send_text(self, text: str) -> None:
        if self.closing:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            logger.warning("slow consumer disconnected", extra={"session": self.session_id})
            self.close_soon(CLOSE_SLOW, "slow_consumer", drain=False)

    def close_soon(self, code: int, reason: str, drain: bool = True) -> None:
        """Close after what is queued went out (``drain``), or now (a slow consumer)."""
        if self.closing:
            return
        self.closing = True
        if drain:
            try:
                self.queue.put_nowait((code, reason))  # type: ignore[arg-type]
                return
            except asyncio.QueueFull:
                pass
        self.writer.cancel()
        asyncio.ensure_future(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code=code, message=reason.encode())
        except Exception:
            pass

    async def _write(self) -> None:
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, tuple):
                    await self._close(*item)
                    return
                await self.ws.send_str(item)
        except (ConnectionError, RuntimeError):
            pass  # the socket is gone; the reader notices

    def stop(self) -> None:
        self.closing = True
        self.writer.cancel()


class SocketClosed(Exception):
    """The socket closed while a request ran (``Frames.running``, still running)."""


class Frames:
    """A socket's frames, in order (``async for``). While a request runs
    (:meth:`unless_closed`), the next frames are read ahead: a close among them ends the
    wait at once (issue 17: a ``consultation.end`` stuck on a media close kept its socket
    handler, hence its physician's presence, for good)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.closed = False
        self.running: asyncio.Future[Any] | None = None
        """The request :meth:`unless_closed` was waiting for when it left early."""
        self.running_type = ""
        self._ahead: deque[WSMessage] = deque()
        self._reading: asyncio.Task[WSMessage] | None = None

    def __aiter__(self) -> "Frames":
        return self

    async def __anext__(self) -> WSMessage:
        if self._ahead:
            frame = self._ahead.popleft()
        elif self._reading is not None:
            reading, self._reading = self._reading, None
            frame = await reading
        else:
            frame = await self.ws.receive()
        if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            raise StopAsyncIteration
        return frame

    async def unless_closed(self, request: Awaitable[T], type_: str) -> T:
        """``request``'s result, or :class:`SocketClosed` as soon as the socket closes;
        ``request`` then goes on running (:attr:`running`), as when this wait is cancelled."""
        task = asyncio.ensure_future(request)
        self.running, self.running_type = task, type_
        while not task.done():
            if self.closed:
                raise SocketClosed()
            if len(self._ahead) >= READ_AHEAD:
                return await task
            if self._reading is None:
                self._reading = asyncio.ensure_future(self.ws.receive())
            await asyncio.wait((task, self._reading), return_when=asyncio.FIRST_COMPLETED)
            if self._reading.done():
                reading, self._reading = self._reading, None
                try:
                    frame = reading.result()
                except Exception:  # noqa: BLE001 - a socket that cannot be read is a closed one
                    frame = WSMessage(WSMsgType.ERROR, None, None)
                self._ahead.append(frame)
                self.closed = frame.type in _CLOSED
        self.running = None
        return task.result()

    def stop(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None


async def _settle(request: "asyncio.Future[Any]", type_: str, session_id: str) -> None:
    """The end of a request whose socket closed: its answer has nowhere to go."""
    try:
        await request
    except ProtocolError:
        pass
    except Exception:
        logger.exception("request failed", extra={"type": type_, "session": session_id})


def origin_allowed(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser (device agent, bench): tokens still apply
    settings = request.app[appkeys.SETTINGS]
    own = {f"{request.scheme}://{request.host}", settings.base_url}
    return origin.rstrip("/") in own or origin.rstrip("/") in {o.rstrip("/") for o in settings.server.allowed_origins}


class WsMetrics:
    def __init__(self, registry: Any) -> None:
        self.connections = Gauge("teleconsult_signalling_connections", "Open signalling sockets",
                                 registry=registry)
        self.messages = Counter("teleconsult_signalling_messages", "Requests received by type",
                                ["type"], registry=registry)
        self.errors = Counter("teleconsult_signalling_errors", "Error replies by code", ["code"],
                              registry=registry)


WS_METRICS = web.AppKey("signalling_ws_metrics", WsMetrics)


async def websocket(request: web.Request) -> web.StreamResponse:
    if not origin_allowed(request):
        return json_error(403, "forbidden", "origin not allowed")
    service: SignallingService = request.app[SIGNALLING]
    metrics = request.app[WS_METRICS]
    sig = service.sig
    ws = web.WebSocketResponse(heartbeat=sig.heartbeat_s, max_msg_size=sig.max_message_bytes)
    await ws.prepare(request)
    frames = Frames(ws)
    metrics.connections.inc()
    bucket = TokenBucket(sig.max_messages_per_s, sig.max_messages_per_s * 2)
    session: Session | None = None
    conn: Connection | None = None
    hello_timer = asyncio.get_running_loop().call_later(
        HELLO_TIMEOUT_S, lambda: asyncio.ensure_future(ws.close(code=CLOSE_AUTH, message=b"no hello")))

    async def send(message: dict[str, Any]) -> None:
        if conn is not None:
            conn.send_text(json.dumps(message, separators=(",", ":")))
        else:
            await ws.send_str(json.dumps(message, separators=(",", ":")))

    async def send_error(exc: ProtocolError) -> None:
        metrics.errors.labels(exc.code.value).inc()
        await send(exc.to_wire())

    try:
        async for frame in frames:
            if frame.type is WSMsgType.BINARY:
                await send_error(ProtocolError(ErrorCode.BAD_JSON, "frames are JSON text"))
                continue
            if frame.type is not WSMsgType.TEXT:
                break
            limited = not bucket.take()
            try:
                data = p.parse_frame(frame.data)
                if limited:
                    mid = data.get("id") if isinstance(data.get("id"), (str, int)) else None
                    await send_error(ProtocolError(ErrorCode.RATE_LIMITED, "too many messages; this one was dropped",
                                                   mid))
                    continue
                mid, req = p.parse_request(data, session.role.value if session is not None else None)
            except ProtocolError as exc:
                metrics.messages.labels("invalid").inc()
                await send_error(exc)
                continue
            type_ = data["type"]
            metrics.messages.labels(type_).inc()
            if session is None:
                if type_ != "hello":
                    await send_error(ProtocolError(ErrorCode.UNAUTHENTICATED, "say hello first", mid))
                    continue
                try:
                    def factory(s: Session) -> Connection:
                        return Connection(ws, s, sig.send_queue_size)
                    session, reply = await service.hello(factory, req)
                except ProtocolError as exc:
                    exc.id = mid
                    await send_error(exc)
                    await ws.close(code=CLOSE_AUTH, message=exc.code.value.encode())
                    break
                except Exception:
                    # Past the upgrade, an escaping exception would become "HTTP/1.1 500" written
                    # onto the socket: answer on the protocol instead.
                    logger.exception("hello failed")
                    await send_error(ProtocolError(ErrorCode.INTERNAL, "internal error", mid))
                    await ws.close(code=CLOSE_AUTH, message=b"internal")
                    break
                hello_timer.cancel()
                assert isinstance(session.conn, Connection)
                conn = session.conn
                await send(reply.to_wire(mid))
                continue
            if conn is None or session.conn is not conn:
                break  # taken over by a newer socket
            try:
                result = await frames.unless_closed(service.handle(session, req), type_)
                await send(result.to_wire(mid))
            except SocketClosed:
                break
            except ProtocolError as exc:
                exc.id = mid
                await send_error(exc)
            except Exception:
                logger.exception("request failed", extra={"type": type_, "session": session.id})
                await send_error(ProtocolError(ErrorCode.INTERNAL, "internal error", mid))
    finally:
        hello_timer.cancel()
        frames.stop()
        running = frames.running
        if running is not None and not running.done() and session is not None:
            # Its answer has nowhere to go; the session detaches now, not when it ends.
            service.ctx.tasks.spawn_within(_settle(running, frames.running_type, session.id), ABANDONED_REQUEST_S,
                                           "request abandoned by its socket",
                                           {"type": frames.running_type, "session": session.id})
        metrics.connections.dec()
        if conn is not None and session is not None:
            conn.stop()
            await service.detach(session, conn)
    return ws
