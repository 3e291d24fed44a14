"""The SFU: rooms of participants whose publications are forwarded, packet by packet, to
subscriptions; WHIP/WHEP over HTTP; a Python API (:class:`sfu.service.SfuService`) for the
signalling layer. See docs/whip-whep.md and shared/DESIGN.md §3."""

from __future__ import annotations

from typing import AsyncIterator

from aiohttp import web

from core.appkeys import LIFECYCLE, METRICS, READY_PROBES, SETTINGS
from sfu import whip
from sfu.appkeys import SFU
from sfu.events import ParticipantInfo, PublicationInfo, RoomEvent, RoomEventType
from sfu.service import Negotiation, SfuService

__all__ = ["Negotiation", "ParticipantInfo", "PublicationInfo", "RoomEvent", "RoomEventType", "SfuService", "setup"]


def setup(app: web.Application) -> None:
    """Add the SFU to the application: service, routes, metrics, ready probe, shutdown."""
    lifecycle = app[LIFECYCLE]
    service = SfuService(app[SETTINGS], accepting=lambda: lifecycle.accepting)
    service.metrics.register(app[METRICS].registry)
    service.network.datagrams.register(app[METRICS].registry, "sfu")
    app[SFU] = service
    lifecycle.live_count.append(service.live_rooms)

    async def probe() -> tuple[str, bool]:
        return "sfu", lifecycle.accepting and not service.closed

    app[READY_PROBES].append(probe)

    async def close_rooms(app: web.Application) -> AsyncIterator[None]:
        yield
        await service.close()

    app.cleanup_ctx.append(close_rooms)
    whip.add_routes(app)
