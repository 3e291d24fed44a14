"""HTTP plumbing shared by every component: the one error shape and the request middleware."""

from __future__ import annotations

import logging
import time
import uuid
from http import HTTPStatus
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from core import appkeys, json_limits, logs
from core.auth import AuthError

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


MAX_JSON_BYTES = 1 << 20
"""The largest JSON body any endpoint reads (a report draft is a few kilobytes)."""


class BodyTooLarge(Exception):
    """A request body over its route's limit: the middleware answers 413 ``too_large``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than {limit} bytes")
        self.limit = limit


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, however many TCP segments it arrives in; :class:`BodyTooLarge`
    beyond ``limit`` bytes, before more than ``limit`` bytes are held.

    ``request.content.read(n)`` returns only what has arrived so far: on a real link a 2 KB
    SDP offer comes in two segments and half of it was parsed. The stream is read to its end
    here instead, and ``Content-Length`` refuses an announced oversize body before any read."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def json_error(status: int, error: str, reason: str) -> web.Response:
    """The one error shape of every HTTP endpoint."""
    return web.json_response({"error": error, "reason": reason}, status=status)


async def json_body(request: web.Request, max_depth: int = json_limits.MAX_DEPTH) -> Any:
    """The request's JSON body. ``ValueError`` (the handler's 400) when it is not UTF-8, not
    JSON, or nested deeper than ``max_depth`` (``aiohttp``'s ``request.json()`` would raise
    ``RecursionError`` there: a 500). :class:`BodyTooLarge` over :data:`MAX_JSON_BYTES`."""
    return json_limits.loads(await read_body(request, MAX_JSON_BYTES), max_depth)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex[:16]
    token = logs.request_id.set(rid)
    metrics = request.app[appkeys.METRICS]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except AuthError as exc:
            response = json_error(401, "unauthorized", exc.reason)
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        except BodyTooLarge as exc:
            response = json_error(413, "too_large", str(exc))
        except web.HTTPException as exc:
            status = exc.status
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            # One error shape everywhere: {"error": ..., "reason": ...}
            response = json_error(exc.status, HTTPStatus(exc.status).phrase.lower().replace(" ", "_"),
                                  exc.reason or exc.text or "")
            for name in ("Allow", "Retry-After", "WWW-Authenticate"):
                if name in exc.headers:
                    response.headers[name] = exc.headers[name]
        status = response.status
        response.headers["X-Request-Id"] = rid
        return response
    except web.HTTPException:
        raise
    except Exception as exc:
        outages: list[type[BaseException]] = request.app.get(appkeys.OUTAGES) or []
        if isinstance(exc, tuple(outages)):
            logger.warning("dependency unavailable", extra={"route": route, "error": type(exc).__name__})
            status = 503
            response = json_error(503, "unavailable", "a service this request needs is unavailable; retry later")
            response.headers["Retry-After"] = "5"
            response.headers["X-Request-Id"] = rid
            return response
        logger.exception("unhandled error", extra={"route": route})
        status = 500
        return json_error(500, "internal", "internal error; see the server log with this request id")
    finally:
        metrics.http_requests.labels(request.method, route, str(status)).inc()
        metrics.http_latency.labels(route).observe(time.perf_counter() - started)
        logs.request_id.reset(token)


class ConnectionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's per-connection log (``AppRunner(logger=ConnectionLog(...))``). A request its
    HTTP parser refused (a bad method, a line over 8190 bytes, a broken header: the client's
    fault, already answered 400 before any handler ran) is one line without a traceback;
    aiohttp logs it as an ERROR with one, so a client could fill the log at will."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, BadHttpMessage):
            self.logger.info("malformed HTTP request refused",
                             extra={"status": exc.code, "error": type(exc).__name__})
            return
        super().log(level, msg, *args, **kwargs)

