"""The application factory: one aiohttp app with the components in an explicit order."""

from __future__ import annotations

from typing import AsyncIterator, Callable

from aiohttp import web

import interop
import media.echo
import media.recording
import sfu
import signalling
import web_client
from config.settings import NodeRole, Settings
from core import appkeys
from core.auth import TokenService, bearer_token
from core.keyring import Keyring
from core.http import MAX_JSON_BYTES, request_context
from core.lifecycle import Lifecycle
from core.mail import Mailer
from core.metrics import Metrics
from core.vocabulary import ParticipantId, RoomId
from sfu.appkeys import SFU
from signalling.appkeys import SIGNALLING
from signalling.service import SignallingService
from teleconsult.production import is_production

Component = Callable[[web.Application], None]


# Recording sits below the SFU and signalling (media/ imports neither): here is where
# it is handed them, as the Protocols of media.recording.ports, asked for at each use.
def setup_recording(app: web.Application) -> None:
    media.recording.setup(app, sfu=lambda: app.get(SFU), signalling=lambda: app.get(SIGNALLING))


class LiveConsultationRooms:
    """``sfu.ports.RoomGate`` over signalling, asked at each use (signalling starts after the SFU
    is set up): a room's tokens are good for media while its consultation is live."""

    def __init__(self, signalling: Callable[[], SignallingService | None]) -> None:
        self.signalling = signalling

    async def is_live(self, room_id: RoomId, identity: ParticipantId | None = None) -> bool:
        service = self.signalling()
        return service is not None and await service.is_live(room_id, identity)

    async def hosted_here(self, room_id: RoomId) -> bool:
        service = self.signalling()
        return service is not None and await service.hosted_here(room_id)


# The SFU sits below signalling: here is where it is handed the consultations' say on its rooms.
def gate_rooms(app: web.Application) -> None:
    app[SFU].gate = LiveConsultationRooms(lambda: app.get(SIGNALLING))


# Components add their routes and background work, in this order: the SFU before
# signalling (which places rooms on it), recording (and stills) after both, interop (the PDF
# report, FHIR, Pro Santé Connect sign-in: it reads signalling's store and the stills) after them.
COMPONENTS: tuple[Component, ...] = (
    media.echo.setup,
    sfu.setup,
    gate_rooms,
    signalling.setup,
    setup_recording,
    interop.setup,
    web_client.setup,
)

MEDIA_NODE_COMPONENTS: frozenset[Component] = frozenset({sfu.setup, gate_rooms})
"""The components that make a process a media node."""
SIGNALLING_ONLY_COMPONENTS: frozenset[Component] = frozenset({interop.setup, web_client.setup})
"""What only a process with the signalling role runs: the pages and the interop endpoints (the
report as PDF, FHIR, Pro Santé Connect sign-in). A media-only node keeps the signalling service
itself: its socket takes the pages' media requests (``media.offer``, ``room.publications``), and
it registers its node and re-places lost nodes' rooms through it."""


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    checks: dict[str, bool] = {"accepting": app[appkeys.LIFECYCLE].accepting}
    for probe in app[appkeys.READY_PROBES]:
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
        "sub": principal.subject, "name": principal.name, "role": principal.role.value, "site": principal.site,
        "specialties": list(principal.specialties), "exp": principal.expires_at,
    })


async def run_mailer(app: web.Application) -> AsyncIterator[None]:
    mailer = app[appkeys.MAILER]
    await mailer.start()
    yield
    await mailer.close()


def create_app(settings: Settings, *, tokens: TokenService | None = None,
               keyring: Keyring | None = None) -> web.Application:
    """Build the whole service for ``settings``; nothing starts until the app runs.

    The key of health data at rest is loaded here, once (``core.keyring``: the
    development key under data_dir only when the setup is not production)."""
    app = web.Application(middlewares=[request_context], client_max_size=MAX_JSON_BYTES)
    app[appkeys.SETTINGS] = settings
    app[appkeys.TOKENS] = tokens or TokenService(settings.auth, settings.server.data_dir)
    app[appkeys.KEYRING] = keyring or Keyring.from_settings(settings, production=is_production(settings))
    app[appkeys.METRICS] = Metrics()
    app[appkeys.LIFECYCLE] = Lifecycle()
    app[appkeys.READY_PROBES] = []
    app[appkeys.OUTAGES] = []
    app[appkeys.MAILER] = Mailer.from_settings(settings.smtp, registry=app[appkeys.METRICS].registry)
    app.cleanup_ctx.append(run_mailer)  # first in, last out: components may send until they stop
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/api/whoami", whoami)
    for component in components(settings):
        component(app)
    return app


def components(settings: Settings) -> tuple[Component, ...]:
    """What this process runs, by its roles (``server.roles``): everything for both; no SFU
    without the media role, so that it is no media node (the signalling process of ``serve
    --media-workers N``, N > 1, among them: rooms go to its workers, teleconsult/workers.py);
    no pages and no interop endpoints without the signalling role."""
    left: frozenset[Component] = frozenset()
    if not settings.server.runs(NodeRole.MEDIA):
        left |= MEDIA_NODE_COMPONENTS
    if not settings.server.runs(NodeRole.SIGNALLING):
        left |= SIGNALLING_ONLY_COMPONENTS
    return tuple(c for c in COMPONENTS if c not in left)
