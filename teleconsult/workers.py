"""Media workers: ``teleconsult serve --media-workers N`` (N > 1) runs N SFU processes beside the
signalling process and supervises them.

Each worker is a ``teleconsult serve`` of its own, with the parent's settings file and options
and, through the environment, one media worker, its own HTTP port (``server.port + i``, or a free
one when the port is 0) and its own slice of ``media.port_min..port_max``. So each worker is a
node of the Redis store's registry (``sfu/node.py``) like any process on that store: rooms are
placed on the least loaded one, and when one dies the others re-place its rooms and tell the
parties (``room.moved``). The parent runs the signalling and the pages and forwards nothing (its
app has no SFU: ``teleconsult.app.components``).

Supervision: a worker that exits while the parent accepts work is started again, after a pause
that doubles while it keeps dying young (1 s up to 30 s). SIGTERM/SIGINT to the parent are passed
to each worker by its PID: the first drains them as any node drains, the second stops them.
Workers get SIGTERM from the kernel if the parent itself dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import os
import signal
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Sequence

from config.settings import Settings, worker_port_ranges

logger = logging.getLogger("teleconsult.workers")

SERVING = "serving on"
"""What ``teleconsult serve`` prints, with its URL, once it listens and is registered."""
START_TIMEOUT_S = 60.0
RESTART_PAUSE_S = (1.0, 30.0)
"""First and longest pause before starting a dead worker again."""
STABLE_S = 60.0
"""A worker that ran this long before dying is restarted after the first pause again."""


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's share of the host: its number, HTTP port and media ports."""

    index: int
    """1..N."""
    http_port: int
    """0: a free one, kept for its restarts."""
    port_min: int
    port_max: int
    public_url: str
    """The URL clients use for it; empty: the URL it binds."""
    allowed_origins: tuple[str, ...] = ()
    """Origins whose pages may open its socket: the parent's (the pages come from there: their
    calls send media on the socket of the room's worker) and the parent's own allowed ones."""

    def env(self) -> dict[str, str]:
        """The settings a worker differs by, as ``TELECONSULT_*`` variables (they override the file)."""
        return {"TELECONSULT_SERVER__MEDIA_WORKERS": "1", "TELECONSULT_SERVER__PUBLIC_URL": self.public_url,
                "TELECONSULT_MEDIA__PORT_MIN": str(self.port_min), "TELECONSULT_MEDIA__PORT_MAX": str(self.port_max),
                "TELECONSULT_SERVER__ALLOWED_ORIGINS": ",".join(self.allowed_origins)}


def plan_workers(settings: Settings, pages_origin: str = "") -> list[WorkerPlan]:
    """The workers of ``settings``: worker i on HTTP port ``server.port + i`` (free ports when it is
    0), at ``server.public_url``'s scheme and host with that port when a public URL is set; their
    sockets open to pages from ``pages_origin`` (the parent's; by default its public URL or its
    host and port) and ``server.allowed_origins``."""
    server = settings.server
    if not pages_origin and (server.port or server.public_url):
        pages_origin = origin_of(settings.base_url)
    pages = tuple(dict.fromkeys([*server.allowed_origins, *([pages_origin] if pages_origin else [])]))
    plans = []
    ranges = worker_port_ranges(settings.media.port_min, settings.media.port_max, server.media_workers)
    for i, (low, high) in enumerate(ranges, start=1):
        port = server.port + i if server.port else 0
        public = ""
        if server.public_url and port:
            parts = urllib.parse.urlsplit(server.public_url)
            host = parts.hostname or ""
            host = f"[{host}]" if ":" in host else host
            public = f"{parts.scheme}://{host}:{port}"
        plans.append(WorkerPlan(i, port, low, high, public, pages))
    return plans


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies, even by SIGKILL (Linux), so that no worker
    outlives its supervisor."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Worker:
    plan: WorkerPlan
    process: asyncio.subprocess.Process | None = None
    url: str = ""
    starts: int = 0
    started_at: float = 0.0
    reader: asyncio.Future[None] | None = None
    """Reads (and drops) what it prints after its ``serving on`` line."""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


@dataclass
class MediaWorkers:
    """The workers of one ``serve`` and their supervision."""

    settings: Settings
    command: Sequence[str]
    """``teleconsult serve`` as the parent was started (settings file, --host, --media-address),
    without --port: each worker's is added."""
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    on_exit: Callable[[str], Awaitable[None]] | None = None
    """Told the URL of a worker that exited unasked (the signalling re-places its rooms at once)."""
    pages_origin: str = ""
    """The parent's origin (the pages'), when ``settings`` cannot say it yet (port 0)."""
    workers: list[Worker] = field(default_factory=list)
    stopping: bool = False
    _supervisors: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workers = [Worker(plan) for plan in plan_workers(self.settings, self.pages_origin)]

    @property
    def origins(self) -> list[str]:
        """The workers' origins (for the pages' CSP), as they are now."""
        return [origin_of(w.url) for w in self.workers if w.url]

    async def start(self) -> None:
        """Start every worker and wait until each serves; on a failure stop those started and
        raise RuntimeError."""
        try:
            await asyncio.gather(*(self._spawn(w) for w in self.workers))
        except BaseException:
            await self.stop(timeout=5.0)
            raise
        self._supervisors = [asyncio.ensure_future(self._supervise(w)) for w in self.workers]

    async def _spawn(self, worker: Worker) -> None:
        plan = worker.plan
        argv = [*self.command, "--port", str(plan.http_port)]
        env = {**self.environ, **plan.env()}
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent)
        worker.process = process
        worker.starts += 1
        worker.started_at = asyncio.get_running_loop().time()
        assert process.stdout is not None
        try:
            url = await asyncio.wait_for(self._serving_url(process.stdout), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            url = None
        if url is None:
            if process.returncode is None:
                process.kill()
            rc = await process.wait()
            raise RuntimeError(f"media worker {plan.index} did not start (exit status {rc})")
        worker.url = url
        if not plan.http_port:
            # A restart takes the port again, so that the worker keeps its URL (and the pages'
            # CSP, made once, still allows it).
            worker.plan = dataclasses.replace(plan, http_port=urllib.parse.urlsplit(url).port or 0)
        # The worker prints nothing more that matters; its stdout is read so that it never blocks.
        worker.reader = asyncio.ensure_future(self._discard(process.stdout))
        logger.info("media worker serving", extra={"worker": plan.index, "pid": process.pid, "url": url,
                                                   "media_ports": f"{plan.port_min}-{plan.port_max}"})

    @staticmethod
    async def _discard(stdout: asyncio.StreamReader) -> None:
        while await stdout.readline():
            pass

    @staticmethod
    async def _serving_url(stdout: asyncio.StreamReader) -> str | None:
        while True:
            line = (await stdout.readline()).decode(errors="replace")
            if not line:
                return None
            if SERVING in line:
                return line.split(SERVING, 1)[1].strip()

    async def _supervise(self, worker: Worker) -> None:
        """Start ``worker`` again each time it exits, until the parent stops."""
        pause = RESTART_PAUSE_S[0]
        loop = asyncio.get_running_loop()
        while True:
            assert worker.process is not None
            rc = await worker.process.wait()
            if self.stopping:
                return
            if self.on_exit is not None and worker.url:
                try:
                    await self.on_exit(worker.url)
                except Exception:  # the store: the heartbeat's expiry re-places them later
                    logger.exception("rooms of the exited media worker not re-placed now",
                                     extra={"worker": worker.plan.index})
            lived = loop.time() - worker.started_at
            pause = RESTART_PAUSE_S[0] if lived >= STABLE_S else pause
            logger.warning("media worker exited: starting it again", extra={
                "worker": worker.plan.index, "pid": worker.pid, "exit_status": rc, "restart_in_s": pause})
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_PAUSE_S[1])
            if self.stopping:
                return
            try:
                await self._spawn(worker)
            except (RuntimeError, OSError) as exc:
                logger.error("media worker could not start: %s", exc, extra={"worker": worker.plan.index})

    def signal(self, sig: signal.Signals) -> None:
        """Pass a SIGTERM/SIGINT of the parent to each running worker (the first drains it); no
        restarts from now on."""
        self.stopping = True
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode is None:
                process.send_signal(sig)

    async def stop(self, timeout: float) -> None:
        """Stop the workers: SIGTERM (those not yet told), wait up to ``timeout``, then SIGKILL."""
        if not self.stopping:
            self.signal(signal.SIGTERM)
        for task in self._supervisors:
            task.cancel()
        running = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        if not running:
            return
        done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running], timeout=timeout)
        for process in running:
            if process.returncode is None:
                logger.warning("media worker did not stop in time: killed", extra={"pid": process.pid})
                process.kill()
        if pending:
            await asyncio.wait(pending, timeout=5.0)


def worker_command(config: str | None, host: str | None, media_address: str | None) -> list[str]:
    """``teleconsult serve`` with the options the parent got that the workers share."""
    argv = [sys.executable, "-m", "teleconsult"]
    if config:
        argv += ["--config", config]
    argv.append("serve")
    if host:
        argv += ["--host", host]
    if media_address:
        argv += ["--media-address", media_address]
    return argv


__all__ = ["MediaWorkers", "WorkerPlan", "origin_of", "plan_workers", "worker_command"]
