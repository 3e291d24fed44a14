"""Recording of consultations, and the stills taken during them: a component of ``media``.

One concept per module:

* ``ports``: the SFU and signalling as recording sees them (Protocols; it imports neither).
* ``depacketizer``: RTP packets in, encoded frames out (sans-I/O).
* ``muxer``: encoded frames into live Matroska/WebM with PyAV (no transcoding).
* ``manifest``: what a recording holds, replaced atomically.
* ``session``: one consultation's recording: tracks, start/stop, one clock.
* ``recovery``: closing at startup what a crash left open.
* ``vault``: encryption at rest (chunked AES-GCM, wrapped per-file data keys).
* ``store``: the recordings at rest: listing, export, verification, retention.
* ``stills``, ``still_image``: stills at rest, and the checks an upload passes.
* ``service``: the :class:`~media.recording.service.RecordingService` (start/stop,
  taps, events, background work).
* ``http``, ``stills_http``: REST; ``cli``: ``teleconsult recording export|verify``.

The assembly sets the component up with the accessors of the services it needs
(:func:`setup`), after the SFU and signalling.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator

from aiohttp import web

from core.appkeys import KEYRING, SETTINGS
from media.recording import http, stills_http
from media.recording.appkeys import RECORDING, SIGNALLING, STILLS
from media.recording.ports import MediaServerAccess, SignallingAccess
from media.recording.service import RecordingService
from media.recording.stills import StillStore
from media.recording.store import RecordingStore
from media.recording.vault import Vault

logger = logging.getLogger(__name__)


def setup(app: web.Application, *, sfu: MediaServerAccess, signalling: SignallingAccess) -> None:
    """The recording service, its background work (recovery at startup, flushes, retention,
    stop at shutdown), the stills' store, and the REST routes of both."""
    settings = app[SETTINGS]
    vault = Vault(app[KEYRING].master)  # the master key of every health datum at rest
    stills = StillStore.for_data_dir(settings.server.data_dir, vault)
    store = RecordingStore.for_data_dir(settings.server.data_dir, vault,
                                        retention_days=settings.recording.retention_days)
    # One stills store: the one the REST routes write is the one retention purges.
    service = RecordingService(settings, store, vault, sfu=sfu, signalling=signalling, stills=stills)
    app[RECORDING] = service
    app[STILLS] = stills
    app[SIGNALLING] = signalling

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        service.follow_moves()
        recovered = await service.recover()
        if recovered:
            logger.info("recovered %d unfinished recordings", len(recovered))
        await service.run()
        yield
        await service.close()

    app.cleanup_ctx.append(lifetime)
    http.add_routes(app)
    stills_http.add_routes(app)


__all__ = ["setup"]
