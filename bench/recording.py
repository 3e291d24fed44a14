"""CPU cost of recording, on top of forwarding, in the server process.

    python -m bench.recording --json FILE [--seconds S] [--reps N]

Real servers run in child processes (the production ``serve`` path, uvloop): one with a
plain vault, one with an encrypted one, both started up front (an idle server costs
nothing). Each repetition opens a consultation through the signalling socket (consent
to recording), publishes ~1.5 Mbit/s of pre-encoded VP8 (640x480, 30 fps, a keyframe
every second) plus 64 kbit/s Opus over WHIP, and plays them over WHEP (the player does
not decode: only the server's CPU is measured). The child's CPU time
(``/proc/<pid>/stat``, every thread: the fsync thread counts) is taken over S seconds
with recording off, on, then off again (the baseline is the mean of the two off
windows, which cancels a slow drift of the machine); then the consultation ends. The
repetitions alternate plain and encrypted (plain first, then encrypted first, ...), so
that both see the same machine.

Figures (JSON keys are a contract):

* ``cpu_pct_per_recorded_mbps`` / ``cpu_pct_per_recorded_mbps_encrypted``: the median
  over the repetitions of (CPU % of one core with recording on - with it off) /
  recorded Mbit/s (media payload); clamped at 0. ``..._runs`` lists each repetition,
  ``..._spread`` is [min, max] of them: on a shared machine one window's noise is
  about +-0.3 % of a core, as much as the quantity measured, so trust the median of
  several repetitions, not one.
* ``frames_recorded`` (manifests), ``frames_forwarded`` (SFU frame counter read just
  before the start and just after the stop), summed over all repetitions. The publisher
  answers a PLI with a keyframe as a real encoder does (its GOP restarts), so a recording
  starts within a frame or two of its start. ``frames_seen`` is what the recorder was
  handed (the manifests' ``frames_seen``: counted as the SFU counts, while tapped) and
  ``frames_before_keyframe`` those of them that came before a track's first keyframe:
  undecodable, so not recorded. ``frames_recorded + frames_before_keyframe ==
  frames_seen`` unless packets were lost; ``frames_forwarded - frames_seen`` are frames
  forwarded between the counter's reads and the taps (the HTTP round trips).
* ``cpu_pct_per_recorded_mbps_replay`` / ``..._replay_encrypted``: the recording path
  alone, in this process, without the network: the same media as RTP datagrams with
  headers parsed as the SFU does, through ``RecordingSession.feed_rtp`` into real files
  (fsync on, the timer's flush every interval), CPU time (``process_time``) per second
  of media; median of several runs. A noise-free floor of what recording costs.

Target: <= 0.3 % of one core per recorded Mbit/s with encryption.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import fractions
import itertools
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import uvloop
from aiortc import RTCRtpCodecParameters, RTCSessionDescription
from aiortc.codecs import get_encoder
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtpPacket

from config.settings import load_settings
from core import logs
from core.auth import TokenService
from media import aiortc_internals
from media.ice import MediaNetwork, ScopedPeerConnection
from media.recording.session import RecordingSession
from media.recording.vault import MasterKey, Vault
from sfu.rtp import parse_header
from teleconsult.server import serve

TARGET_PCT_PER_MBPS = 0.3
VIDEO_BITRATE = 1_500_000
WIDTH, HEIGHT, FPS = 640, 480, 30
ROOT = Path(__file__).resolve().parent.parent


# -- media ---------------------------------------------------------------------------
def encode_vp8(frames: int = FPS) -> list[tuple[bytes, bool]]:
    """One second of VP8 at ~1.5 Mbit/s starting with a keyframe (it loops seamlessly)."""
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    ctx.time_base = fractions.Fraction(1, FPS)
    ctx.framerate = fractions.Fraction(FPS, 1)
    ctx.bit_rate = VIDEO_BITRATE
    ctx.gop_size = frames
    ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    rng = np.random.default_rng(7)
    base = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    base[:, :, 0] = np.linspace(0, 255, WIDTH)[None, :]
    out: list[tuple[bytes, bool]] = []
    for i in range(frames):
        # A gradient with light noise: what libvpx encodes at about the target bitrate.
        img = base.copy()
        img[:, :, 1] = (i * 8) % 255
        img = (img.astype(np.int16) + rng.integers(0, 32, size=img.shape)).clip(0, 255).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = ctx.time_base
        for packet in ctx.encode(frame):
            out.append((bytes(packet), bool(packet.is_keyframe)))
    for packet in ctx.encode(None):
        out.append((bytes(packet), bool(packet.is_keyframe)))
    out = out[:frames]
    out[0] = (out[0][0], True)
    return out


def encode_opus(frames: int = 50) -> list[bytes]:
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate, ctx.layout, ctx.format = 48000, "stereo", "s16"
    ctx.bit_rate = 64000
    out: list[bytes] = []
    for i in range(frames + 4):
        t = (np.arange(960) + i * 960) / 48000
        tone = (np.sin(2 * np.pi * 220 * t) * 6000).astype(np.int16)
        samples = np.repeat(tone, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, i * 960
        out.extend(bytes(p) for p in ctx.encode(frame))
    return out[:frames]


class PacketTrack(MediaStreamTrack):
    """A track of pre-encoded packets, paced in real time (aiortc packetizes, never encodes).

    A keyframe request (PLI/FIR, :meth:`keyframe_wanted`) restarts the loop at its first
    packet, a keyframe (the video loop is one GOP): what an encoder does."""

    def __init__(self, kind: str, payloads: list[bytes], interval: float, step: int, clock_rate: int) -> None:
        super().__init__()
        self.kind = kind
        self.sent = 0
        self.bytes = 0
        self._payloads = payloads
        self._interval = interval
        self._step = step
        self._clock_rate = clock_rate
        self._start: float | None = None
        self._index = 0
        self.keyframes_asked = 0

    def keyframe_wanted(self) -> None:
        self._index = 0
        self.keyframes_asked += 1

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self.sent * self._interval - time.monotonic()))
        data = self._payloads[self._index % len(self._payloads)]
        self._index += 1
        packet = av.Packet(data)
        packet.pts = self.sent * self._step
        packet.time_base = fractions.Fraction(1, self._clock_rate)
        self.sent += 1
        self.bytes += len(data)
        return packet


def null_decoders() -> None:
    """The player's receivers must not decode (its CPU is not what is measured)."""
    aiortc_internals.use_null_decoders()


# -- server child ------------------------------------------------------------------------
def write_config(directory: Path, encrypt: bool, flush_interval_s: float = 1.0) -> Path:
    config = directory / "bench.toml"
    config.write_text(f"""
[server]
host = "127.0.0.1"
port = 0
data_dir = "{directory / 'data'}"
drain_timeout_s = 0.5
log_level = "WARNING"
[media]
listen_ip = "127.0.0.1"
allowed_remote_networks = ["127.0.0.0/8"]
[auth]
signing_key = "{'b' * 40}"
[recording]
encrypt = {'true' if encrypt else 'false'}
master_key_env = "TC_BENCH_MASTER_KEY"
flush_interval_s = {flush_interval_s}
""")
    return config


def child_main(config: str) -> int:
    """``--serve CONFIG``: the server as ``teleconsult serve`` runs it."""
    settings = load_settings(config)
    logs.configure(settings.server.log_format, settings.server.log_level)
    return uvloop.run(serve(settings))


@dataclass
class Child:
    process: subprocess.Popen[str]
    url: str

    def cpu_s(self) -> float:
        """CPU time of every thread of the child: nanoseconds from ``schedstat`` (the
        10 ms ticks of ``stat`` are 0.1 % of a core over a 10 s window, a third of the
        quantity measured), else ``stat``."""
        try:
            total = 0
            for task in Path(f"/proc/{self.process.pid}/task").iterdir():
                try:
                    total += int((task / "schedstat").read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue  # a thread that just ended
            if total:
                return total / 1e9
        except OSError:
            pass
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        for _ in range(2):  # first signal drains, the second stops now
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    continue
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def start_child(config: Path, env: dict[str, str]) -> Child:
    process = subprocess.Popen([sys.executable, "-m", "bench.recording", "--serve", str(config)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, **env})
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.search(r"serving on (\S+)", line)
        if found:
            return Child(process, found.group(1))
    process.kill()
    raise RuntimeError("the server child did not start")


# -- signalling client ---------------------------------------------------------------
class Socket:
    """A signalling client whose socket is read all the time (by a task), so that the
    server's pings are answered during the long measurement windows."""

    def __init__(self, http: Any, ws: Any) -> None:
        self.http, self.ws = http, ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._arrived = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, http: Any, url: str, token: str) -> Socket:
        sock = cls(http, await http.ws_connect(url.replace("http", "ws", 1) + "/ws"))
        await sock.request("hello", version=1, token=token)
        return sock

    async def _read(self) -> None:
        async for message in self.ws:  # answers pings as it goes
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            msg = json.loads(message.data)
            reply = self._replies.pop(msg.get("id"), None) if msg.get("id") is not None else None
            if reply is not None and not reply.done():
                reply.set_result(msg)
            else:
                self.events.append(msg)
                self._arrived.set()

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        mid = next(self.ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[mid] = reply
        await self.ws.send_json({"type": type_, "id": mid, **fields})
        msg = await asyncio.wait_for(reply, 20)
        if msg["type"] != f"{type_}.ok":
            raise RuntimeError(f"{type_}: {msg}")
        return msg

    async def event(self, type_: str) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            for e in self.events:
                if e["type"] == type_:
                    self.events.remove(e)
                    return e
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


async def frames_total(http: Any, url: str) -> float:
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    return sum(float(m.group(1)) for m in re.finditer(r'^teleconsult_sfu_frames_total\{[^}]*\} (\S+)$', text, re.M))


async def whip_or_whep(http: Any, url: str, token: str, pc: Any) -> None:
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(url, data=pc.localDescription.sdp,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}) as r:
        answer = await r.text()
        if r.status != 201:
            raise RuntimeError(f"{url}: {r.status} {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


async def measure(child: Child, settings: Any, vp8: list[tuple[bytes, bool]], opus: list[bytes],
                  seconds: float, rep: int = 0) -> dict[str, float]:
    """One repetition: a new consultation, windows off / on / off, then it ends."""
    tokens = TokenService(settings.auth, settings.server.data_dir)
    network = MediaNetwork.from_settings(settings.effective_media, settings.ice)
    url = child.url
    async with aiohttp.ClientSession() as http:
        nurse = await Socket.connect(http, url, tokens.issue_access("nurse", "bench-nurse", site="cabin-demo"))
        doctor = await Socket.connect(http, url, tokens.issue_access("physician", "dr-demo"))
        await doctor.request("presence.set", status="available")
        cid = (await nurse.request("visit.request", patient_ref=f"bench-{rep}", reason="bench", specialty="general",
                                   priority="routine", consent_teleconsultation=True,
                                   consent_recording=True))["consultation"]["id"]
        await doctor.event("offer.received")
        accepted = await doctor.request("offer.accept", consultation_id=cid)
        started = await nurse.event("consultation.started")
        video = PacketTrack("video", [d for d, _ in vp8], 1 / FPS, 90000 // FPS, 90000)
        audio = PacketTrack("audio", opus, 0.02, 960, 48000)
        publisher = ScopedPeerConnection(network)
        aiortc_internals.route_keyframe_requests(publisher.addTransceiver(video, direction="sendonly").sender,
                                                 video.keyframe_wanted)
        publisher.addTransceiver(audio, direction="sendonly")
        player = ScopedPeerConnection(network)
        player.addTransceiver("video", direction="recvonly")
        player.addTransceiver("audio", direction="recvonly")
        doctor_access = tokens.issue_access("physician", "dr-demo")
        try:
            await whip_or_whep(http, f"{url}/whip/{cid}", started["room_token"], publisher)
            await asyncio.sleep(0.5)
            await whip_or_whep(http, f"{url}/whep/{cid}", accepted["room_token"], player)
            for pc in (publisher, player):
                for _ in range(200):
                    if pc.connectionState == "connected":
                        break
                    await asyncio.sleep(0.05)
            await asyncio.sleep(2.0)  # warm up: bitrate and first keyframes settle

            cpu0, wall0, bytes0 = child.cpu_s(), time.monotonic(), video.bytes + audio.bytes
            await asyncio.sleep(seconds)
            cpu_off = (child.cpu_s() - cpu0) / (time.monotonic() - wall0) * 100

            headers = {"Authorization": f"Bearer {doctor_access}"}
            frames0 = await frames_total(http, url)
            async with http.post(f"{url}/api/consultations/{cid}/recording", json={"action": "start"},
                                 headers=headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"recording start: {r.status} {await r.text()}")
            await asyncio.sleep(1.0)  # first keyframe, files created
            cpu0, wall0, bytes0 = child.cpu_s(), time.monotonic(), video.bytes + audio.bytes
            await asyncio.sleep(seconds)
            wall = time.monotonic() - wall0
            cpu_on = (child.cpu_s() - cpu0) / wall * 100
            mbps = (video.bytes + audio.bytes - bytes0) * 8 / wall / 1e6
            async with http.post(f"{url}/api/consultations/{cid}/recording", json={"action": "stop"},
                                 headers=headers) as r:
                manifest = (await r.json())["manifest"]
            frames1 = await frames_total(http, url)
            # A second window without recording after the stop: the baseline is the mean of
            # the windows around the recording, which cancels a slow drift of the machine.
            await asyncio.sleep(0.5)
            cpu0, wall0 = child.cpu_s(), time.monotonic()
            await asyncio.sleep(seconds)
            cpu_off1 = cpu_off
            cpu_off2 = (child.cpu_s() - cpu0) / (time.monotonic() - wall0) * 100
            cpu_off = (cpu_off1 + cpu_off2) / 2
        finally:
            await publisher.close()
            await player.close()
            try:
                await doctor.request("consultation.end", consultation_id=cid, reason="completed")
            except Exception as exc:  # the next repetition would find the physician busy
                print(f"consultation.end: {exc!r}", file=sys.stderr)
            for sock in (nurse, doctor):
                await sock.close()
            await http.close()
    return {"cpu_off": cpu_off, "cpu_off_before": cpu_off1, "cpu_off_after": cpu_off2, "cpu_on": cpu_on, "mbps": mbps,
            "frames_recorded": sum(t["frames"] for t in manifest["tracks"]), "frames_forwarded": frames1 - frames0,
            "frames_seen": sum(t["frames_seen"] for t in manifest["tracks"]),
            "frames_before_keyframe": sum(t["frames_before_keyframe"] for t in manifest["tracks"])}


# -- in-process replay: the recording path alone ---------------------------------------
def rtp_stream(vp8: list[tuple[bytes, bool]], opus: list[bytes], seconds: float) -> list[tuple[float, str, bytes]]:
    """(media time, "video" | "audio", RTP datagram) of ``seconds`` of the bench's media,
    packetized by aiortc's own packetizers, in arrival order."""
    video_codec, audio_codec = replay_codecs()
    out: list[tuple[float, str, bytes]] = []
    for kind, codec, payloads, rate, step in (
        ("video", video_codec, [d for d, _ in vp8], FPS, 90000 // FPS),
        ("audio", audio_codec, opus, 50, 960),
    ):
        encoder = get_encoder(codec)
        seq = 0
        for i in range(int(seconds * rate)):
            frame = av.Packet(payloads[i % len(payloads)])
            frame.pts, frame.time_base = i * step, fractions.Fraction(1, codec.clockRate)
            chunks, timestamp = encoder.pack(frame)
            for j, chunk in enumerate(chunks):
                packet = RtpPacket(payload_type=codec.payloadType or 0, sequence_number=seq & 0xFFFF,
                                   timestamp=timestamp & 0xFFFFFFFF, ssrc=1 if kind == "video" else 2,
                                   marker=int(j == len(chunks) - 1), payload=chunk)
                seq += 1
                out.append((i / rate, kind, packet.serialize()))
    out.sort(key=lambda item: item[0])
    return out


def replay_codecs() -> tuple[Any, Any]:
    return (RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
            RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111))


def replay_once(stream: list[tuple[float, str, bytes]], media_seconds: float, encrypt: bool, directory: Path,
                flush_interval_s: float = 1.0) -> float:
    """CPU % of one core per recorded Mbit/s of the recording path alone (see the
    module's docstring): the SFU's header parse is done beforehand (the SFU does it
    anyway), fsyncs run on a background thread as in the server and count
    (``process_time`` is the whole process)."""
    video_codec, audio_codec = replay_codecs()
    items = [(t, kind, data, parse_header(data)) for t, kind, data in stream]
    mbits = sum(len(data) for _, _, data, _ in items) * 8 / 1e6
    vault = Vault(MasterKey.generate() if encrypt else None)
    media_now = [0.0]
    executor = ThreadPoolExecutor(max_workers=1)
    session = RecordingSession.start(directory, f"replay-{os.getpid()}-{time.monotonic_ns()}", vault,
                                     started_by="bench", flush_interval_s=flush_interval_s,
                                     clock=lambda: media_now[0], sync_executor=executor)
    try:
        session.add_track("video", "bench", "camera", video_codec)
        session.add_track("audio", "bench", "microphone", audio_codec)
        feed = session.feed_rtp
        next_flush = flush_interval_s
        start = time.process_time()
        for t, kind, data, header in items:
            media_now[0] = t
            if t >= next_flush:
                session.flush_stale()
                next_flush += flush_interval_s
            feed(kind, data, header, t)
        session.stop("bench")
        executor.shutdown(wait=True)
        cpu = time.process_time() - start
    finally:
        session.stop("bench")
        executor.shutdown(wait=True)
    return cpu / media_seconds * 100 / (mbits / media_seconds)


def replay(vp8: list[tuple[bytes, bool]], opus: list[bytes], flush_interval_s: float, runs: int = 5,
           media_seconds: float = 30.0) -> dict[str, Any]:
    stream = rtp_stream(vp8, opus, media_seconds)
    figures: dict[str, list[float]] = {"plain": [], "encrypted": []}
    with tempfile.TemporaryDirectory(prefix="bench-recording-replay-") as tmp:
        for _ in range(runs):
            for encrypt in (False, True):
                figures["encrypted" if encrypt else "plain"].append(
                    replay_once(stream, media_seconds, encrypt, Path(tmp), flush_interval_s))
    return {mode: summary(values) for mode, values in figures.items()}


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": round(max(statistics.median(values), 0.0), 4),
            "spread": [round(min(values), 4), round(max(values), 4)],
            "runs": [round(v, 4) for v in values]}


async def run(seconds: float, flush_interval_s: float = 1.0, reps: int = 3) -> dict[str, Any]:
    null_decoders()
    vp8, opus = encode_vp8(), encode_opus()
    results: dict[str, list[dict[str, float]]] = {"plain": [], "encrypted": []}
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    env = {"TC_BENCH_MASTER_KEY": key}
    with tempfile.TemporaryDirectory(prefix="bench-recording-") as tmp:
        children: dict[str, tuple[Child, Any]] = {}
        try:
            for mode in ("plain", "encrypted"):
                directory = Path(tmp) / mode
                directory.mkdir()
                config = write_config(directory, mode == "encrypted", flush_interval_s)
                children[mode] = (start_child(config, env), load_settings(config, env=env))
            for rep in range(reps):
                order = ("plain", "encrypted") if rep % 2 == 0 else ("encrypted", "plain")
                for mode in order:
                    child, settings = children[mode]
                    results[mode].append(await measure(child, settings, vp8, opus, seconds, rep))
        finally:
            for child, _ in children.values():
                child.stop()
    replayed = replay(vp8, opus, flush_interval_s)

    def per_mbps(r: dict[str, float]) -> float:
        return (r["cpu_on"] - r["cpu_off"]) / r["mbps"]

    def mean(mode: str, key: str) -> float:
        return statistics.fmean(r[key] for r in results[mode])

    plain, enc = summary([per_mbps(r) for r in results["plain"]]), summary([per_mbps(r) for r in results["encrypted"]])
    everything = results["plain"] + results["encrypted"]
    return {
        "cpu_pct_per_recorded_mbps": float(plain["median"]),
        "cpu_pct_per_recorded_mbps_encrypted": float(enc["median"]),
        "frames_recorded": int(sum(r["frames_recorded"] for r in everything)),
        "frames_forwarded": int(sum(r["frames_forwarded"] for r in everything)),
        "frames_seen": int(sum(r["frames_seen"] for r in everything)),
        "frames_before_keyframe": int(sum(r["frames_before_keyframe"] for r in everything)),
        "cpu_pct_per_recorded_mbps_spread": plain["spread"],
        "cpu_pct_per_recorded_mbps_encrypted_spread": enc["spread"],
        "cpu_pct_per_recorded_mbps_runs": plain["runs"],
        "cpu_pct_per_recorded_mbps_encrypted_runs": enc["runs"],
        "cpu_pct_per_recorded_mbps_replay": replayed["plain"]["median"],
        "cpu_pct_per_recorded_mbps_replay_encrypted": replayed["encrypted"]["median"],
        "cpu_pct_per_recorded_mbps_replay_encrypted_spread": replayed["encrypted"]["spread"],
        "recorded_mbps": round(statistics.fmean(r["mbps"] for r in everything), 3),
        "cpu_pct_forwarding_only": round(statistics.fmean(r["cpu_off"] for r in everything), 2),
        "cpu_pct_recording_plain": round(mean("plain", "cpu_on"), 2),
        "cpu_pct_recording_encrypted": round(mean("encrypted", "cpu_on"), 2),
        "windows": [{"mode": mode, **{k: round(v, 3) for k, v in r.items()}}
                    for mode in ("plain", "encrypted") for r in results[mode]],
        "seconds": seconds,
        "reps": reps,
        "flush_interval_s": flush_interval_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recording", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per phase")
    parser.add_argument("--reps", type=int, default=3,
                        help="repetitions (each: a consultation, windows off/on/off) per vault mode; median reported")
    parser.add_argument("--flush-interval", type=float, default=1.0, metavar="S",
                        help="recording.flush_interval_s of the server (crash-safety window; each flush fsyncs)")
    parser.add_argument("--serve", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return child_main(args.serve)
    figures = asyncio.run(run(args.seconds, args.flush_interval, max(1, args.reps)))
    print(f"recorded {figures['recorded_mbps']} Mbit/s; server CPU: forwarding only "
          f"{figures['cpu_pct_forwarding_only']} %, + recording {figures['cpu_pct_recording_plain']} %, "
          f"+ encrypted recording {figures['cpu_pct_recording_encrypted']} % of one core")
    print(f"cpu_pct_per_recorded_mbps            {figures['cpu_pct_per_recorded_mbps']}  "
          f"(median of {figures['reps']}, spread {figures['cpu_pct_per_recorded_mbps_spread']})")
    print(f"cpu_pct_per_recorded_mbps_encrypted  {figures['cpu_pct_per_recorded_mbps_encrypted']}  "
          f"(target <= {TARGET_PCT_PER_MBPS}; median of {figures['reps']}, "
          f"spread {figures['cpu_pct_per_recorded_mbps_encrypted_spread']})")
    print(f"recording path alone (replay, no network): {figures['cpu_pct_per_recorded_mbps_replay']} plain, "
          f"{figures['cpu_pct_per_recorded_mbps_replay_encrypted']} encrypted %/Mbit/s")
    print(f"frames recorded {figures['frames_recorded']} of {figures['frames_seen']} forwarded while recording "
          f"({figures['frames_before_keyframe']} before a track's first keyframe: undecodable, not recorded; "
          f"{figures['frames_seen'] - figures['frames_recorded'] - figures['frames_before_keyframe']} lost); "
          f"SFU counter read before the start and after the stop: {figures['frames_forwarded']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
