"""In-process micro-benchmark of the SFU's per-packet path (CPU time per packet).

``python -m bench.hotpath [--subscribers 1,4,8] [--packets 2000] [--repeats 15] [--send-path native|python]
[--baseline-tree DIR [--rounds 3]] [--json FILE]``

What runs is the SFU's real code, from the datagram callback on: SRTP datagrams
(protected beforehand with the publisher's session, outside the measurement)
go to the tapped transport's ``Connection.data_received``
(:func:`media.aiortc_internals.tap_transport`): SRTP unprotect,
:meth:`sfu.participant.Participant.on_rtp` (parse, route, receiver statistics and
NACK generator), :class:`sfu.forwarder.Forwarder` (keyframe detection, counters)
and, per subscriber, :class:`sfu.subscription.Subscription` (sequence/timestamp
mapping, header and extension rewriting, NACK history, SRTP protect with a real
libsrtp session, a :class:`media.send_batch.SendBatch` that sends each subscriber's
packets of one event-loop turn with one ``sendmmsg`` (``--send-path native``, the default) or
one ``sendto`` each (``python``) on a real uvloop UDP socket to a real loopback socket, Sender
Report counters). Only the aiortc and aioice objects around them are
stand-ins that carry the attributes the SFU reads (no DTLS handshake, no ICE), made by
``media.aiortc_internals`` and ``media.aioice_internals``, which know those attributes.

The traffic is one consultation-like publisher: VP8 ~1.5 Mbit/s at 30 fps
(~6 packets per frame, a keyframe every 2 s) with ``mid`` + ``abs-send-time``
extensions, and Opus 20 ms with ``mid`` + ``ssrc-audio-level``, interleaved as they
would arrive; each subscriber takes both tracks.

Datagrams arrive in real bursts: a video frame's packets (and the audio packets that arrive
with it), then the event loop turns (``asyncio.sleep(0)``), as it would between two reads of
the socket, and the batched writes go out. Measured: ``time.process_time()`` around every
burst of a batch of about 200 datagrams, the loop turns included (receiving sockets are
drained between batches, outside the measurement), per input packet and per (packet x
subscriber); ``datagrams_per_syscall``: datagrams sent per system call that sent them; the figure is the median over ``--repeats``
repetitions, which is robust against the other jobs of a shared machine (CPU
time, not wall time; a descheduled process does not count). Several subscriber
counts are interleaved repetition by repetition.

``--baseline-tree DIR`` compares with another checkout (an A/B against an older commit: ``git
worktree add DIR COMMIT``): this same bench runs ``--rounds`` times on each tree, alternately,
each run a process of its own with the tree's ``config``, ``core``, ``media`` and ``sfu`` (the
bench's own file is this one, which also drives the older code); the JSON adds ``baseline``
(its tree and its runs' steps) and ``speedup`` per subscriber count (the baseline's median
µs per packet and subscriber over this tree's, medians of the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from config.settings import MediaSettings
from core.auth import RoomGrant
from core.vocabulary import Role
from media import aioice_internals, aiortc_internals
from sfu.events import PublicationInfo
from sfu.metrics import TrackCounts
from sfu.participant import Participant
from sfu.publication import Publication
from sfu.room import Room
from sfu.sdp import LegParameters
from sfu.subscription import Subscription

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
VIDEO_EXT = {MID_URI: 1, ABS_SEND_TIME_URI: 3}
AUDIO_EXT = {MID_URI: 1, AUDIO_LEVEL_URI: 2}
BATCH = 200


def _ext_block(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in elements)
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


class Traffic:
    """Plain RTP packets of one publisher (video + audio), generated deterministically."""

    def __init__(self, video_ssrc: int, audio_ssrc: int, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.video_ssrc, self.audio_ssrc = video_ssrc, audio_ssrc
        self.vseq, self.aseq = 1000, 5000
        self.vts, self.ats = 123456, 654321
        self.frame = 0
        self.payloads = [self.rng.randbytes(1200) for _ in range(16)]
        self.pending: list[bytes] = []

    def _video_frame(self) -> list[bytes]:
        keyframe = self.frame % 60 == 0
        size = 24000 if keyframe else self.rng.randint(4000, 8000)
        out = []
        pieces = max(1, -(-size // 1100))
        for i in range(pieces):
            n = min(1100, size - i * 1100)
            descriptor = bytes([0x90 if i == 0 else 0x80, 0x80, 0x80 | (self.frame >> 8) & 0x7F, self.frame & 0xFF])
            vp8 = bytes([0x00 if keyframe else 0x01]) if i == 0 else b""
            body = descriptor + vp8 + self.payloads[(self.frame + i) % 16][:n]
            abs_send = ((self.frame * 33 + i) & 0xFFFFFF).to_bytes(3, "big")
            ext = _ext_block([(1, b"0"), (3, abs_send)])
            marker = 0x80 if i == pieces - 1 else 0
            out.append(struct.pack("!BBHII", 0x90, marker | 96, self.vseq & 0xFFFF, self.vts & 0xFFFFFFFF,
                                   self.video_ssrc) + ext + body)
            self.vseq += 1
        self.vts += 3000
        self.frame += 1
        return out

    def _audio(self) -> bytes:
        ext = _ext_block([(1, b"1"), (2, bytes([0x80 | 40]))])
        packet = struct.pack("!BBHII", 0x90, 111, self.aseq & 0xFFFF, self.ats & 0xFFFFFFFF, self.audio_ssrc) + ext \
            + self.payloads[self.aseq % 16][:160]
        self.aseq += 1
        self.ats += 960
        return packet

    def bursts(self, n: int) -> list[list[bytes]]:
        """The next bursts (at least ``n`` packets, whole bursts), in arrival order: per 100 ms,
        3 video frames, each with the audio packets that arrive with it (5 in all)."""
        out: list[list[bytes]] = []
        total = 0
        while total < n:
            for i in range(3):
                burst = self._video_frame()
                burst.append(self._audio())
                if self.frame % 3 == 0:
                    burst.append(self._audio())
                if i == 2:
                    burst.append(self._audio())
                out.append(burst)
                total += len(burst)
        return out


class Setup:
    """One publisher (video + audio) forwarded to ``n`` subscribers over loopback."""

    def __init__(self, n: int, seed: int, send_path: str) -> None:
        self.n = n
        self.seed = seed
        self.send_path = send_path
        self.send_batch: Any = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(self.seed)
        vssrc, assrc = rng.randrange(1 << 32), rng.randrange(1 << 32)
        self.traffic = Traffic(vssrc, assrc, seed=self.seed)
        self.pub_tx, rx = aiortc_internals.srtp_session_pairs()[0]
        connection = aioice_internals.stand_in_connection()
        publisher_dtls = aiortc_internals.stand_in_dtls_transport(connection, rx=rx)
        participant = Participant.__new__(Participant)
        participant.id = "bench"
        participant.closed = False
        participant.routes = {}
        participant.publications = {}
        codecs = {"video": RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
                  "audio": RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, payloadType=111,
                                                 channels=2)}
        self.publications = []
        for mid, kind, ssrc, ext in (("0", "video", vssrc, VIDEO_EXT), ("1", "audio", assrc, AUDIO_EXT)):
            info = PublicationInfo(id=f"PU_{kind}", room="bench", identity="cabin", role="nurse", session_id="bench",
                                   kind=kind, source="camera" if kind == "video" else "microphone",
                                   codec=codecs[kind].mimeType, published_at=0.0)
            leg = LegParameters(mid=mid, kind=kind, codec=codecs[kind], rtx_payload_type=97 if kind == "video"
                                else None, ssrc=None, rtx_ssrc=None, extensions=dict(ext))
            pub = Publication(info, aiortc_internals.stand_in_receiver(), leg, (ssrc,), {}, 0.5, TrackCounts(),
                              lambda: None)
            participant.publications[mid] = pub
            participant.routes[ssrc] = (pub, None)
            self.publications.append(pub)
        participant._sending = set()
        if hasattr(participant, "init_congestion_control"):  # issue 13 (A/B runs: the code before it)
            participant.grant = RoomGrant(room="bench", identity="cabin", role=Role.NURSE)
            participant.room = Room("bench")
            participant.init_congestion_control(MediaSettings())
        if hasattr(participant, "on_rtp_now"):
            aiortc_internals.tap_transport(publisher_dtls, participant.on_rtp, participant.on_rtp_now)
        else:  # the code before on_rtp_now (A/B runs)
            aiortc_internals.tap_transport(publisher_dtls, participant.on_rtp)
        self.data_received = connection.data_received
        self.sinks: list[socket.socket] = []
        self.subscriptions = []
        batched = {}
        if "batch" in inspect.signature(Subscription).parameters:  # this batching (A/B runs)
            from media.send_batch import SendBatch
            self.send_batch = SendBatch(native=self.send_path == "native")
            batched = {"batch": self.send_batch}
        self.transports = []
        for i in range(self.n):
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sink.bind(("127.0.0.1", 0))
            sink.setblocking(False)
            self.sinks.append(sink)
            udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            self.transports.append(udp)
            tx, _unused = aiortc_internals.srtp_session_pairs()[0]
            sub_dtls = aiortc_internals.stand_in_dtls_transport(
                aioice_internals.stand_in_connection(udp, sink.getsockname()), tx=tx)
            if self.send_batch is not None:
                batched["writer"] = aiortc_internals.RtpWriter(sub_dtls)  # shared, as a participant's
            for mid, pub, ext in (("0", self.publications[0], VIDEO_EXT), ("1", self.publications[1], AUDIO_EXT)):
                leg = LegParameters(mid=mid, kind=pub.info.kind, codec=pub.codec,
                                    rtx_payload_type=97 if pub.info.kind == "video" else None,
                                    ssrc=rng.randrange(1 << 32), rtx_ssrc=rng.randrange(1 << 32)
                                    if pub.info.kind == "video" else None, extensions=dict(ext))
                sub = Subscription(f"SU_{i}_{mid}", f"s{i}", aiortc_internals.stand_in_sender(), sub_dtls, leg,
                                   pub.extensions, 256, pub.counts, **batched)
                sub.attach(pub.forwarder, pub.id, pub.extensions)
                self.subscriptions.append(sub)
        await asyncio.sleep(0)

    def bursts(self, n: int) -> list[list[bytes]]:
        protect = self.pub_tx.protect
        return [[protect(p) for p in burst] for burst in self.traffic.bursts(n)]

    def syscall_counts(self) -> tuple[int, int]:
        """(datagrams sent, system calls that sent them) so far."""
        if self.send_batch is None:  # the code before batching: one sendto per datagram
            sent = sum(p.counts.packets_out for p in self.publications)
            return sent, sent
        return self.send_batch.counts.datagrams, self.send_batch.counts.syscalls

    def drain(self) -> int:
        got = 0
        for sink in self.sinks:
            while True:
                try:
                    got += len(sink.recv(2048))
                except BlockingIOError:
                    break
        return got

    def close(self) -> None:
        for udp in self.transports:
            udp.close()
        for sink in self.sinks:
            sink.close()


async def measure(counts: list[int], packets: int, repeats: int, warmup: int,
                  send_path: str = "native") -> dict[str, Any]:
    setups = {n: Setup(n, seed=7 + n, send_path=send_path) for n in counts}
    for s in setups.values():
        await s.start()
    samples: dict[int, list[float]] = {n: [] for n in counts}
    out_bytes: dict[int, int] = {n: 0 for n in counts}
    fed_total: dict[int, int] = {n: 0 for n in counts}
    for rep in range(warmup + repeats):
        for n in counts:
            s = setups[n]
            spent = 0.0
            left = packets
            fed = 0
            got = 0
            while left > 0:
                bursts = s.bursts(min(BATCH, left))  # whole bursts: the last may run past ``packets``
                left -= sum(len(b) for b in bursts)
                fed += sum(len(b) for b in bursts)
                received = s.data_received
                t0 = time.process_time()
                for burst in bursts:
                    for d in burst:
                        received(d, 1)
                    await asyncio.sleep(0)  # the loop turns: batched writes go out (and any PLI task)
                spent += time.process_time() - t0
                got += s.drain()
            fed_total[n] += fed
            if rep >= warmup:
                samples[n].append(spent / fed * 1e6)
                out_bytes[n] += got
    batch = next(iter(setups.values())).send_batch
    result: dict[str, Any] = {"packets": packets, "repeats": repeats, "steps": [],
                              "send_path": "sendto" if batch is None else "native" if batch.uses_native else "python"}
    all_datagrams = all_calls = 0
    for n in counts:
        s = setups[n]
        sent = sum(p.counts.packets_out for p in s.publications)
        datagrams, calls = s.syscall_counts()
        all_datagrams += datagrams
        all_calls += calls
        med = statistics.median(samples[n])
        result["steps"].append({
            "subscribers": n,
            "us_per_packet_p50": round(med, 3),
            "us_per_packet_min": round(min(samples[n]), 3),
            "us_per_packet_max": round(max(samples[n]), 3),
            "us_per_packet_subscriber_p50": round(med / n, 3) if n else None,
            "packets_in": fed_total[n],
            "packets_out": sent,
            "received_bytes": out_bytes[n],
            "datagrams_per_syscall": round(datagrams / calls, 2) if calls else None,
        })
        s.close()
    result["datagrams_per_syscall"] = round(all_datagrams / all_calls, 2) if all_calls else None
    if len(counts) >= 2:
        lo, hi = min(counts), max(counts)
        a = next(x for x in result["steps"] if x["subscribers"] == lo)["us_per_packet_p50"]
        b = next(x for x in result["steps"] if x["subscribers"] == hi)["us_per_packet_p50"]
        result["marginal_us_per_subscriber"] = round((b - a) / (hi - lo), 3)
    return result


def _run_in_tree(tree: Path, argv: list[str]) -> dict[str, Any]:
    """This bench in a process of its own whose ``config``, ``core``, ``media`` and ``sfu`` are
    ``tree``'s (this file drives them: it knows the older code's constructors)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        code = ("import runpy, sys; tree, path = sys.argv[1], sys.argv[2]; sys.path.insert(0, tree); "
                "sys.argv = [path] + sys.argv[3:]; runpy.run_path(path, run_name='__main__')")
        subprocess.run([sys.executable, "-c", code, str(tree), __file__, *argv, "--json", str(out)], cwd=tree,
                       check=True, stdout=subprocess.DEVNULL, timeout=1800)
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def compare(tree: Path, baseline: Path, argv: list[str], rounds: int) -> dict[str, Any]:
    """Alternate runs of this bench on ``tree`` and ``baseline``; the last run's result with
    ``baseline`` and ``speedup`` added."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for i in range(rounds):
        for runs, where in ((ours, tree), (theirs, baseline)) if i % 2 == 0 else ((theirs, baseline), (ours, tree)):
            runs.append(_run_in_tree(where, argv))
            print(f"round {i + 1}/{rounds}: {'baseline' if where == baseline else 'this tree'} done", file=sys.stderr)

    def per_subscriber(runs: list[dict[str, Any]]) -> dict[int, float]:
        out: dict[int, list[float]] = {}
        for run in runs:
            for step in run["steps"]:
                if step["subscribers"]:
                    out.setdefault(step["subscribers"], []).append(step["us_per_packet_subscriber_p50"])
        return {n: statistics.median(v) for n, v in out.items()}

    mine, before = per_subscriber(ours), per_subscriber(theirs)
    result = ours[-1]
    result["rounds"] = rounds
    result["runs"] = [run["steps"] for run in ours]
    result["baseline"] = {"tree": str(baseline), "runs": [run["steps"] for run in theirs],
                          "us_per_packet_subscriber_p50": {str(n): round(v, 3) for n, v in before.items()}}
    result["us_per_packet_subscriber_p50"] = {str(n): round(v, 3) for n, v in mine.items()}
    result["speedup"] = {str(n): round(before[n] / mine[n], 3) for n in mine if n in before and mine[n]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", default="1,4,8", help="comma-separated subscriber counts (interleaved)")
    parser.add_argument("--packets", type=int, default=2000, help="input packets per repetition")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--send-path", choices=("native", "python"), default="native",
                        help="how subscriptions forward and write ([media] send_path; native: sfu._fanout and media._rtpsend)")
    parser.add_argument("--baseline-tree", metavar="DIR", type=Path,
                        help="also run on this checkout, alternately, and report the speedup (module docstring)")
    parser.add_argument("--rounds", type=int, default=3, help="runs on each tree with --baseline-tree")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.subscribers.split(",") if x.strip()]
    if args.baseline_tree is not None:
        if not (args.baseline_tree / "sfu").is_dir() or args.rounds < 1:
            parser.error(f"--baseline-tree: {args.baseline_tree} is not a teleconsult checkout (no sfu/), "
                         "or --rounds < 1")
        own = [f"--subscribers={args.subscribers}", f"--packets={args.packets}", f"--repeats={args.repeats}",
               f"--warmup={args.warmup}", f"--send-path={args.send_path}"]
        result = compare(Path(__file__).resolve().parents[1], args.baseline_tree.resolve(), own, args.rounds)
    else:
        result = uvloop.run(measure(counts, args.packets, args.repeats, args.warmup, args.send_path))
    for step in result["steps"]:
        print(f"{step['subscribers']} subscriber(s): {step['us_per_packet_p50']:.2f} us/packet "
              f"(min {step['us_per_packet_min']:.2f}, max {step['us_per_packet_max']:.2f}), "
              f"{step['us_per_packet_subscriber_p50'] or 0:.2f} us per packet and subscriber, "
              f"{step['datagrams_per_syscall']} datagrams per system call")
    if "marginal_us_per_subscriber" in result:
        print(f"marginal: {result['marginal_us_per_subscriber']:.2f} us per packet per added subscriber")
    if "speedup" in result:
        for n, speedup in result["speedup"].items():
            print(f"{n} subscriber(s), medians of {result['rounds']} rounds: "
                  f"{result['baseline']['us_per_packet_subscriber_p50'][n]:.2f} us per packet and subscriber "
                  f"on the baseline, {result['us_per_packet_subscriber_p50'][n]:.2f} here: {speedup:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
