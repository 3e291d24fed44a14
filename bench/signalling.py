"""Signalling bench: simulated nurses and physicians over real WebSockets.

    python -m bench.signalling --clients N --requests N --seconds S --json FILE
                               [--server URL] [--store memory|redis] [--physicians P]
                               [--processes N] [--hold-s S] [--ramp-s S]

Without ``--server`` it starts its own server on loopback in a subprocess
(and its own redis-server for ``--store redis``), signing tokens with a key it
gives that server; ``--processes N`` (Redis only) starts N such servers on one
redis-server and spreads the nurses and physicians over them (the idle clients
stay on the first). Phases:

1. idle: ``--clients`` connections say hello and stay open (device agents),
   held by a child process of the bench (``--idle-in-process``: by the
   measuring process itself, whose own event loop and GC then weigh on the
   latencies it measures);
2. queue: nurses check in ``--requests`` visit requests while no physician is available;
3. match: ``--physicians`` physicians come online (one after the other over
   ``--ramp-s``, or all at the same instant); each accepts its offer, keeps the
   consultation ``--hold-s`` on average (uniform in 0..2x) and ends it, and waits
   for the next. Decision latency: from the moment a physician is free
   (presence.set / consultation.end sent) to its next ``offer.received``. With
   no hold this is a saturation loop: every physician is always waiting for a
   decision, so the latency is at least physicians / decisions per second
   (Little's law), and the figure to read is ``decisions_per_second``;
4. throughput: for ``--seconds``, request/reply pings on the active sockets.

Nurses and physicians say hello as the pages do (``presence: own``: no other
physician's status; docs/protocol.md, Presence).

JSON keys (a contract): ``requests``, ``matched``, ``double_assigned`` (must be
0), ``decision_latency_ms_p50``, ``decision_latency_ms_p99``,
``messages_per_second``, ``cpu_us_per_message`` (server process),
``messages_per_core_second``, ``idle_clients_held``, ``processes``,
``decisions_per_second``, ``ramp_s``, ``hold_s``, plus details (CPU figures: all the
server processes together).
Targets: 1000 waiting requests matched with decision p99 <= 50 ms; 5000 idle
clients on one process; >= 2000 messages/s per core. With several processes the
defaults are the issue's figures, 1000 waiting requests and 200 physicians, under a
load the processes can carry: the physicians come online over 10 s and keep each
consultation 2 s on average, about 75 decisions a second here, some 300 times what
200 physicians in 15-minute consultations ask (0.2 a second). ``--hold-s 0
--ramp-s 0`` is the saturation loop (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from config.settings import AuthSettings
from core.auth import TokenService

KEY = "bench-signing-key-" + "x" * 32
SPECIALTY = "general"


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Server:
    """Our own servers (and redis-server) in subprocesses, stopped by PID."""

    def __init__(self, store: str, processes: int = 1) -> None:
        self.store = store
        self.processes = processes
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-signalling-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self.pids: list[int] = []

    @property
    def url(self) -> str:
        return self.urls[0]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def start(self) -> None:
        env = {**os.environ, "TELECONSULT_SERVER__DATA_DIR": str(self.tmp / "data"),
               "TELECONSULT_AUTH__SIGNING_KEY": KEY, "TELECONSULT_SERVER__LOG_LEVEL": "WARNING",
               "TELECONSULT_SIGNALLING__MAX_MESSAGES_PER_S": "100000",
               "TELECONSULT_SIGNALLING__SEND_QUEUE_SIZE": "4096",
               "TELECONSULT_SIGNALLING__HEARTBEAT_S": "30",
               # Each bench nurse checks in requests/20 patients at once: no per-site rate here.
               "TELECONSULT_SIGNALLING__SITE_REQUESTS_PER_WINDOW": "0"}
        if self.store == "redis":
            port = free_port()
            redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port),
                                      "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                      "--dir", str(self.tmp)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            self.procs.append(redis)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            env.update(TELECONSULT_STORE__BACKEND="redis", TELECONSULT_STORE__REDIS_URL=f"redis://127.0.0.1:{port}/0")
        for _ in range(self.processes):
            self._serve(env)

    def _serve(self, env: dict[str, str]) -> None:
        server = subprocess.Popen([sys.executable, "-m", "teleconsult", "serve", "--port", "0"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  preexec_fn=raise_fd_limit)
        self.procs.append(server)
        self.pids.append(server.pid)
        assert server.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = server.stdout.readline().decode()
            if not line and server.poll() is not None:
                raise RuntimeError("the server exited at start")
            if "serving on" in line:
                self.urls.append(line.split("serving on", 1)[1].strip())
                return
        raise RuntimeError("the server did not start within 30 s")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Client:
    """One socket: requests by id (futures), events into a queue. Given ``events``, only those are
    parsed and kept while no request waits for its reply: the rest (the presence of every physician,
    hundreds a second with 200 of them) is counted, not parsed, so that this bench's measuring process
    does not fall behind its sockets and add its own backlog to the latencies it measures. Without
    (the other benches and the fuzzer, which wait for other events), every event is kept."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, counter: list[int],
                 events: tuple[str, ...] | None = None) -> None:
        self.ws = ws
        self.counter = counter
        self.wanted = None if events is None else tuple(f'"{e}"' for e in events)
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            self.counter[0] += 1
            if self.wanted is not None and not self.pending and not any(w in msg.data for w in self.wanted):
                continue
            data = json.loads(msg.data)
            mid = data.get("id")
            if mid is not None and mid in self.pending:
                fut = self.pending.pop(mid)
                if not fut.done():  # a call cancelled at the end of a phase
                    fut.set_result(data)
            else:
                self.events.put_nowait(data)

    async def call(self, type_: str, **fields: Any) -> dict[str, Any]:
        self.next_id += 1
        mid = self.next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[mid] = fut
        await self.ws.send_str(json.dumps({"type": type_, "id": mid, **fields}))
        self.counter[0] += 1
        return await asyncio.wait_for(fut, 30)

    async def next_event(self, type_: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError
            event = await asyncio.wait_for(self.events.get(), left)
            if event["type"] == type_:
                return event


MATCHING_EVENTS = ("offer.received",)
"""What this bench's own nurses and physicians wait for (the rest is counted, not parsed)."""
PAGES_PRESENCE = "own"
"""``hello.presence`` as the pages ask it (web_client/static/signalling.js): this bench's nurses and
physicians get what the pages would."""


async def connect(http: aiohttp.ClientSession, url: str, token: str, counter: list[int],
                  events: tuple[str, ...] | None = None, presence: str | None = None) -> Client:
    """A socket that said hello (``presence``: ``hello.presence``, None for the role's default)."""
    ws = await http.ws_connect(url, heartbeat=None, autoping=True, max_msg_size=0)
    client = Client(ws, counter, events)
    fields: dict[str, Any] = {} if presence is None else {"presence": presence}
    reply = await client.call("hello", version=1, token=token, **fields)
    if reply["type"] != "hello.ok":
        raise RuntimeError(f"hello refused: {reply}")
    return client


async def connect_idle(http: aiohttp.ClientSession, ws_url: str, tokens: TokenService, n: int,
                       counter: list[int]) -> list[Client]:
    idle: list[Client] = []
    for chunk in range(0, n, 200):
        batch = await asyncio.gather(*(connect(http, ws_url, tokens.issue_access(
            "agent", f"idle-{i}", site="ehpad-demo"), counter, MATCHING_EVENTS)
            for i in range(chunk, min(chunk + 200, n))), return_exceptions=True)
        idle += [c for c in batch if isinstance(c, Client)]
    return idle


class IdleHolder:
    """A child process that holds the idle connections (stdin ``held`` -> count, EOF -> stop)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, ws_url: str, n: int) -> "IdleHolder":
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.signalling", "--idle-child", ws_url, "--clients", str(n),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=raise_fd_limit)
        holder = cls(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 300)
        if not line.startswith(b"ready"):
            raise RuntimeError("the idle-connection holder did not start")
        return holder

    async def held(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"held\n")
        await self.proc.stdin.drain()
        return int((await asyncio.wait_for(self.proc.stdout.readline(), 30)).split()[1])

    def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def idle_child(ws_url: str, n: int) -> None:
    raise_fd_limit()
    tokens = TokenService(AuthSettings(signing_key=KEY), tempfile.gettempdir())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        idle = await connect_idle(http, ws_url, tokens, n, [0])
        print(f"ready {len(idle)}", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            print(f"held {sum(1 for c in idle if not c.ws.closed)}", flush=True)


async def directory_everywhere(http: aiohttp.ClientSession, bases: list[str], admin: dict[str, str],
                               sites: list[str]) -> None:
    """Wait (20 s at most) until every process has ``sites`` in its directory. The others reload it on
    a note per change, and a reload that read the store before a later change can land after it:
    a site missing somewhere is put again (its note makes every process reload once more)."""
    deadline = time.monotonic() + 20
    while True:
        await asyncio.sleep(0.3)  # the notes of the last changes land first
        missing: set[str] = set()
        for b in bases:
            async with http.get(f"{b.rstrip('/')}/api/directory", headers=admin) as r:
                known = {e["id"] for e in (await r.json()).get("sites", [])} if r.status == 200 else set()
            missing |= {site for site in sites if site not in known}
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"sites missing from a process's directory: {sorted(missing)}")
        for site in sorted(missing):
            async with http.put(f"{bases[0].rstrip('/')}/api/directory/sites/{site}", headers=admin,
                                json={"name": site.replace("bench-site-", "bench "), "kind": "cabin"}) as r:
                r.raise_for_status()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    server = None
    base = args.server
    bases = [base]
    if not base:
        server = Server(args.store, args.processes)
        server.start()
        base, bases = server.url, server.urls
    ws_url = base.replace("http", "ws", 1).rstrip("/") + "/ws"
    ws_urls = [b.replace("http", "ws", 1).rstrip("/") + "/ws" for b in bases]
    tokens = TokenService(AuthSettings(signing_key=KEY), tempfile.gettempdir())
    counter = [0]
    result: dict[str, Any] = {"store": args.store, "server": "own" if server else base, "processes": len(bases)}
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            # 1. idle clients
            idle: list[Client] = []
            holder: IdleHolder | None = None
            started = time.monotonic()
            if args.idle_in_process:
                idle = await connect_idle(http, ws_url, tokens, args.clients, counter)
            else:
                holder = await IdleHolder.start(ws_url, args.clients)
            result["idle_connect_s"] = round(time.monotonic() - started, 2)
            # 2. queue: requests waiting
            # Each nurse at a site of its own (as in the field: a cabin has one nurse).
            n_nurses = min(20, max(1, args.requests))
            admin = {"Authorization": f"Bearer {tokens.issue_access('admin', 'bench-admin')}"}
            for i in range(n_nurses):
                async with http.put(f"{base.rstrip('/')}/api/directory/sites/bench-site-{i}", headers=admin,
                                    json={"name": f"bench {i}", "kind": "cabin"}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"cannot add bench sites: {r.status} {await r.text()}")
            await directory_everywhere(http, bases, admin, [f"bench-site-{i}" for i in range(n_nurses)])
            # Nurses and physicians take the processes in turn.
            nurses = [await connect(http, ws_urls[i % len(ws_urls)], tokens.issue_access(
                "nurse", f"bench-nurse-{i}", site=f"bench-site-{i}"), counter, MATCHING_EVENTS, PAGES_PRESENCE)
                for i in range(n_nurses)]
            visit = {"patient_ref": "bench", "reason": "bench", "specialty": SPECIALTY, "consent_teleconsultation": True}
            priorities = ["routine", "urgent", "emergency"]

            async def nurse_work(k: int) -> None:
                for j in range(k, args.requests, len(nurses)):
                    for _ in range(50):  # a process may still reload the directory (a note per change)
                        reply = await nurses[k].call("visit.request", priority=priorities[j % 3], **visit)
                        if reply.get("code") != "forbidden":
                            break
                        await asyncio.sleep(0.1)
                    if reply["type"] != "visit.request.ok":
                        raise RuntimeError(f"visit.request refused: {reply}")
            started = time.monotonic()
            await asyncio.gather(*(nurse_work(k) for k in range(len(nurses))))
            result["checkin_s"] = round(time.monotonic() - started, 2)
            # 3. match
            accepted: dict[str, str] = {}
            double = 0
            latencies: list[float] = []
            physicians = [await connect(http, ws_urls[i % len(ws_urls)], tokens.issue_access(
                "physician", f"bench-dr-{i}", specialties=[SPECIALTY]), counter, MATCHING_EVENTS, PAGES_PRESENCE)
                for i in range(args.physicians)]
            gc.collect()
            gc.freeze()  # this process's own full collections (20 ms) are not the server's latency
            cpu0 = server.cpu() if server else float("nan")
            msgs0 = counter[0]
            started = time.monotonic()

            hold_rng = random.Random(19)

            async def physician_work(k: int, c: Client) -> None:
                nonlocal double
                if args.ramp_s:  # physicians come online one after the other, not all at the same instant
                    await asyncio.sleep(args.ramp_s * k / max(1, len(physicians)))
                free_at = time.perf_counter()
                await c.call("presence.set", status="available")
                while len(accepted) < args.requests:
                    try:
                        offer = await c.next_event("offer.received", 5)
                    except asyncio.TimeoutError:
                        continue
                    latencies.append(time.perf_counter() - free_at)
                    cid = offer["consultation"]["id"]
                    reply = await c.call("offer.accept", consultation_id=cid)
                    if reply["type"] != "offer.accept.ok":
                        continue
                    if cid in accepted:
                        double += 1
                    accepted[cid] = "x"
                    if args.hold_s:  # spread: physicians ending together would make one burst
                        await asyncio.sleep(hold_rng.uniform(0, 2 * args.hold_s))
                    free_at = time.perf_counter()
                    await c.call("consultation.end", consultation_id=cid)
            work = [asyncio.ensure_future(physician_work(k, c)) for k, c in enumerate(physicians)]
            deadline = time.monotonic() + max(60.0, args.requests * 0.2) + args.ramp_s + \
                args.hold_s * args.requests / max(1, args.physicians)
            while len(accepted) < args.requests and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            match_s = time.monotonic() - started
            for w in work:
                w.cancel()
            match_msgs = counter[0] - msgs0
            match_cpu = (server.cpu() - cpu0) if server else float("nan")
            result.update(requests=args.requests, matched=len(accepted), double_assigned=double, hold_s=args.hold_s,
                          ramp_s=args.ramp_s, match_s=round(match_s, 3),
                          decisions_per_second=round(len(latencies) / match_s, 1),
                          decision_latency_ms_p50=round(pct(latencies, 50) * 1000, 2),
                          decision_latency_ms_p99=round(pct(latencies, 99) * 1000, 2),
                          match_messages=match_msgs,
                          match_cpu_us_per_message=round(match_cpu / max(match_msgs, 1) * 1e6, 1))
            # 4. throughput: pings on the active sockets
            active = nurses + physicians
            for c in physicians:
                while not c.events.empty():
                    c.events.get_nowait()
            stop_at = time.monotonic() + args.seconds
            msgs0 = counter[0]
            cpu0 = server.cpu() if server else float("nan")
            rtts: list[float] = []

            async def pinger(c: Client) -> None:
                while time.monotonic() < stop_at:
                    t = time.perf_counter()
                    await c.call("ping")
                    rtts.append(time.perf_counter() - t)
            started = time.monotonic()
            await asyncio.gather(*(pinger(c) for c in active))
            elapsed = time.monotonic() - started
            msgs = counter[0] - msgs0
            cpu = (server.cpu() - cpu0) if server else float("nan")
            result.update(messages_per_second=round(msgs / elapsed, 1),
                          cpu_us_per_message=round(cpu / max(msgs, 1) * 1e6, 1),
                          messages_per_core_second=round(msgs / cpu, 1) if cpu and cpu == cpu else None,
                          ping_rtt_ms_p50=round(pct(rtts, 50) * 1000, 2),
                          ping_rtt_ms_p99=round(pct(rtts, 99) * 1000, 2))
            # idle clients still held?
            result["idle_clients_held"] = (await holder.held() if holder is not None
                                           else sum(1 for c in idle if not c.ws.closed))
            if holder is not None:
                holder.stop()
            result["idle_clients_asked"] = args.clients
            for c in idle + active:
                c.reader.cancel()
                await c.ws.close()
    finally:
        if server is not None:
            server.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.signalling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100, help="idle connections held open")
    parser.add_argument("--requests", type=int, help="visit requests queued then matched (default 100; "
                        "1000 with several processes)")
    parser.add_argument("--seconds", type=float, default=3.0, help="ping throughput phase")
    parser.add_argument("--physicians", type=int,
                        help="physicians in a closed accept/end loop (default 5, 200 with several processes; "
                        "more: a saturation test)")
    parser.add_argument("--hold-s", type=float,
                        help="how long on average a physician keeps each consultation before ending it "
                        "(uniform in 0..2x; default 0, 2 with several processes; 0: a saturation loop, where "
                        "the decision latency is mostly the wait behind the other physicians' decisions)")
    parser.add_argument("--ramp-s", type=float,
                        help="the physicians come online one after the other over this many seconds "
                        "(default 0: all at the same instant; 10 with several processes)")
    parser.add_argument("--processes", type=int, default=1,
                        help="signalling processes started on one redis-server (more than 1: --store redis)")
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    parser.add_argument("--server", metavar="URL", help="use this server (tokens must be signed with the bench key)")
    parser.add_argument("--store", choices=["memory", "redis"], default="memory")
    parser.add_argument("--idle-in-process", action="store_true",
                        help="hold the idle connections in the measuring process (the old way)")
    parser.add_argument("--idle-child", metavar="WS_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    several = args.processes > 1
    if args.requests is None:
        args.requests = 1000 if several else 100
    if args.physicians is None:
        args.physicians = 200 if several else 5
    if args.hold_s is None:
        args.hold_s = 2.0 if several else 0.0
    if args.ramp_s is None:
        args.ramp_s = 10.0 if several else 0.0
    if several and (args.store != "redis" or args.server):
        parser.error("--processes above 1 needs --store redis and no --server (processes share state in Redis)")
    if args.idle_child:
        asyncio.run(idle_child(args.idle_child, args.clients))
        return 0
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    ok_match = result["matched"] == result["requests"] and result["double_assigned"] == 0
    print(f"target: {result['requests']} waiting requests matched ({result['matched']}), "
          f"decision p99 {result['decision_latency_ms_p99']} ms (<= 50 ms) "
          f"{'OK' if ok_match and result['decision_latency_ms_p99'] <= 50 else 'MISSED'}")
    print(f"target: idle clients held {result['idle_clients_held']} of {result['idle_clients_asked']} (5000 on one process)")
    mpc = result.get("messages_per_core_second")
    print(f"target: >= 2000 messages/s per core: {mpc} {'OK' if mpc and mpc >= 2000 else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if ok_match else 1


if __name__ == "__main__":
    sys.exit(main())
