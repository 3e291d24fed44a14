"""Media clients and measuring helpers shared by the media benches.

* :class:`Source`: one pre-encoded clip (:mod:`bench.clip`) paced at its frame
  rate, fanned out to the tracks of several peer connections (the WHIP
  publisher and a direct peer connection); it records each frame's send time
  by its pts (RTP clock) and switches to the all-intra copy on a keyframe
  request. No encoding in the loop: aiortc's senders only packetize
  (``Encoder.pack``).
* :func:`publish`: a WHIP publisher of sources; :class:`DirectServer`: the same
  sources answered over a WHEP-like ``POST`` without any SFU (the direct path
  that latency is measured against).
* :class:`Player`: a WHEP subscriber that counts what arrives (per SSRC:
  frames by RTP timestamp and arrival time, RTP bytes after SRTP) and never
  decodes: its transport's decrypted RTP goes to the counter instead of
  aiortc's jitter buffer.
* :func:`match_frames`: maps a subscriber's RTP timestamps to the source's pts
  (each leg has its own random timestamp origin, the clock step is kept), so
  that each frame gets a capture -> delivery latency.

Every peer connection is a :class:`media.ice.ScopedPeerConnection` on
127.0.0.1. Times are ``time.monotonic()`` (one clock for all processes).
"""

from __future__ import annotations

import asyncio
import ctypes
import fractions
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import aiohttp
import aiortc
import av
from aiohttp import web
from aiortc import RTCConfiguration, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy

from bench.clip import Clip
from media import aiortc_internals
from media.ice import ScopedPeerConnection

TS_MOD = 1 << 32
KEY = "bench-signing-key-" + "y" * 32
"""The benches sign room and access tokens with this key; their servers are given it."""


# -- processes ------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return float("nan")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a server's media workers), from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    tree = [pid]
    for child in child_pids(pid):
        tree += process_tree(child)
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (``serve --media-workers``: signalling and
    workers); nan when ``pid`` is gone."""
    return sum(cpu_seconds(p) for p in process_tree(pid))


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def pct(values: Iterable[float], q: float) -> float | None:
    ordered = sorted(v for v in values if v == v)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or value != value else round(value, digits)


def machine() -> dict[str, Any]:
    """The machine the figures come from (contract key ``machine``)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "cores": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
        "python": platform.python_version(), "aiortc": aiortc.__version__, "av": av.__version__,
        "loadavg_at_start": [round(x, 2) for x in load],
        "note": "cores shared with other work: figures are noisy (compare ratios within one run)",
    }


def _die_with_parent() -> None:
    """Linux: this (child) process gets SIGTERM when the bench that started it dies, even
    by SIGKILL, so that no server outlives its bench."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ServerProcess:
    """A server command in its own process (stopped by its PID), with its URL from the line
    ``... serving on URL`` it prints."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cpus: list[int] | None = None,
                 name: str = "server") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.argv = argv
        self.env = {**os.environ, "TELECONSULT_SERVER__DATA_DIR": str(self.tmp / "data"),
                    "TELECONSULT_AUTH__SIGNING_KEY": KEY, "TELECONSULT_SERVER__LOG_LEVEL": "WARNING",
                    "TELECONSULT_SIGNALLING__MAX_MESSAGES_PER_S": "100000", **(env or {})}
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.banner: list[str] = []
        """The lines it printed up to its ``serving on`` line (``serve --media-workers``: its workers)."""
        self.log = self.tmp / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> "ServerProcess":
        cpus = self.cpus

        def pin() -> None:
            _die_with_parent()
            if cpus:
                os.sched_setaffinity(0, cpus)
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE,
                                     stderr=self.log.open("wb"), preexec_fn=pin)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            self.banner.append(line.rstrip("\n"))
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv} exited at start: {self.log.read_text()[-2000:]}")
            if "serving on" in line:
                self.url = line.split("serving on", 1)[1].strip()
                return self
        self.stop()
        raise RuntimeError(f"{self.argv} did not start within {timeout} s")

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGINT, signal.SIGINT, signal.SIGKILL):
                proc.send_signal(sig)
                try:
                    proc.wait(8)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def teleconsult_server(cpus: list[int] | None = None, env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "teleconsult", "serve", "--port", "0",
                          "--media-address", "127.0.0.1"], env=env, cpus=cpus, name="sfu")


def relay_server(cpus: list[int] | None = None) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "bench.relay_server", "--port", "0"], cpus=cpus, name="relay")


# -- sources and tracks ------------------------------------------------------------
@dataclass
class TickStats:
    """How late a source's frames went out (client saturation shows here first)."""

    ticks: int = 0
    late_over_5ms: int = 0
    skipped: int = 0
    max_late: float = 0.0


def marked(index: int) -> bool:
    """About one frame in four, pseudo-randomly, gets its timestamp shifted by half a frame
    period: a pattern that only the right timestamp origin lines up with, even when the path
    is slower than several frame periods (see :func:`match_frames`)."""
    return _MARKS[index % len(_MARKS)]


def _marks() -> tuple[bool, ...]:
    rng = random.Random(20240607)
    return tuple(rng.random() < 0.25 for _ in range(4096))


_MARKS = _marks()


class Source:
    """One clip paced at its frame rate, fanned out to tracks."""

    def __init__(self, name: str, clip: Clip, stats: TickStats | None = None) -> None:
        self.name = name
        self.clip = clip
        self.kind = clip.kind
        self.tracks: list["PacketTrack"] = []
        self.sent: dict[int, float] = {}
        """pts (RTP clock, from 0) -> send time of each frame."""
        self.stats = stats or TickStats()
        self.keyframes_sent = 0
        self._want_keyframe = False
        self._task: asyncio.Task[None] | None = None
        self.started_at = 0.0
        self.marks = clip.kind == "video"
        """Shift some frames' timestamps by half a frame (see :func:`marked`)."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def keyframe_wanted(self) -> None:
        self._want_keyframe = True

    def track(self) -> "PacketTrack":
        track = PacketTrack(self)
        self.tracks.append(track)
        return track

    async def _run(self) -> None:
        clip = self.clip
        n = len(clip.frames)
        period = clip.period
        loop = asyncio.get_running_loop()
        start = self.started_at = loop.time() + 0.01
        index = 0
        time_base = fractions.Fraction(1, clip.clock_rate)
        stats = self.stats
        while True:
            due = start + index * period
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            late = now - due
            stats.ticks += 1
            if late > 0.005:
                stats.late_over_5ms += 1
            if late > stats.max_late:
                stats.max_late = late
            if late > period:  # behind by more than a frame: drop the missed ones, as a camera would
                skip = int(late / period)
                stats.skipped += skip
                index += skip
            k = index % n
            data = clip.frames[k]
            if self._want_keyframe and clip.intra:
                self._want_keyframe = False
                data = clip.intra[k]
                self.keyframes_sent += 1
            pts = index * clip.pts_step + (clip.pts_step // 2 if self.marks and marked(index) else 0)
            self.sent[pts] = time.monotonic()
            for track in self.tracks:
                track.push(data, pts, time_base)
            index += 1

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for track in self.tracks:
            track.stop()


class PacketTrack(MediaStreamTrack):
    """A track whose ``recv()`` yields encoded ``av.Packet``s (aiortc's sender packs them)."""

    def __init__(self, source: Source) -> None:
        super().__init__()
        self.kind = source.kind
        aiortc_internals.set_track_id(self, source.name)
        self.source = source
        self._queue: asyncio.Queue[av.Packet] = asyncio.Queue(maxsize=8)

    def push(self, data: bytes, pts: int, time_base: fractions.Fraction) -> None:
        if self.readyState != "live":
            return
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = time_base
        if self._queue.full():  # a sender that does not read: keep the newest
            self._queue.get_nowait()
        self._queue.put_nowait(packet)

    async def recv(self) -> av.Packet:
        return await self._queue.get()


def client_pc() -> ScopedPeerConnection:
    """A loopback client peer connection (MAX_BUNDLE: several tracks of one kind work)."""
    return ScopedPeerConnection(configuration=RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


def prefer(transceiver: Any, mime: str) -> None:
    caps = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    chosen = [c for c in caps if c.mimeType.lower() == mime.lower()][:1]
    rtx = [c for c in caps if c.mimeType.lower().endswith("/rtx")]
    transceiver.setCodecPreferences(chosen + (rtx[:1] if transceiver.kind == "video" else []))


def _mime(clip: Clip) -> str:
    return f"{clip.kind}/{clip.codec}"


def hook_keyframes(sender: RTCRtpSender, source: Source) -> None:
    """A PLI/FIR for this sender asks the source for its next frame from the all-intra copy."""
    aiortc_internals.route_keyframe_requests(sender, source.keyframe_wanted)


async def post_sdp(http: aiohttp.ClientSession, url: str, token: str, sdp: str) -> tuple[int, str, str]:
    async with http.post(url, data=sdp, headers={"Authorization": f"Bearer {token}",
                                                 "Content-Type": "application/sdp"}) as response:
        return response.status, await response.text(), response.headers.get("Location", "")


@dataclass
class Publisher:
    pc: ScopedPeerConnection
    location: str
    base: str
    token: str

    async def close(self, http: aiohttp.ClientSession | None = None) -> None:
        if http is not None and self.location:
            try:
                async with http.delete(self.base + self.location,
                                       headers={"Authorization": f"Bearer {self.token}"}):
                    pass
            except aiohttp.ClientError:
                pass
        await self.pc.close()


async def publish(http: aiohttp.ClientSession, base: str, room: str, token: str, sources: list[Source],
                  names: Iterable[str] = ()) -> Publisher:
    """WHIP-publish one track per source (one video, one audio at most)."""
    pc = client_pc()
    for source in sources:
        transceiver = pc.addTransceiver(source.track(), direction="sendonly")
        prefer(transceiver, _mime(source.clip))
        hook_keyframes(transceiver.sender, source)
    await pc.setLocalDescription(await pc.createOffer())
    query = "&".join(f"source={s}" for s in names)
    status, text, location = await post_sdp(http, f"{base}/whip/{room}" + (f"?{query}" if query else ""), token,
                                            pc.localDescription.sdp)
    if status != 201:
        await pc.close()
        raise RuntimeError(f"WHIP {status}: {text[:300]}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
    for source in sources:
        source.start()
    return Publisher(pc, location, base, token)


class DirectServer:
    """The direct path: ``POST /whep/direct`` answered by this process's sources, no SFU.

    Each offered recvonly m-line gets the next source of its kind (in the given order)."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self.pcs: dict[str, ScopedPeerConnection] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/whep/{room}", self._post)
        app.router.add_delete("/whep/{room}/{session}", self._delete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def _post(self, request: web.Request) -> web.Response:
        offer = await request.text()
        pc = client_pc()
        parsed = aiortc_sdp.SessionDescription.parse(offer)
        queues = {k: [s for s in self.sources if s.kind == k] for k in ("audio", "video")}
        for index, media in enumerate(parsed.media):
            if media.kind not in queues:
                continue
            if media.direction in ("recvonly", "sendrecv") and queues[media.kind]:
                source = queues[media.kind].pop(0)
                transceiver = pc.addTransceiver(source.track(), direction="sendonly")
                prefer(transceiver, _mime(source.clip))
                hook_keyframes(transceiver.sender, source)
            else:
                transceiver = pc.addTransceiver(media.kind, direction="inactive")
            aiortc_internals.bind_transceiver(transceiver, media.rtp.muxId, index)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        session = f"d{len(self.pcs)}"
        self.pcs[session] = pc
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": f"/whep/direct/{session}"})

    async def _delete(self, request: web.Request) -> web.Response:
        pc = self.pcs.pop(request.match_info["session"], None)
        if pc is not None:
            for transceiver in pc.getTransceivers():
                track = transceiver.sender.track
                if isinstance(track, PacketTrack):
                    track.stop()
            await pc.close()
        return web.Response(status=204)

    async def close(self) -> None:
        for pc in list(self.pcs.values()):
            await pc.close()
        self.pcs.clear()
        if self._runner is not None:
            await self._runner.cleanup()


# -- counting subscribers -------------------------------------------------------------
@dataclass
class StreamRecord:
    """What one subscriber received of one SSRC."""

    kind: str
    label: str
    clock_rate: int
    owner: str = ""
    """The msid's stream id: the publisher's identity on our SFU."""
    frames: dict[int, float] = field(default_factory=dict)
    """RTP timestamp -> arrival of the frame's last packet (video: marker; audio: the packet)."""
    packets: int = 0
    bytes_window: int = 0
    """RTP bytes (after SRTP unprotect, i.e. as the sender wrote them) inside the window."""
    first_frame_at: float | None = None


class Player:
    """A WHEP subscriber that counts without decoding."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pc = client_pc()
        self.location = ""
        self.base = ""
        self.token = ""
        self.offer_at = 0.0
        self.streams: dict[int, StreamRecord] = {}
        self.window = (math.inf, math.inf)
        self._media_pts: set[int] = set()

    async def play(self, http: aiohttp.ClientSession, base: str, room: str, token: str,
                   kinds: list[tuple[str, str]]) -> None:
        """``kinds``: (kind, mime) per recvonly m-line."""
        self.base, self.token = base, token
        self.offer_at = time.monotonic()
        for kind, mime in kinds:
            transceiver = self.pc.addTransceiver(kind, direction="recvonly")
            prefer(transceiver, mime)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        status, text, location = await post_sdp(http, f"{base}/whep/{room}", token, self.pc.localDescription.sdp)
        if status != 201:
            await self.pc.close()
            raise RuntimeError(f"WHEP {status}: {text[:300]}")
        self.location = location
        self._learn(text)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
        for transport in {t.receiver.transport for t in self.pc.getTransceivers()}:
            aiortc_internals.handle_rtp_data(transport, self._on_rtp)

    def _learn(self, answer: str) -> None:
        parsed = aiortc_sdp.SessionDescription.parse(answer)
        for media in parsed.media:
            if media.direction not in ("sendonly", "sendrecv"):
                continue
            codecs = [c for c in media.rtp.codecs if not c.mimeType.lower().endswith("/rtx")]
            for c in codecs:
                if c.payloadType is not None:
                    self._media_pts.add(c.payloadType)
            rtx = {int(s) for g in media.ssrc_group if g.semantic == "FID" for s in g.items[1:]}
            msid = (media.msid or "").split(" ")
            label = msid[-1] or media.kind
            owner = msid[0] if len(msid) > 1 else ""
            for ssrc in media.ssrc:
                if ssrc.ssrc in rtx:
                    self.streams[ssrc.ssrc] = StreamRecord(media.kind, label + "/rtx", codecs[0].clockRate, owner)
                else:
                    self.streams[ssrc.ssrc] = StreamRecord(media.kind, label, codecs[0].clockRate, owner)

    async def _on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        now = time.monotonic()
        if len(data) < 12:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        record = self.streams.get(ssrc)
        if record is None:
            record = self.streams[ssrc] = StreamRecord("unknown", f"ssrc-{ssrc}", 90000)
        record.packets += 1
        w0, w1 = self.window
        if w0 <= now < w1:
            record.bytes_window += len(data)
        if data[1] & 0x7F not in self._media_pts:
            return
        if record.kind == "audio" or data[1] & 0x80:
            ts = int.from_bytes(data[4:8], "big")
            if ts not in record.frames:
                record.frames[ts] = now
                if record.first_frame_at is None:
                    record.first_frame_at = now

    def first_frame_ms(self, kind: str = "video") -> float | None:
        times = [r.first_frame_at for r in self.streams.values() if r.kind == kind and r.first_frame_at]
        if not times:
            return None
        return (max(times) - self.offer_at) * 1000

    def bytes_window(self) -> int:
        return sum(r.bytes_window for r in self.streams.values())

    def summary(self) -> dict[str, Any]:
        """Picklable results (for the parent process)."""
        return {"name": self.name, "offer_at": self.offer_at,
                "streams": [{"ssrc": s, "kind": r.kind, "label": r.label, "owner": r.owner, "clock_rate": r.clock_rate,
                             "frames": r.frames, "packets": r.packets, "bytes_window": r.bytes_window,
                             "first_frame_at": r.first_frame_at}
                            for s, r in self.streams.items() if not r.label.endswith("/rtx")
                            and r.kind != "unknown"],
                "bytes_window": self.bytes_window()}

    async def close(self, http: aiohttp.ClientSession | None = None) -> None:
        if http is not None and self.location:
            try:
                async with http.delete(self.base + self.location,
                                       headers={"Authorization": f"Bearer {self.token}"}):
                    pass
            except aiohttp.ClientError:
                pass
        await self.pc.close()


# -- analysis -------------------------------------------------------------------------
def match_frames(frames: dict[int, float], sent: dict[int, float], step: int) -> dict[int, float]:
    """pts -> arrival, for a subscriber's ``frames`` (RTP ts -> arrival) of a source whose
    frames went out at ``sent`` (pts -> time; ``step`` ticks apart, some shifted by half a step
    when the source marks them). The leg's timestamp origin is unknown (and a transcoding leg
    may round timestamps by a tick or two): of the candidate origins (the first frame received
    is one of the frames sent in the 3 s before it), the right one is the latest under which
    the received timestamps line up with the sent ones (90 %) and no frame arrives before it
    was sent."""
    if not frames or not sent:
        return {}
    items = sorted(frames.items(), key=lambda kv: kv[1])
    ts0, t0 = items[0]
    sample = items[:200]

    def to_pts(ts: int, offset: int) -> int | None:
        rel = (ts - offset) % TS_MOD
        for d in (0, 1, -1, 2, -2):
            if rel + d in sent:
                return rel + d
        return None

    candidates = sorted((pts for pts, t in sent.items() if t0 - 3.0 <= t <= t0 + 0.0005), reverse=True)
    for pts0 in candidates:
        offset = (ts0 - pts0) % TS_MOD
        ok = True
        mapped = 0
        for ts, t in sample:
            pts = to_pts(ts, offset)
            if pts is None:
                continue
            mapped += 1
            if t - sent[pts] < -0.0005:
                ok = False
                break
        if ok and mapped >= 0.9 * len(sample):
            out: dict[int, float] = {}
            for ts, t in items:
                pts = to_pts(ts, offset)
                if pts is not None and pts not in out:
                    out[pts] = t
            return out
    return {}
