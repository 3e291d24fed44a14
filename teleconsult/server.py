"""Serving the app: bind, register this process as a media node, run until signals stop it."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import signal
import ssl
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from aiohttp import web

from config.settings import NodeRole, Settings
from core.appkeys import LIFECYCLE
from core.http import ConnectionLog
from signalling.appkeys import SIGNALLING
from teleconsult.app import create_app
from teleconsult.workers import MediaWorkers

logger = logging.getLogger("teleconsult")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.server.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.server.tls_cert, settings.server.tls_key)
    return context


@dataclass(frozen=True)
class Listening:
    """A started HTTP server: its runner, the URL people use and the URL of this host."""

    runner: web.AppRunner
    base: str
    local: str


async def listen(app: web.Application, settings: Settings) -> Listening:
    """Start serving ``app`` as settings say, and register this process as an SFU node
    at the address actually bound (port 0 picks one only now)."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5,
                           logger=ConnectionLog(logging.getLogger("aiohttp.server")))
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port, ssl_context=ssl_context(settings))
    await site.start()
    host, port = runner.addresses[0][:2]
    scheme = "https" if settings.server.tls_cert else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    local = f"{scheme}://{shown}:{port}"
    base = settings.server.public_url.rstrip("/") or local
    signalling = app.get(SIGNALLING)
    if signalling is not None:
        signalling.node_url = base
        await signalling.heartbeat_node()
    return Listening(runner, base, local)


PRIVATE_UMASK = 0o077
"""Everything the server writes under data_dir is health data or its keys: files 0600,
folders 0700, SQLite's -wal and -shm files included (SQLite creates them itself)."""


async def serve(settings: Settings, ready: Callable[[str], None] | None = None,
                worker_command: Sequence[str] | None = None) -> int:
    """Run the server until signals stop it (first: drain, second: stop now).

    With ``server.media_workers`` > 1 this process is the signalling and the pages only, and
    first starts the media workers (``worker_command``: how to run ``teleconsult serve`` for
    them, without --port) and supervises them (teleconsult/workers.py)."""
    os.umask(PRIVATE_UMASK)
    workers: MediaWorkers | None = None
    if settings.server.media_workers > 1:
        planned, pages_origin = settings, ""
        if not settings.server.port and not settings.server.public_url:
            # The workers must know the pages' origin (their sockets take the pages' media
            # requests) before this process binds: pick its free port now (the workers, planned
            # from the settings as given, keep free ports of their own).
            settings = settings.replace(server={"port": free_tcp_port(settings.server.host)})
            pages_origin = settings.base_url
        workers = MediaWorkers(planned, worker_command or default_worker_command(), pages_origin=pages_origin)
        try:
            await workers.start()
        except (RuntimeError, OSError) as exc:
            print(f"teleconsult: {exc}", file=sys.stderr, flush=True)
            return 1
        # The pages may reach the workers (WHIP/WHEP): their origins join the CSP's connect-src.
        settings = settings.replace(server={"media_origins": [*settings.server.media_origins, *workers.origins]})
    try:
        return await _serve_app(settings, ready, workers)
    finally:
        if workers is not None:
            await workers.stop(timeout=settings.server.drain_timeout_s + 10)


def free_tcp_port(host: str) -> int:
    """A TCP port free on ``host`` now (the kernel's pick for port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "localhost") else "127.0.0.1", 0))
        return int(sock.getsockname()[1])


def freeze_startup_objects() -> None:
    """Keep what the imports and the app's set-up made out of the garbage collector's full passes.

    The server holds some 170,000 objects from its imports and set-up (aiortc, PyAV, numpy,
    scipy...) that live as long as it does; each full collection walked them all: 90-100 ms with
    every socket stalled, a few times a minute under load (bench.signalling, issue 19). Frozen,
    a full pass walks only what was made since (about 7 ms there)."""
    gc.collect()
    gc.freeze()


def default_worker_command() -> list[str]:
    return [sys.executable, "-m", "teleconsult", "serve"]


async def _serve_app(settings: Settings, ready: Callable[[str], None] | None, workers: MediaWorkers | None) -> int:
    app = create_app(settings)
    lifecycle = app[LIFECYCLE]
    listening = await listen(app, settings)
    runner, base = listening.runner, listening.base
    freeze_startup_objects()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        lifecycle.signal()
        if workers is not None:
            workers.signal(sig)  # each worker drains (then stops) as the parent does

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if workers is not None and SIGNALLING in app:
        workers.on_exit = app[SIGNALLING].media_node_gone
    if workers is not None:
        # Before the "serving on" line, so that whoever waits for it has these too.
        for w in workers.workers:
            print(f"  media worker {w.plan.index}: {w.url} (pid {w.pid}, media ports "
                  f"{w.plan.port_min}-{w.plan.port_max})", flush=True)
    print(f"teleconsult serving on {base}", flush=True)
    if settings.server.runs(NodeRole.SIGNALLING):
        print(f"  pages:   {base}/", flush=True)
    else:
        print("  roles:   media only (no pages: they are on the signalling nodes)", flush=True)
    print(f"  health:  {base}/healthz  {base}/readyz  {base}/metrics", flush=True)
    if settings.server.runs(NodeRole.SIGNALLING):
        print("  sign in: teleconsult token access --role physician --sub dr-demo --specialty general --link",
              flush=True)
    if ready is not None:
        ready(base)
    logger.info("serving", extra={"url": base, "media_ip": settings.effective_media.listen_ip})
    try:
        while lifecycle.accepting:
            await asyncio.sleep(0.2)
        await lifecycle.wait_drained(settings.server.drain_timeout_s)
    finally:
        await runner.cleanup()
    logger.info("stopped")
    return 0
