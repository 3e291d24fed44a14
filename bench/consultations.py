"""Consultations bench (issue 8): how many full consultations one SFU process holds.

    python -m bench.consultations [--rooms N] [--ramp 1,2,4,...] [--seconds S] [--json FILE]
                                  [--plot FILE.png] [--server URL] [--baseline] [--media-workers N]

Each simulated consultation goes through the real signalling and the real SFU:
a nurse checks a patient in over ``/ws``, the physician (a clinician of its own
specialty, so that matching is deterministic) accepts the offer, and the room
tokens come from ``offer.accept.ok`` and the ``consultation.started`` events of
the nurse and the site's device agent. Then, over WHIP/WHEP with those tokens:

* nurse: cabin camera 1280x720 ~1.5 Mbit/s + microphone (Opus);
* device agent: dermatoscope ~1 Mbit/s + stethoscope (Opus stereo 64 kbit/s);
* physician: camera 1280x720 ~1.5 Mbit/s + microphone; plays the 4 cabin tracks,
  the nurse plays the physician's 2 (~4 Mbit/s forwarded per consultation).

Media are pre-encoded (:mod:`bench.clip`, H.264 by default: its encoder hits
the 720p bitrates on the synthetic clip), counted without decoding, in worker
processes separate from the server (``--workers``), pinned to the cores the
server does not use. The server runs ``teleconsult serve`` (signalling + SFU in
one process, the default deployment: its CPU is both) pinned to core 0
(``taskset``-like affinity). Each step is bounded: join, warm-up, ``--seconds``
of measurement, teardown.

A step is *clean* when delivery >= 99 % and p95 added latency <= 20 ms. The
ramp stops at the first unclean step; ``consultations_per_core`` is the largest
clean step when the SFU itself reached its limit (its core near full). When the
clients saturate first (their CPU near their cores' capacity, or a step that
fails while their own frames went out late), ``client_saturated`` is true and
``projected_consultations_per_core`` = 100 % / (SFU CPU % per consultation at
the highest clean step): a projection, not a measurement.

``--media-workers N`` (N > 1) runs the server as ``teleconsult serve
--media-workers N`` on a redis-server of the bench's own: the signalling in one
process, N SFU worker processes, rooms placed on the least loaded worker; the
clients use each room's ``sfu_url`` for WHIP/WHEP. ``sfu_cpu_pct`` (and
``sfu_rss_mb``) then count the server's whole process tree, and each step also
has ``media_worker_cpu_pct`` (one figure per worker) and
``signalling_cpu_pct``. The server and its workers are pinned to the first N
cores only when the clients still get one of their own.

JSON (contract keys): ``steps`` (each ``consultations``, ``sfu_cpu_pct``,
``delivery``, ``latency_ms_p95``, ``join_ms_p95``, ``sfu_rss_mb`` and more),
``consultations_per_core``, ``projected_consultations_per_core``,
``client_saturated``, ``machine``, ``media_workers``,
``host_consultations_per_core`` (measured when the workers reached their limit:
the highest clean step over N; else projected, and
``host_consultations_per_core_projected`` is true: 100 % / the whole tree's CPU %
per consultation at the highest clean step).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
import subprocess
import urllib.request
from bench.redis_server import start_redis
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench.clip import audio_clip, video_clip
from bench.rtc import (
    KEY,
    DirectServer,
    Player,
    Publisher,
    ServerProcess,
    Source,
    TickStats,
    child_pids,
    cpu_seconds,
    machine,
    match_frames,
    own_cpu_seconds,
    pct,
    process_tree,
    publish,
    relay_server,
    rounded,
    rss_mb,
    teleconsult_server,
    tree_cpu_seconds,
)
from bench.signalling import connect, free_port
from config.settings import AuthSettings
from core.auth import TokenService

TARGETS = {"consultations_per_core": 25, "cpu_pct_per_mbps": 1.0, "join_ms_p95": 500.0, "rss_mb_per_consultation": 30.0,
           "delivery": 0.99, "latency_ms_p95": 20.0}
GRACE = 0.25
DEFAULT_RAMP = [1, 2, 4, 6, 8, 12, 16, 24, 32]
SFU_FULL_PCT = 85.0
"""The SFU is the limit of a step that fails while its process uses this much of its core."""
CLIENT_LATE = 0.02
CLIENT_SKIPPED = 0.001
"""A step that fails while more than these fractions of the clients' frames went out over
5 ms late / were skipped failed because of the clients (clean steps stay under 1 %)."""
TRACKS = {
    # source key -> (identity, source, clip parameters)
    "nurse camera": ("nurse", "camera"),
    "nurse microphone": ("nurse", "microphone"),
    "physician camera": ("physician", "camera"),
    "physician microphone": ("physician", "microphone"),
    "agent dermatoscope": ("agent", "dermatoscope"),
    "agent stethoscope": ("agent", "stethoscope"),
}


def _clips(codec: str) -> dict[str, Any]:
    camera = video_clip(codec, 1280, 720, 30, 1_500_000)
    return {"camera": camera, "dermatoscope": video_clip(codec, 1280, 720, 30, 1_000_000),
            "microphone": audio_clip(32_000, False), "stethoscope": audio_clip(64_000, True)}


def _tokens() -> TokenService:
    return TokenService(AuthSettings(signing_key=KEY), tempfile.gettempdir())


# -- one consultation (in a worker) ---------------------------------------------------
class Consultation:
    def __init__(self, index: int, clips: dict[str, Any], stats: TickStats) -> None:
        self.index = index
        self.sources = {key: Source(key, clips[source], stats) for key, (_, source) in TRACKS.items()}
        self.publishers: list[Publisher] = []
        self.players: dict[str, Player] = {}
        self.accepted_at = 0.0
        self.marks: dict[str, float] = {}
        """Join milestones: tokens (every seat has its room token), published (WHIP answered)."""
        self.sockets: list[Any] = []
        self.consultation_id = ""
        self.physician: Any = None
        self.error = ""
        self.consent_recording = False
        """The patient consents to recording (bench.soak records every consultation)."""

    async def signal(self, http: aiohttp.ClientSession, ws_url: str) -> dict[str, str]:
        """Check-in, offer, accept: the three seats' room tokens, from the real signalling."""
        tokens = _tokens()
        i = self.index
        counter = [0]
        nurse = await connect(http, ws_url, tokens.issue_access("nurse", f"bench-nurse-{i}", site=f"bench-site-{i}"),
                              counter)
        agent = await connect(http, ws_url, tokens.issue_access("agent", f"bench-agent-{i}", site=f"bench-site-{i}"),
                              counter)
        physician = await connect(http, ws_url, tokens.issue_access("physician", f"bench-dr-{i}",
                                                                    specialties=[f"bench-{i}"]), counter)
        self.sockets = [nurse, agent, physician]
        self.physician = physician
        await physician.call("presence.set", status="available")
        reply = await nurse.call("visit.request", patient_ref=f"bench-{i}", reason="bench", specialty=f"bench-{i}",
                                 priority="routine", consent_teleconsultation=True,
                                 consent_recording=self.consent_recording)
        if reply["type"] != "visit.request.ok":
            raise RuntimeError(f"visit.request refused: {reply}")
        offer = await physician.next_event("offer.received", 20)
        self.consultation_id = offer["consultation"]["id"]
        self.accepted_at = time.monotonic()
        accepted = await physician.call("offer.accept", consultation_id=self.consultation_id)
        if accepted["type"] != "offer.accept.ok":
            raise RuntimeError(f"offer.accept refused: {accepted}")
        started_nurse = await nurse.next_event("consultation.started", 20)
        started_agent = await agent.next_event("consultation.started", 20)
        return {"room": accepted["room"], "physician": accepted["room_token"],
                "nurse": started_nurse["room_token"], "agent": started_agent["room_token"],
                "sfu_url": accepted.get("sfu_url") or ""}

    async def join(self, http: aiohttp.ClientSession, base: str, seats: dict[str, str], codec: str) -> None:
        # WHIP/WHEP go to the room's media node (a worker of `serve --media-workers`), as clients do.
        base = seats.get("sfu_url") or base
        room = seats["room"]
        s = self.sources
        mime = f"video/{codec}"
        # The three seats are three machines: they publish at once, then play. Publication
        # order decides WHEP's assignment, so the nurse's WHEP (which must get the
        # physician's camera, not the dermatoscope) waits for the physician's publication.
        seats_tracks = (("nurse", ["nurse camera", "nurse microphone"]),
                        ("physician", ["physician camera", "physician microphone"]),
                        ("agent", ["agent dermatoscope", "agent stethoscope"]))

        async def seat(identity: str, keys: list[str]) -> Publisher:
            return await publish(http, base, room, seats[identity], [s[k] for k in keys],
                                 [TRACKS[k][1] for k in keys])
        self.publishers += await asyncio.gather(*(seat(i, k) for i, k in seats_tracks[:2]))
        self.publishers.append(await seat(*seats_tracks[2]))
        self.marks["published"] = time.monotonic()
        doctor = Player(f"c{self.index}-physician")
        self.players["physician"] = doctor
        nurse = Player(f"c{self.index}-nurse")
        self.players["nurse"] = nurse
        await asyncio.gather(
            doctor.play(http, base, room, seats["physician"],
                        [("video", mime), ("video", mime), ("audio", "audio/opus"), ("audio", "audio/opus")]),
            nurse.play(http, base, room, seats["nurse"], [("video", mime), ("audio", "audio/opus")]))

    def joined_at(self) -> float | None:
        """Both sides have a first video frame: the later of the two."""
        times = []
        for player in self.players.values():
            video = [r.first_frame_at for r in player.streams.values() if r.kind == "video" and not
                     r.label.endswith("/rtx")]
            arrived = [t for t in video if t is not None]
            if not video or len(arrived) < len(video):
                return None
            times.append(max(arrived))
        return max(times) if len(times) == 2 else None

    async def close(self, http: aiohttp.ClientSession) -> None:
        for player in self.players.values():
            await player.close(http)
        for publisher in self.publishers:
            await publisher.close(http)
        for source in self.sources.values():
            source.stop()
        if self.physician is not None and self.consultation_id:
            try:
                await self.physician.call("consultation.end", consultation_id=self.consultation_id)
            except Exception:  # noqa: BLE001 - teardown
                pass
        for sock in self.sockets:
            sock.reader.cancel()
            await sock.ws.close()


def _worker_main(base: str, indexes: list[int], codec: str, baseline: bool, go: Any, window: Any, seconds: float,
                 out: "mp.Queue[Any]", cpus: list[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    uvloop.run(_worker(base, indexes, codec, baseline, go, window, seconds, out))


async def _worker(base: str, indexes: list[int], codec: str, baseline: bool, go: Any, window: Any, seconds: float,
                  out: "mp.Queue[Any]") -> None:
    clips = _clips(codec)
    stats = TickStats()
    consultations = [Consultation(i, clips, stats) for i in indexes]
    ws_url = base.replace("http", "ws", 1).rstrip("/") + "/ws"
    direct_sources = [Source("direct camera", clips["camera"], TickStats()),
                      Source("direct microphone", clips["microphone"], TickStats())]
    direct_server = DirectServer(direct_sources)
    direct_player = Player("direct")
    tokens = _tokens()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            for c in consultations:
                try:
                    if baseline:
                        room = f"bench-relay-{c.index}"
                        seats = {"room": room, **{who: tokens.issue_room(room, who, role="nurse" if who != "physician"
                                                                          else "physician", publish=[],
                                                                          subscribe=True)
                                                  for who in ("nurse", "physician", "agent")}}
                        c.accepted_at = time.monotonic()
                    else:
                        seats = await c.signal(http, ws_url)
                    c.marks["tokens"] = time.monotonic()
                    await c.join(http, base, seats, codec)
                except Exception as exc:  # noqa: BLE001 - reported, the step is then unclean
                    c.error = f"{type(exc).__name__}: {exc}"[:300]
            await direct_server.start()
            for source in direct_sources:
                source.start()
            await direct_player.play(http, direct_server.url, "direct", "none",
                                     [("video", f"video/{codec}"), ("audio", "audio/opus")])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not all(c.joined_at() or c.error for c in consultations):
                await asyncio.sleep(0.05)
            out.put(("joined", len(indexes)))
            give_up = time.monotonic() + 180  # the orchestrator is gone: stop by ourselves
            while not go.is_set():
                if time.monotonic() > give_up:
                    raise RuntimeError("no go from the orchestrator within 180 s")
                await asyncio.sleep(0.02)
            w0 = window.value
            w1 = w0 + seconds
            everyone = [p for c in consultations for p in c.players.values()] + [direct_player]
            for p in everyone:
                p.window = (w0, w1)
            ticks0, late0, skipped0 = stats.ticks, stats.late_over_5ms, stats.skipped
            await asyncio.sleep(max(0.0, w0 - time.monotonic()))
            own0 = own_cpu_seconds()
            await asyncio.sleep(max(0.0, w1 - time.monotonic()))
            own1 = own_cpu_seconds()
            ticks, late, skipped = stats.ticks - ticks0, stats.late_over_5ms - late0, stats.skipped - skipped0
            await asyncio.sleep(0.4)
            result = analyse(consultations, direct_player, direct_sources, w0, w1)
            result.update(client_cpu_s=own1 - own0, ticks=ticks, late=late, skipped=skipped,
                          errors=[c.error for c in consultations if c.error])
            out.put(("done", result))
        finally:
            for c in consultations:
                try:
                    await c.close(http)
                except Exception:  # noqa: BLE001 - teardown
                    pass
            for source in direct_sources:
                source.stop()
            await direct_player.close(http)
            await direct_server.close()


def analyse(consultations: list[Consultation], direct_player: Player, direct_sources: list[Source],
            w0: float, w1: float) -> dict[str, Any]:
    """Per track kind: frames sent and delivered in the window; latencies; join times."""
    def expected(source: Source) -> list[int]:
        return [pts for pts, t in source.sent.items() if w0 <= t < w1 - GRACE]

    direct_video = direct_sources[0]
    direct_lat: list[float] = []
    for stream in direct_player.summary()["streams"]:
        if stream["kind"] == "video":
            matched = match_frames(stream["frames"], direct_video.sent, direct_video.clip.pts_step)
            direct_lat += [matched[p] - direct_video.sent[p] for p in expected(direct_video) if p in matched]
    direct_p50 = pct(direct_lat, 50) or 0.0
    sent = {"video": 0, "audio": 0}
    delivered = {"video": 0, "audio": 0}
    raw: list[float] = []
    joins: list[float] = []
    phases: dict[str, list[float]] = {"tokens": [], "publish": [], "play": []}
    fwd_bytes = 0
    for c in consultations:
        joined = c.joined_at()
        if joined is not None:
            joins.append((joined - c.accepted_at) * 1000)
            if "tokens" in c.marks and "published" in c.marks:
                phases["tokens"].append((c.marks["tokens"] - c.accepted_at) * 1000)
                phases["publish"].append((c.marks["published"] - c.marks["tokens"]) * 1000)
                phases["play"].append((joined - c.marks["published"]) * 1000)
        wanted = {"physician": ["nurse camera", "nurse microphone", "agent dermatoscope", "agent stethoscope"],
                  "nurse": ["physician camera", "physician microphone"]}
        for who, keys in wanted.items():
            player = c.players.get(who)
            streams = {}
            if player is not None:
                fwd_bytes += player.bytes_window()
                streams = {f"{r.owner} {r.label}": r for r in player.streams.values()}
            for key in keys:
                source = c.sources[key]
                want = expected(source)
                sent[source.kind] += len(want)
                record = streams.get(key)
                if record is None:
                    continue
                matched = match_frames(record.frames, source.sent, source.clip.pts_step)
                got = [p for p in want if p in matched]
                delivered[source.kind] += len(got)
                if source.kind == "video":
                    raw += [matched[p] - source.sent[p] for p in got]
    return {"sent": sent, "delivered": delivered, "raw_latency": raw, "direct_p50": direct_p50,
            "direct_samples": len(direct_lat), "joins": joins, "phases": phases, "fwd_bytes": fwd_bytes,
            "joined": sum(1 for c in consultations if c.joined_at() is not None)}


# -- the ramp ---------------------------------------------------------------------------
def _metrics(*bases: str) -> dict[str, float]:
    """Sums of the SFUs' counters (/metrics of each node), by name and direction."""
    out: dict[str, float] = {}
    for base in bases:
        _add_metrics(base, out)
    return out


def _add_metrics(base: str, out: dict[str, float]) -> None:
    try:
        with urllib.request.urlopen(base.rstrip("/") + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return
    for line in text.splitlines():
        m = re.match(r'(teleconsult_sfu_(?:bytes|packets|packets_lost)_total)\{([^}]*)\} ([0-9.e+]+)', line)
        if not m:
            continue
        direction = re.search(r'direction="(\w+)"', m.group(2))
        key = m.group(1) + (f":{direction.group(1)}" if direction else "")
        out[key] = out.get(key, 0.0) + float(m.group(3))


@dataclass(frozen=True)
class MediaWorker:
    """A worker of ``serve --media-workers``, as the server printed it."""

    index: int
    url: str
    pid: int


WORKER_LINE = re.compile(r"media worker (\d+): (\S+) \(pid (\d+)")


def media_workers_of(banner: list[str]) -> list[MediaWorker]:
    return [MediaWorker(int(m[1]), m[2], int(m[3])) for m in map(WORKER_LINE.search, banner) if m]


@dataclass(frozen=True)
class Served:
    """What a step measures: the server's base URL, its process (None: --server) and its workers."""

    base: str
    pid: int | None
    workers: tuple[MediaWorker, ...] = ()

    @property
    def metrics_urls(self) -> list[str]:
        return [w.url for w in self.workers] or [self.base]

    def cpu(self) -> dict[str, float]:
        """CPU seconds: "tree" (the server and its workers), "parent", and each worker's."""
        if self.pid is None:
            return {"tree": float("nan"), "parent": float("nan")}
        out = {"tree": tree_cpu_seconds(self.pid) if self.workers else cpu_seconds(self.pid),
               "parent": cpu_seconds(self.pid)}
        for w in self.workers:
            out[f"worker {w.index}"] = cpu_seconds(w.pid)
        return out

    def rss(self) -> float:
        if self.pid is None:
            return float("nan")
        return sum(rss_mb(p) for p in process_tree(self.pid)) if self.workers else rss_mb(self.pid)


def _setup_directory(base: str, count: int) -> None:
    admin = _tokens().issue_access("admin", "bench-admin")
    for i in range(count):
        for kind, body in (("sites", {"name": f"bench {i}", "kind": "cabin"}),
                           ("clinicians", {"name": f"Dr bench {i}", "specialties": [f"bench-{i}"]})):
            ident = f"bench-site-{i}" if kind == "sites" else f"bench-dr-{i}"
            request = urllib.request.Request(f"{base.rstrip('/')}/api/directory/{kind}/{ident}", method="PUT",
                                             data=json.dumps(body).encode(),
                                             headers={"Authorization": f"Bearer {admin}",
                                                      "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status != 200:
                    raise RuntimeError(f"directory {kind}/{ident}: {response.status}")


def run_step(served: Served, n: int, offset: int, args: argparse.Namespace, baseline: bool,
             client_cpus: list[int] | None) -> dict[str, Any]:
    base = served.base
    ctx = mp.get_context("spawn")
    workers = max(1, min(args.workers, n))
    shares = [[offset + i for i in range(n) if i % workers == w] for w in range(workers)]
    go = ctx.Event()
    window = ctx.Value("d", 0.0)
    out: "mp.Queue[Any]" = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(base, share, args.codec, baseline, go, window, args.seconds, out,
                                                    client_cpus), daemon=True) for share in shares]
    label = "baseline" if baseline else "sfu"
    print(f"[{label}] {n} consultation(s): joining ", end="", file=sys.stderr, flush=True)
    results: list[dict[str, Any]] = []
    try:
        for p in procs:
            p.start()
        joined = 0
        deadline = time.monotonic() + 60 + 6 * n
        while joined < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not join in time")
            try:
                message = out.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue.Empty
                if not all(p.is_alive() for p in procs):
                    raise RuntimeError("a worker exited while joining") from None
                continue
            if message[0] == "joined":
                joined += 1
        print(f"warm-up {args.warmup:g} s, measuring {args.seconds:.0f} s ", end="", file=sys.stderr, flush=True)
        w0 = time.monotonic() + args.warmup
        window.value = w0
        go.set()
        time.sleep(max(0.0, w0 - time.monotonic()))
        m0 = _metrics(*served.metrics_urls) if not baseline else {}
        cpu0 = served.cpu()
        for _ in range(int(args.seconds)):
            time.sleep(1)
            print(".", end="", file=sys.stderr, flush=True)
        time.sleep(max(0.0, w0 + args.seconds - time.monotonic()))
        cpu1 = served.cpu()
        m1 = _metrics(*served.metrics_urls) if not baseline else {}
        rss = served.rss()
        deadline = time.monotonic() + 60 + n
        while len(results) < workers and time.monotonic() < deadline:
            try:
                message = out.get(timeout=0.5)
            except Exception:  # noqa: BLE001
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if message[0] == "done":
                results.append(message[1])
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)
    print(" done", file=sys.stderr, flush=True)
    span = args.seconds
    sent = {k: sum(r["sent"][k] for r in results) for k in ("video", "audio")}
    delivered = {k: sum(r["delivered"][k] for r in results) for k in ("video", "audio")}
    added = [(lat - r["direct_p50"]) * 1000 for r in results for lat in r["raw_latency"]]
    raw = [lat * 1000 for r in results for lat in r["raw_latency"]]
    joins = [j for r in results for j in r["joins"]]
    fwd_mbps = sum(r["fwd_bytes"] for r in results) * 8 / span / 1e6
    cpu_pct = (cpu1["tree"] - cpu0["tree"]) / span * 100
    worker_cpu = {name: rounded((cpu1[name] - cpu0[name]) / span * 100, 1)
                  for name in cpu1 if name.startswith("worker")}
    client_cpu_pct = sum(r["client_cpu_s"] for r in results) / span * 100
    ticks = sum(r["ticks"] for r in results)
    late = sum(r["late"] for r in results) / ticks if ticks else 0.0
    skipped = sum(r["skipped"] for r in results) / ticks if ticks else 0.0
    capacity = 100.0 * (len(client_cpus) if client_cpus else (os.cpu_count() or 1))
    total_sent = sent["video"] + sent["audio"]
    delivery = (delivered["video"] + delivered["audio"]) / total_sent if total_sent else None
    sfu_out = m1.get("teleconsult_sfu_bytes_total:out", 0) - m0.get("teleconsult_sfu_bytes_total:out", 0)
    pk_in = m1.get("teleconsult_sfu_packets_total:in", 0) - m0.get("teleconsult_sfu_packets_total:in", 0)
    lost = m1.get("teleconsult_sfu_packets_lost_total", 0) - m0.get("teleconsult_sfu_packets_lost_total", 0)
    step = {
        "consultations": n,
        "consultations_joined": sum(r["joined"] for r in results),
        "sfu_cpu_pct": rounded(cpu_pct, 1),
        "sfu_cpu_pct_per_consultation": rounded(cpu_pct / n, 2),
        "cpu_pct_per_mbps": rounded(cpu_pct / fwd_mbps if fwd_mbps else None, 3),
        "forwarded_mbps": rounded(fwd_mbps, 2),
        "forwarded_mbps_sfu_counter": rounded(sfu_out * 8 / span / 1e6, 2) if m0 else None,
        "delivery": rounded(delivery, 4),
        "frames_sent": sent, "frames_delivered": delivered,
        "delivery_video": rounded(delivered["video"] / sent["video"] if sent["video"] else None, 4),
        "delivery_audio": rounded(delivered["audio"] / sent["audio"] if sent["audio"] else None, 4),
        "latency_ms_p50": rounded(pct(added, 50)), "latency_ms_p95": rounded(pct(added, 95)),
        "latency_ms_p99": rounded(pct(added, 99)),
        "capture_to_delivery_ms_p50": rounded(pct(raw, 50)), "capture_to_delivery_ms_p95": rounded(pct(raw, 95)),
        "direct_path_ms_p50": rounded(sum(r["direct_p50"] for r in results) / len(results) * 1000) if results
        else None,
        "join_ms_p50": rounded(pct(joins, 50)), "join_ms_p95": rounded(pct(joins, 95)),
        "join_phases_ms_p50": {name: rounded(pct([v for r in results for v in r["phases"][name]], 50))
                               for name in ("tokens", "publish", "play")},
        "upstream_loss": rounded(lost / pk_in, 5) if pk_in else None,
        "sfu_rss_mb": rounded(rss, 1),
        "client_cpu_pct": rounded(client_cpu_pct, 1), "client_capacity_pct": capacity,
        "client_late_fraction": rounded(late, 4), "client_skipped_fraction": rounded(skipped, 4),
        "errors": [e for r in results for e in r["errors"]][:5],
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }
    if served.workers:
        # sfu_cpu_pct is the whole tree's (signalling + workers); here are its parts.
        step["media_worker_cpu_pct"] = [worker_cpu[f"worker {w.index}"] for w in served.workers]
        step["signalling_cpu_pct"] = rounded((cpu1["parent"] - cpu0["parent"]) / span * 100, 1)
    step["clean"] = bool(delivery is not None and delivery >= TARGETS["delivery"] and step["latency_ms_p95"] is not None
                         and step["latency_ms_p95"] <= TARGETS["latency_ms_p95"] and not step["errors"])
    # The clients are the limit when their cores are nearly full, or when a step fails while
    # their own frames went out late (on a shared machine a clean step may see some lateness
    # from other work: that alone does not stop the ramp).
    step["client_saturated"] = bool(client_cpu_pct > 0.85 * capacity or len(results) < workers
                                    or (not step["clean"] and (late > CLIENT_LATE or skipped > CLIENT_SKIPPED)))
    return step


def run_ramp(args: argparse.Namespace, baseline: bool) -> dict[str, Any]:
    if args.ramp:
        ramp = [int(x) for x in args.ramp.split(",") if x.strip()]
    elif args.rooms:
        ramp = [args.rooms]
    else:
        ramp = DEFAULT_RAMP
    cores = os.cpu_count() or 1
    media_workers = 1 if baseline else args.media_workers
    # The server (and its workers) get the first cores, the clients the others, when both fit.
    server_cores = media_workers if media_workers > 1 else 1
    server_cpus = list(range(server_cores)) if args.pin and cores > server_cores else None
    client_cpus = list(range(server_cores, cores)) if server_cpus else None
    server: ServerProcess | None = None
    redis: subprocess.Popen[bytes] | None = None
    base = args.server
    served = Served(base, None)
    try:
        if not base:
            env = {"TELECONSULT_SIGNALLING__OFFER_TIMEOUT_S": "60"}
            if media_workers > 1:
                redis, redis_url = start_redis()
                env.update(TELECONSULT_STORE__BACKEND="redis", TELECONSULT_STORE__REDIS_URL=redis_url)
            server = relay_server(server_cpus) if baseline else teleconsult_server(server_cpus, env=env)
            if media_workers > 1:
                server.argv += ["--media-workers", str(media_workers)]
            server.start(timeout=120)
            workers = media_workers_of(server.banner)
            if media_workers > 1 and (len(workers) != media_workers
                                      or not {w.pid for w in workers} <= set(child_pids(server.pid))):
                raise RuntimeError(f"the server did not start {media_workers} media workers: {server.banner}")
            served = Served(server.url, server.pid, tuple(workers))
        steps, idle_cpu = _ramp_steps(served, ramp, args, baseline, client_cpus)
    finally:
        if server is not None:
            server.stop()
        if redis is not None:
            redis.kill()  # by its PID; nothing of it is kept
            redis.wait(10)
    result = summarise(steps, idle_cpu, media_workers)
    result["media_workers_pinned_cpus"] = server_cpus
    return result


def _ramp_steps(served: Served, ramp: list[int], args: argparse.Namespace, baseline: bool,
                client_cpus: list[int] | None) -> tuple[list[dict[str, Any]], float | None]:
    base, pid = served.base, served.pid
    steps: list[dict[str, Any]] = []
    idle_cpu: float | None = None
    if not baseline:
        _setup_directory(base, sum(ramp) * (1 + args.retries))
    idle_rss = served.rss()
    if pid:
        c0 = served.cpu()["tree"]
        time.sleep(3.0)
        idle_cpu = round((served.cpu()["tree"] - c0) / 3.0 * 100, 2)
    offset = 0
    for n in ramp:
        step = run_step(served, n, offset, args, baseline, client_cpus)
        offset += n
        for attempt in range(args.retries):
            if step["clean"]:
                break
            # On a shared machine one stall of the client or server process can spoil a
            # step: try it again (bounded) before taking it as the limit.
            print(f"  {n} consultations: not clean, again ({attempt + 1}/{args.retries})", file=sys.stderr,
                  flush=True)
            step = run_step(served, n, offset, args, baseline, client_cpus)
            step["attempts"] = attempt + 2
            offset += n
        step["rss_mb_per_consultation"] = rounded((step["sfu_rss_mb"] - idle_rss) / n, 2) \
            if step["sfu_rss_mb"] is not None and idle_rss == idle_rss else None
        steps.append(step)
        print(f"  {n} consultations: sfu cpu {step['sfu_cpu_pct']} %, delivery {step['delivery']}, "
              f"p95 {step['latency_ms_p95']} ms, join p95 {step['join_ms_p95']} ms, "
              f"clients {step['client_cpu_pct']} % of {step['client_capacity_pct']:.0f} %"
              f"{' (saturated)' if step['client_saturated'] else ''}", file=sys.stderr, flush=True)
        if "media_worker_cpu_pct" in step:
            print(f"    per media worker cpu %: {step['media_worker_cpu_pct']}, signalling "
                  f"{step['signalling_cpu_pct']} %", file=sys.stderr, flush=True)
        if not step["clean"] or step["client_saturated"]:
            break
        time.sleep(1.0)
    return steps, idle_cpu


def _sfu_full(step: dict[str, Any]) -> bool:
    """The SFU was at its limit in ``step``: its process's core (with media workers, one worker's
    core) near full."""
    workers = step.get("media_worker_cpu_pct")
    if workers:
        return max((w or 0.0) for w in workers) >= SFU_FULL_PCT
    return step["sfu_cpu_pct"] is not None and step["sfu_cpu_pct"] >= SFU_FULL_PCT


def summarise(steps: list[dict[str, Any]], idle_cpu: float | None, media_workers: int = 1) -> dict[str, Any]:
    """The ramp's outcome: what limited it, consultations per core (only when the SFU was the
    limit), and the projections from the clean steps.

    With media workers, ``sfu_cpu_pct`` is the whole server tree's (signalling + workers), and
    ``host_consultations_per_core`` says what the host holds per core: measured (the highest
    clean step over the workers' cores) when the workers reached their limit, else projected
    (``host_consultations_per_core_projected``: 100 % / the tree's CPU % per consultation at the
    highest clean step, the signalling's share included)."""
    clean = [s for s in steps if s["clean"]]
    best = clean[-1] if clean else None
    failed = next((s for s in steps if not s["clean"]), None)
    client_saturated = any(s["client_saturated"] for s in steps)
    if failed is not None and _sfu_full(failed):
        limit = "sfu"
    elif client_saturated:
        limit = "clients"
    elif failed is not None:
        limit = "unattributed"  # neither the SFU's core nor the clients' was full: interference
    else:
        limit = "ramp_end"
    # One SFU process, one core: consultations_per_core keeps that meaning with N workers (N cores).
    per_core = (round((best["consultations"] if best else 0) / media_workers, 1) if media_workers > 1
                else (best["consultations"] if best else 0)) if limit == "sfu" else None
    projected = None
    if best and best["sfu_cpu_pct_per_consultation"]:
        projected = round(100.0 / best["sfu_cpu_pct_per_consultation"], 1)
    host: dict[str, Any] = {"media_workers": media_workers, "host_consultations_per_core": per_core,
                            "host_consultations_per_core_projected": False,
                            "host_projection_basis": None}
    if per_core is None:
        host.update(host_consultations_per_core=projected, host_consultations_per_core_projected=True,
                    host_projection_basis=(f"PROJECTION: 100 % / server tree CPU per consultation at "
                                           f"{best['consultations']} consultations ({limit} limited the ramp)"
                                           if best else None))
    # The marginal cost: a least-squares line through the clean steps' CPU (the intercept is
    # what does not grow with consultations: timers, sockets of the idle server).
    marginal = None
    points = [(s["consultations"], s["sfu_cpu_pct"]) for s in clean if s["sfu_cpu_pct"] is not None]
    if len(points) >= 2:
        mx = sum(x for x, _ in points) / len(points)
        my = sum(y for _, y in points) / len(points)
        sxx = sum((x - mx) ** 2 for x, _ in points)
        if sxx > 0:
            slope = sum((x - mx) * (y - my) for x, y in points) / sxx
            intercept = my - slope * mx
            if slope > 0:
                marginal = {"cpu_pct_per_consultation": round(slope, 2), "fixed_cpu_pct": round(intercept, 2),
                            "projected_consultations_per_core": round((100.0 - max(0.0, intercept)) / slope, 1)}
    return {"steps": steps, "consultations_per_core": per_core, "projected_consultations_per_core": projected,
            "projection_basis": (f"100 % / SFU CPU per consultation at {best['consultations']} consultations"
                                 if best else None),
            "projection_marginal": marginal, "sfu_idle_cpu_pct": idle_cpu, "limit": limit,
            "client_saturated": client_saturated, "highest_clean_step": best["consultations"] if best else None,
            **host}


def report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(f"machine: {m['cores']} cores ({m['cpu_model']}), shared with other work: figures are noisy")
    workers = result.get("media_workers", 1)
    if workers > 1:
        pinned = result.get("media_workers_pinned_cpus")
        print(f"server = signalling + {workers} media workers (serve --media-workers {workers}); sfu cpu% is the "
              f"whole process tree's" + (f", pinned to cores {pinned}" if pinned else ", not pinned (clients share "
                                                                                 "the cores)"))
    else:
        print("server = signalling + SFU in one process (the default deployment)" +
              (", pinned to core 0; clients on the other core(s)" if result.get("pinned") else ""))
    print(f"{'consult':>7} {'sfu cpu%':>8} {'%/consult':>9} {'%/Mbit/s':>8} {'Mbit/s':>7} {'delivery':>8} "
          f"{'p50':>6} {'p95':>6} {'p99':>6} {'join95':>7} {'MB/c':>6} {'client%':>7}")
    for s in result["steps"]:
        print(f"{s['consultations']:>7} {s['sfu_cpu_pct']!s:>8} {s['sfu_cpu_pct_per_consultation']!s:>9} "
              f"{s['cpu_pct_per_mbps']!s:>8} {s['forwarded_mbps']!s:>7} {s['delivery']!s:>8} "
              f"{s['latency_ms_p50']!s:>6} {s['latency_ms_p95']!s:>6} {s['latency_ms_p99']!s:>6} "
              f"{s['join_ms_p95']!s:>7} {s.get('rss_mb_per_consultation')!s:>6} {s['client_cpu_pct']!s:>7}"
              f"{' client-saturated' if s['client_saturated'] else ''}{'' if s['clean'] else ' UNCLEAN'}")
        if "media_worker_cpu_pct" in s:
            print(f"{'':>7} per media worker cpu%: {s['media_worker_cpu_pct']}, signalling {s['signalling_cpu_pct']}")
    print(f"client_saturated: {str(result['client_saturated']).lower()}")
    per_core = result["consultations_per_core"]
    projected = result["projected_consultations_per_core"]
    t = TARGETS
    print(f"limit: {result.get('limit')}")
    if per_core is not None:
        print(f"target consultations per core: {per_core} (>= 25) {'OK' if per_core >= 25 else 'MISSED'}")
    else:
        print("consultations per core: null (the ramp did not reach the SFU's limit)")
    if projected is not None:
        print(f"projected_consultations_per_core: {projected} (PROJECTION from {result['projection_basis']}; "
              f">= 25) {'OK' if projected >= 25 else 'MISSED'}")
    host = result.get("host_consultations_per_core")
    if host is not None:
        print(f"host_consultations_per_core: {host} ({workers} media worker(s); "
              f"{result['host_projection_basis'] or 'measured: the workers reached their limit'})")
    marginal = result.get("projection_marginal")
    if marginal:
        print(f"  marginal: {marginal['cpu_pct_per_consultation']} % per consultation over a fixed "
              f"{marginal['fixed_cpu_pct']} % (idle server: {result.get('sfu_idle_cpu_pct')} %) -> "
              f"{marginal['projected_consultations_per_core']} per core (PROJECTION, linear fit of the clean steps)")
    best = next((s for s in result["steps"] if s["consultations"] == result.get("highest_clean_step")), None)
    if best:
        v = best["cpu_pct_per_mbps"]
        print(f"target cpu per forwarded Mbit/s: {v} % (within 2x of ~0.5 %: <= 1.0) "
              f"{'OK' if v is not None and v <= 1.0 else 'MISSED'}")
        v = best["join_ms_p95"]
        print(f"target join p95: {v} ms (<= 500 ms) {'OK' if v is not None and v <= t['join_ms_p95'] else 'MISSED'}")
        v = best.get("rss_mb_per_consultation")
        print(f"target memory per consultation: {v} MB (<= 30 MB) "
              f"{'OK' if v is not None and v <= t['rss_mb_per_consultation'] else 'MISSED'}")
    if result.get("baseline"):
        print("baseline (MediaRelay, decode + encode per subscriber):")
        for s in result["baseline"]["steps"]:
            ours = next((o for o in result["steps"] if o["consultations"] == s["consultations"]), None)
            ratio = (s["sfu_cpu_pct_per_consultation"] / ours["sfu_cpu_pct_per_consultation"]
                     if ours and ours["sfu_cpu_pct_per_consultation"] and s["sfu_cpu_pct_per_consultation"] else None)
            print(f"  {s['consultations']} consultations: cpu {s['sfu_cpu_pct']} %, delivery {s['delivery']}, "
                  f"p95 {s['latency_ms_p95']} ms; baseline/ours cpu per consultation: "
                  f"{round(ratio, 1) if ratio else None}")


def plot(result: dict[str, Any], path: str) -> None:
    # matplotlib is the optional `bench` extra, needed only for --plot (Agg chosen before pyplot loads).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    series = [("ours", result["steps"])]
    if result.get("baseline"):
        series.append(("MediaRelay", result["baseline"]["steps"]))
    for name, steps in series:
        x = [s["consultations"] for s in steps]
        axes[0].plot(x, [s["sfu_cpu_pct"] for s in steps], marker="o", label=name)
        axes[1].plot(x, [s["latency_ms_p95"] for s in steps], marker="o", label=f"{name} p95")
        axes[1].plot(x, [s["latency_ms_p50"] for s in steps], marker=".", linestyle="--", label=f"{name} p50")
        axes[2].plot(x, [(s["delivery"] or 0) * 100 for s in steps], marker="o", label=name)
    axes[0].axhline(100, color="grey", linestyle=":")
    axes[0].set(title="server CPU (% of one core)", xlabel="consultations")
    axes[1].axhline(20, color="grey", linestyle=":")
    axes[1].set(title="added latency (ms)", xlabel="consultations")
    axes[2].axhline(99, color="grey", linestyle=":")
    axes[2].set(title="delivery (%)", xlabel="consultations")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    m = result["machine"]
    fig.suptitle(f"teleconsult consultations bench: {m['cores']} shared cores ({m['cpu_model']}); "
                 f"client_saturated={result['client_saturated']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.consultations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, help="one step of this many consultations (instead of the ramp)")
    parser.add_argument("--ramp", help="comma-separated consultation counts, ascending; stops at the first "
                        f"unclean or client-saturated step (default {','.join(map(str, DEFAULT_RAMP))})")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement window per step")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=3, help="client processes")
    parser.add_argument("--retries", type=int, default=1, help="runs again a step that is not clean (shared machines)")
    parser.add_argument("--codec", choices=["h264", "vp8"], default="h264")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--plot", metavar="FILE.png")
    parser.add_argument("--server", metavar="URL", help="an already running server (signed with the bench key)")
    parser.add_argument("--baseline", action="store_true", help="also run the MediaRelay SFU (no signalling)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server/clients to cores")
    parser.add_argument("--media-workers", type=int, default=1, metavar="N",
                        help="run the server as `teleconsult serve --media-workers N` on a redis-server of the "
                             "bench's own: rooms spread over N SFU processes; CPU counts its whole process tree "
                             "and each worker's is shown (default 1: one process, signalling + SFU)")
    args = parser.parse_args(argv)
    if args.media_workers < 1 or (args.media_workers > 1 and args.server):
        parser.error("--media-workers is at least 1, and above 1 the bench starts the server itself (no --server)")
    _clips(args.codec)  # encoded once, before anything is measured
    result: dict[str, Any] = {"machine": machine(), "codec": args.codec, "seconds": args.seconds,
                              "pinned": bool(args.pin and (os.cpu_count() or 1) > max(1, args.media_workers)
                                             and not args.server),
                              "server_process": "teleconsult serve: signalling + SFU in one process"
                              if args.media_workers == 1 else
                              f"teleconsult serve --media-workers {args.media_workers}: signalling in one process, "
                              f"{args.media_workers} SFU worker processes (Redis store); CPU of the whole tree"}
    result.update(run_ramp(args, baseline=False))
    if args.baseline:
        base_args = argparse.Namespace(**{**vars(args), "server": None})
        result["baseline"] = run_ramp(base_args, baseline=True)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
