"""The application factory: one aiohttp app with signalling, SFU and web pages."""

from __future__ import annotations

import logging
import time
import uuid
from http import HTTPStatus
from typing import Awaitable, Callable

from aiohttp import web

from config.settings import Settings
from signalling.auth import AuthError, TokenService, bearer_token
from teleconsult import appkeys, logs
from teleconsult.lifecycle import Lifecycle
from teleconsult.metrics import Metrics

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, error: str, reason: str) -> web.Response:
    """The one error shape of every HTTP endpoint."""
    return web.json_response({"error": error, "reason": reason}, status=status)


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
    except Exception:
        logger.exception("unhandled error", extra={"route": route})
        status = 500
        return json_error(500, "internal", "internal error; see the server log with this request id")
    finally:
        metrics.http_requests.labels(request.method, route, str(status)).inc()
        metrics.http_latency.labels(route).observe(time.perf_counter() - started)
        logs.request_id.reset(token)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    checks: dict[str, bool] = {"accepting": app[appkeys.LIFECYCLE].accepting}
    for probe in app[READY_PROBES]:
        name, ok = await probe()
        checks[name] = ok
    ready = all(checks.values())
    return web.json_response({"status": "ready" if ready else "unready", "checks": checks},
                             status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = request.app[appkeys.METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def whoami(request: web.Request) -> web.Response:
    """Who the bearer access token says the caller is (tokens and clients check themselves here)."""
    principal = await request.app[appkeys.TOKENS].verify_access(bearer_token(request.headers.get("Authorization")))
    return web.json_response({
        "sub": principal.subject, "role": principal.role.value, "site": principal.site,
        "specialties": list(principal.specialties), "exp": principal.expires_at,
    })


ReadyProbe = Callable[[], Awaitable[tuple[str, bool]]]
READY_PROBES = web.AppKey("ready_probes", list)


def create_app(settings: Settings, *, tokens: TokenService | None = None) -> web.Application:
    """Build the whole service for ``settings``; nothing starts until the app runs."""
    app = web.Application(middlewares=[request_context], client_max_size=16 * 1024 * 1024)
    app[appkeys.SETTINGS] = settings
    app[appkeys.TOKENS] = tokens or TokenService(settings.auth, settings.server.data_dir)
    app[appkeys.METRICS] = Metrics()
    app[appkeys.LIFECYCLE] = Lifecycle()
    app[READY_PROBES] = []
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/api/whoami", whoami)

    from teleconsult import echo

    echo.setup(app)
    for package in _COMPONENTS:
        module = __import__(package, fromlist=["setup"])
        module.setup(app)
    return app


# Packages that add routes and background work to the app, in order.
_COMPONENTS: list[str] = ["sfu", "signalling", "media.recording_service", "media.stills_http", "web_client"]
