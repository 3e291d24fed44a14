"""Télé-expertise: asynchronous expert opinion on a case (docs/expertise.md).

One module per concept: ``case`` (the case and its transition table, sans I/O),
``questionnaire`` (versioned questionnaires as data, and the answers' check),
``store`` (cases on memory or Redis), ``attachments`` (uploads cleaned and sealed),
``service`` (steps committed, journaled, notified; the due-date sweeper),
``mail_notifications`` (who gets an e-mail for a step, and what it says, sans I/O) and
``http`` (the REST API). :func:`setup` wires it into the app next to signalling, whose store
connection, journal, directory and events it shares.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from aiohttp import web

from core.appkeys import KEYRING, MAILER, SETTINGS
from core.auth import Principal
from core.sealing import ValueSealer
from media.recording.appkeys import STILLS
from media.recording.vault import Vault
from signalling.appkeys import SIGNALLING
from signalling.expertise import http
from signalling.expertise.appkeys import EXPERTISE
from signalling.expertise.attachments import AttachmentBlobs
from signalling.expertise.questionnaire import Questionnaires
from signalling.expertise.service import ExpertiseService
from signalling.expertise.store import CaseStore, RedisCaseStore, SqliteCaseStore
from signalling.store.redis import RedisStore


def setup(app: web.Application) -> None:
    """Routes now; the service once signalling has started (its cleanup context runs after)."""
    questionnaires = Questionnaires.load()  # a broken questionnaire file stops the start, loudly

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        signalling = app[SIGNALLING]
        settings = app[SETTINGS]
        sealer = ValueSealer(app[KEYRING].master)  # cases hold clinical data for days: sealed at rest
        store: CaseStore = (RedisCaseStore(signalling.store.redis, signalling.store.prefix, sealer)
                            if isinstance(signalling.store, RedisStore)
                            else SqliteCaseStore(settings.server.data_dir, sealer))

        async def consultation_site(principal: Principal, consultation_id: str) -> str | None:
            c = await signalling.get_any(consultation_id)
            return c.site if c is not None and signalling.visible(principal, c) else None

        service = ExpertiseService(
            store=store, journal=signalling.journal, questionnaires=questionnaires,
            blobs=AttachmentBlobs.for_data_dir(settings.server.data_dir, Vault(app[KEYRING].master)),
            settings=settings.expertise, clock=signalling.clock, emit=signalling.emit,
            directory=lambda: signalling.directory, stills=lambda: app.get(STILLS),
            consultation_site=consultation_site, mailer=app.get(MAILER),
            base_url=lambda: signalling.node_url)  # server.public_url, else the bound URL
        app[EXPERTISE] = service
        sweeper = asyncio.create_task(service.sweep_loop(), name="expertise-sweeper")
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await store.close()

    app.cleanup_ctx.append(lifetime)
    http.add_routes(app)


__all__ = ["EXPERTISE", "ExpertiseService", "setup"]
