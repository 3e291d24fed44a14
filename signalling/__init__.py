"""Signalling: who is online, who waits for whom, and the consultations between them.

``setup(app)`` adds ``/ws`` and the REST endpoints, and runs one
:class:`~signalling.service.SignallingService` (under
``signalling.appkeys.SIGNALLING``) on the store the settings choose
(``signalling.appkeys.STORE``).
"""

from __future__ import annotations

import logging
import secrets
from typing import AsyncIterator

from aiohttp import web

from config.settings import Settings
from core.appkeys import KEYRING, LIFECYCLE, MAILER, METRICS, OUTAGES, READY_PROBES, SETTINGS, TOKENS
from core.keyring import MasterKeyError
from core.sealing import ValueSealer
from media.recording.appkeys import STILLS
from sfu.appkeys import SFU
from signalling import expertise, http, ws
from signalling.appkeys import SIGNALLING, STORE
from signalling.journal import FileJournal, Journal, RedisJournal
from signalling.records import CLEAR_KEY_ID, Records, RedisRecords, SqliteRecords
from signalling.service import SignallingService
from signalling.store import open_store
from signalling.store.faults import STORE_FAULTS
from signalling.store.redis import RedisStore

logger = logging.getLogger(__name__)


def build_service(app: web.Application) -> SignallingService:
    """The service for the app's settings (store, journal, records chosen together)."""
    settings = app[SETTINGS]
    proc = secrets.token_hex(6)
    store = open_store(settings.store, proc)
    journal: Journal
    records: Records
    sealer = ValueSealer(app[KEYRING].master)  # the records' clinical payloads, sealed at rest
    if isinstance(store, RedisStore):
        journal = RedisJournal(store.redis, settings.store.key_prefix)
        records = RedisRecords(store.redis, settings.store.key_prefix, sealer)
    else:
        journal = FileJournal(settings.server.data_dir)
        records = SqliteRecords(settings.server.data_dir, sealer)
    lifecycle = app[LIFECYCLE]
    return SignallingService(settings, store, app[TOKENS], journal, records,
                             sfu=lambda: app.get(SFU), accepting=lambda: lifecycle.accepting,
                             process_id=proc, stills=lambda: app.get(STILLS))


def setup(app: web.Application) -> None:
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        service = build_service(app)
        service.invitations.mailer = lambda: app.get(MAILER)  # invitation links sent through [smtp]
        app[TOKENS].guest_standing = service.invitations.standing
        await service.start()
        if isinstance(service.store, RedisStore):
            await _check_aof(service.store)
        if isinstance(service.records, RedisRecords):
            try:
                await _check_records_key(service.records, app[SETTINGS])
            except MasterKeyError:
                await service.close()
                raise
        app[SIGNALLING] = service
        app[STORE] = service.store
        app[LIFECYCLE].live_count.append(service.live_count)
        yield
        await service.close()

    async def store_probe() -> tuple[str, bool]:
        service = app.get(SIGNALLING)
        return "store", bool(service is not None and await service.store.ping())

    app[ws.WS_METRICS] = ws.WsMetrics(app[METRICS].registry)
    app.cleanup_ctx.append(lifetime)
    app[READY_PROBES].append(store_probe)
    app[OUTAGES].extend(STORE_FAULTS)
    app.router.add_get("/ws", ws.websocket)
    http.add_routes(app)
    expertise.setup(app)  # after signalling's lifetime: it shares its store, journal and events


async def _check_records_key(records: RedisRecords, settings: Settings) -> None:
    """Every process on one Redis must seal the records with one master key, or a consultation
    archived by one process cannot be read by another. A key the settings name that is not the
    one the records are sealed with refuses to start; a development key (each ``data_dir`` makes
    its own) is logged as an error: give the processes one ``recording.master_key_file``."""
    mine = records.sealer.key_id or CLEAR_KEY_ID
    theirs = await records.sealing_key()
    if theirs == mine:
        return
    why = (f"the records in this Redis are sealed with master key {theirs}, this process's is {mine}: "
           "it cannot read what other processes archived; give every process the same "
           "recording.master_key_file (or master_key_env), or delete the key rec:key-id of a Redis "
           "whose records are to be abandoned")
    if settings.recording.master_key_file or settings.recording.master_key_env:
        raise MasterKeyError(why)
    logger.error("records sealed with another master key: %s", why, extra={"theirs": theirs, "mine": mine})


async def _check_aof(store: RedisStore) -> None:
    try:
        config = await store.redis.config_get("appendonly")
    except Exception:
        return  # managed Redis may forbid CONFIG
    if config.get("appendonly") != "yes":
        logger.warning("redis runs without appendonly: journal and records are not durable")
