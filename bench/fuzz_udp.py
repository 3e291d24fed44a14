"""Fuzz surface ``udp``: datagrams to the media ports of a live call.

Each batch opens a call through the signalling (nurse publishes camera and microphone
over WHIP, the physician plays them over WHEP, pre-encoded media flowing), then sends
datagrams to the server's media ports:

* from the publisher's own ICE pair (the 5-tuple the server knows), unprotected: empty,
  short, STUN-like (valid and broken headers, random attributes), DTLS-like records,
  RTP/RTCP-like headers that fail SRTP, random bytes, a few large ones;
* SRTP-protected by the publisher's session (what a participant with a publish grant can
  send): RTP with random SSRCs (a pool that grows past the dozens a session negotiates),
  the publication's payload types or random ones, odd header extensions, CSRC counts and
  padding; RTCP of every type (SR/RR with many blocks, SDES, BYE, APP, NACK, PLI, FIR,
  REMB, transport-cc, XR), compound and with wrong lengths;
* the same RTCP from the subscriber's session (NACK and PLI floods);
* from a socket that is no party to the call.

Each batch has a focus: mixed, an "SSRC storm" (RTP with a new SSRC each time and the
publication's payload type, through the publisher's session) or an "RTCP storm" (NACK,
PLI/FIR or report floods from either side).

Between batches: the player must still receive media, the call must end
(``consultation.end`` answered within 5 s: a wedged teardown is a hang) and its room
must close. A new call serves the next batch.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import aiohttp

from bench.fuzz_call import Call, open_call
from bench.fuzz_grammar import Grammar
from bench.fuzz_target import HANG_S, CheckFailed, Context, Surface, metrics
from media import aioice_internals, aiortc_internals

STUN_COOKIE = 0x2112A442


# -- datagrams ------------------------------------------------------------------------
def rtp(g: Grammar, ssrc: int, pt: int) -> bytes:
    cc = g.pick((0, 0, 0, 1, 15))
    ext = g.chance(0.3)
    pad = g.chance(0.1)
    first = 0x80 | (0x20 if pad else 0) | (0x10 if ext else 0) | cc
    header = struct.pack("!BBHII", first, (0x80 if g.chance(0.3) else 0) | (pt & 0x7F), g.rng.getrandbits(16),
                         g.rng.getrandbits(32), ssrc)
    header += b"".join(struct.pack("!I", g.rng.getrandbits(32)) for _ in range(cc if g.chance(0.8) else 0))
    if ext:
        profile = g.pick((0xBEDE, 0x1000, g.rng.getrandbits(16)))
        words = g.pick((0, 1, 2, 255, 65535))
        body = g.random_bytes(min(words, 16) * 4)
        header += struct.pack("!HH", profile, words) + body
    payload = g.random_bytes(g.pick((0, 1, 10, 100, 1000, 1200)))
    if pad:
        payload += bytes([g.pick((0, 1, 4, 255))])
    return header + payload


RTCP_KINDS = ("sr", "rr", "sdes", "bye", "app", "nack", "pli", "fir", "remb", "twcc", "xr", "junk")


def rtcp(g: Grammar, ssrcs: list[int], kinds: tuple[str, ...] = RTCP_KINDS, mangle: bool = True) -> bytes:
    """One RTCP packet or a compound of a few, of ``kinds``; SSRCs mostly of ``ssrcs``;
    sometimes (``mangle``) with bytes flipped."""
    def ssrc() -> int:
        return g.pick(ssrcs) if ssrcs and g.chance(0.6) else g.rng.getrandbits(32)

    def packet() -> bytes:
        kind = g.pick(kinds)
        if kind in ("sr", "rr"):
            blocks = g.pick((0, 1, 5, 31))
            body = struct.pack("!I", ssrc())
            if kind == "sr":
                body += g.random_bytes(20)
            body += b"".join(struct.pack("!I", ssrc()) + g.random_bytes(20) for _ in range(blocks))
            return _rtcp_header(g, blocks, 200 if kind == "sr" else 201, body)
        if kind == "sdes":
            items = b"\x01" + bytes([g.pick((0, 5, 255))]) + g.random_bytes(g.pick((0, 5, 255)))
            return _rtcp_header(g, 1, 202, struct.pack("!I", ssrc()) + items + b"\x00" * 2)
        if kind == "bye":
            n = g.pick((0, 1, 31))
            return _rtcp_header(g, n, 203, b"".join(struct.pack("!I", ssrc()) for _ in range(n)))
        if kind == "app":
            return _rtcp_header(g, g.rng.randrange(32), 204, struct.pack("!I", ssrc()) + b"fuzz" + g.random_bytes(8))
        if kind == "nack":
            entries = g.pick((1, 10, 200))
            fci = b"".join(struct.pack("!HH", g.rng.getrandbits(16), g.rng.getrandbits(16)) for _ in range(entries))
            return _rtcp_header(g, 1, 205, struct.pack("!II", ssrc(), ssrc()) + fci)
        if kind == "pli":
            return _rtcp_header(g, 1, 206, struct.pack("!II", ssrc(), ssrc()))
        if kind == "fir":
            return _rtcp_header(g, 4, 206, struct.pack("!IIIBxxx", ssrc(), 0, ssrc(), g.rng.randrange(256)))
        if kind == "remb":
            n = g.pick((0, 1, 255))
            body = struct.pack("!II", ssrc(), 0) + b"REMB" + struct.pack("!B", n) + g.random_bytes(3)
            return _rtcp_header(g, 15, 206, body + b"".join(struct.pack("!I", ssrc()) for _ in range(min(n, 8))))
        if kind == "twcc":
            return _rtcp_header(g, 15, 205, struct.pack("!II", ssrc(), ssrc()) + g.random_bytes(g.pick((0, 8, 100))))
        if kind == "xr":
            return _rtcp_header(g, 0, 207, struct.pack("!I", ssrc()) + g.random_bytes(g.pick((0, 12, 40))))
        return bytes([0x80 | g.rng.randrange(32), g.rng.randint(192, 223)]) + g.random_bytes(g.rng.randint(0, 60))

    data = b"".join(packet() for _ in range(g.pick((1, 1, 2, 5))))
    return g.mutate_bytes(data, 2) if mangle and g.chance(0.1) else data


def _rtcp_header(g: Grammar, count: int, pt: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    length = len(body) // 4
    if g.chance(0.1):
        length = g.pick((0, length + 1, 65535, max(0, length - 1)))
    return struct.pack("!BBH", 0x80 | (count & 0x1F), pt, length) + body


def stun(g: Grammar) -> bytes:
    kind = g.pick((0x0001, 0x0101, 0x0111, 0x0003, 0x0016, g.rng.getrandbits(14)))
    attrs = b""
    for _ in range(g.rng.randint(0, 6)):
        atype = g.pick((0x0006, 0x0008, 0x8028, 0x0024, 0x8029, 0x802A, 0x0025, 0x0020, g.rng.getrandbits(16)))
        value = g.random_bytes(g.pick((0, 1, 4, 20, 300)))
        declared = len(value) if g.chance(0.8) else g.pick((0, 65535, len(value) + 4))
        attrs += struct.pack("!HH", atype, declared) + value + b"\x00" * (-len(value) % 4)
    length = len(attrs) if g.chance(0.8) else g.pick((0, 65535, len(attrs) + 8))
    cookie = STUN_COOKIE if g.chance(0.8) else g.rng.getrandbits(32)
    data = struct.pack("!HHI", kind, length, cookie) + g.random_bytes(12) + attrs
    return data[: g.rng.randint(0, len(data))] if g.chance(0.1) else data


def dtls(g: Grammar) -> bytes:
    content = g.pick((20, 21, 22, 23, 24, 25, g.rng.randint(20, 63)))
    version = g.pick((0xFEFF, 0xFEFD, 0x0303, g.rng.getrandbits(16)))
    body = g.random_bytes(g.pick((0, 1, 13, 100, 1000)))
    if content == 22 and g.chance(0.5):  # a handshake message header: type, length, seq, fragment
        body = bytes([g.pick((1, 2, 11, 12, 14, 16, 20, g.rng.randrange(256)))]) + g.random_bytes(3) + \
            g.random_bytes(2) + g.random_bytes(6) + body
    length = len(body) if g.chance(0.7) else g.pick((0, 65535, len(body) + 100))
    return struct.pack("!BHH", content, version, g.rng.getrandbits(16)) + g.random_bytes(6) + \
        struct.pack("!H", length) + body


def raw_datagram(g: Grammar, pts: list[int], ssrcs: list[int]) -> tuple[str, bytes]:
    r = g.rng.random()
    if r < 0.12:
        return "empty", b""
    if r < 0.3:
        n = g.rng.randint(1, 11)
        data = g.random_bytes(n)
        if g.chance(0.5):
            data = bytes([g.rng.randint(128, 191)]) + data[1:]
        return "short", data
    if r < 0.48:
        return "stun-like", stun(g)
    if r < 0.64:
        return "dtls-like", dtls(g)
    if r < 0.76:
        return "rtp-like (not SRTP)", rtp(g, g.pick(ssrcs) if ssrcs else g.rng.getrandbits(32),
                                          g.pick(pts) if pts else 96)
    if r < 0.84:
        return "rtcp-like (not SRTP)", rtcp(g, ssrcs)
    if r < 0.92:
        return "channel-data-like", bytes([g.rng.randint(64, 79)]) + g.random_bytes(g.rng.randint(3, 100))
    size = g.pick((1, 100, 1500, 9000, 65000)) if g.chance(0.9) else g.rng.randint(1, 2000)
    return "random bytes", g.random_bytes(size)


CALL_SITES = 8


class UdpSurface(Surface):
    name = "udp"
    batch_size = 500

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.call: Call | None = None
        self.foreign: socket.socket | None = None
        self.ssrc_pool: list[int] = []
        self.calls = 0

    async def setup(self) -> None:
        self.foreign = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.foreign.bind(("127.0.0.1", 0))
        self.foreign.setblocking(False)

    async def open_call(self) -> Call:
        # A call per batch: spread over sites, each within its rate of visit requests.
        call = await open_call(self.ctx, f"udp{self.calls % CALL_SITES}")
        self.calls += 1
        return call

    def ssrc(self) -> int:
        g = self.g
        if not self.ssrc_pool or g.chance(0.5):
            self.ssrc_pool.append(g.rng.getrandbits(32))
            if len(self.ssrc_pool) > 1000:
                self.ssrc_pool.pop(0)
        return int(g.pick(self.ssrc_pool))

    async def one(self, call: Call, focus: str) -> None:
        g = self.g
        r = g.rng.random()
        pub = call.transport(call.publisher.pc)
        sub = call.transport(call.player.pc)
        if focus == "ssrc storm" and r < 0.6:
            # What a participant with a publish grant can do: its own session, the
            # publication's payload type, a new SSRC each time.
            ssrc = g.rng.getrandbits(32)
            pt = g.pick(call.media_pts or call.pts or [96])
            data = rtp(g, ssrc, pt)
            self.ledger.sent("", "publisher SRTP: rtp, new SSRC, the publication's payload type",
                             f"ssrc={ssrc} pt={pt} " + data[:200].hex())
            try:
                aiortc_internals.send_rtp_now(pub, data)
            except Exception:  # noqa: BLE001 - libsrtp refuses some headers on our side
                self.ledger.count("client_could_not_protect")
            return
        if focus == "rtcp storm" and r < 0.6:
            side, transport = ("publisher", pub) if g.chance(0.5) else ("subscriber", sub)
            data = rtcp(g, call.ssrcs, g.pick((("nack",), ("pli", "fir"), ("sr", "rr"), RTCP_KINDS)))
            self.ledger.sent("", f"{side} SRTP: rtcp", data[:400].hex())
            try:
                await aiortc_internals.send_rtp(transport, data)
            except Exception:  # noqa: BLE001
                self.ledger.count("client_could_not_protect")
            return
        if r < 0.45:
            where, data = raw_datagram(g, call.pts, call.ssrcs)
            pair = aioice_internals.nominated_pairs(aiortc_internals.ice_connection(pub.transport)).get(1)
            self.ledger.sent("", f"publisher 5-tuple: {where}", data[:400].hex())
            if pair is not None:
                sendto, addr = aioice_internals.pair_destination(pair)
                sendto(data, addr)
            return
        if r < 0.75:
            # Never the call's live SSRCs through the publisher's own SRTP session: random
            # sequence numbers there move the client's own libsrtp index, and its sender then
            # stops by itself (a stall of the client's making). The server's side of that case
            # is tested in tests/sfu/test_participant.py.
            ssrc = self.ssrc()
            pick = g.rng.random()
            pt = (g.pick(call.media_pts) if call.media_pts and pick < 0.5 else
                  g.pick(call.pts) if call.pts and pick < 0.8 else g.rng.randrange(128))
            data = rtp(g, ssrc, pt)
            self.ledger.sent("", "publisher SRTP: rtp", f"ssrc={ssrc} pt={pt} " + data[:200].hex())
            try:
                aiortc_internals.send_rtp_now(pub, data)
            except Exception as exc:  # noqa: BLE001 - libsrtp refuses some headers on our side
                self.ledger.count("client_could_not_protect")
                del exc
            return
        if r < 0.93:
            side, transport = ("publisher", pub) if g.chance(0.5) else ("subscriber", sub)
            data = rtcp(g, call.ssrcs + self.ssrc_pool[-5:])
            self.ledger.sent("", f"{side} SRTP: rtcp", data[:400].hex())
            try:
                await aiortc_internals.send_rtp(transport, data)
            except Exception:  # noqa: BLE001 - libsrtp refuses some on our side
                self.ledger.count("client_could_not_protect")
            return
        where, data = raw_datagram(g, call.pts, call.ssrcs)
        if g.chance(0.3):
            data = rtp(g, self.ssrc(), g.pick(call.pts) if call.pts else 96)
            where = "rtp-like (not SRTP)"
        self.ledger.sent("", f"foreign socket: {where}", data[:400].hex())
        if self.foreign is not None and call.ports:
            try:
                self.foreign.sendto(data, g.pick(call.ports))
            except OSError:
                self.ledger.count("client_send_errors")

    async def run_batch(self, n: int, deadline: float) -> None:
        if self.call is None:
            self.call = await self.open_call()
        call = self.call
        # Each batch (one call) has a focus: mixed, or a storm of one kind that only many
        # datagrams in one session reach (dozens of SSRCs, NACK and PLI floods).
        focus = self.g.rng.choices(("mixed", "ssrc storm", "rtcp storm"), (0.5, 0.25, 0.25))[0]
        self.ledger.count(f"batches_{focus.replace(' ', '_')}")
        for i in range(n):
            if time.monotonic() > deadline:
                break
            await self.one(call, focus)
            if i % 20 == 19:
                await asyncio.sleep(0.002)  # let both sides breathe: datagrams, not a flood

    async def between(self) -> None:
        call, self.call = self.call, None
        if call is None:
            return
        ledger = self.ledger
        try:
            before = call.received()
            deadline = time.monotonic() + 3
            while call.received() <= before and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if call.received() <= before:
                ledger.count("media_stalls")
                ledger.found("media_stall", "the call's media", "", "the player received nothing for 3 s "
                             "after a batch (the publisher kept sending)")
            try:
                await call.live.end()
            except CheckFailed as exc:
                if exc.hang:
                    ledger.hang("consultation.end after a udp batch", "", str(exc))
                else:
                    ledger.found("legit_failure", "consultation.end after a udp batch", "", str(exc))
        finally:
            await call.close(self.ctx.http)
        # The ended consultation's room must close (the next call opens its own).
        deadline = time.monotonic() + HANG_S
        rooms = -1.0
        while time.monotonic() < deadline:
            try:
                rooms = (await metrics(self.ctx.http, self.ctx.base)).get("teleconsult_sfu_rooms", -1.0)
            except CheckFailed:
                break
            if rooms == 0:
                break
            await asyncio.sleep(0.2)
        if rooms > 0:
            ledger.count("rooms_left_open_after_end")
            ledger.found("room_left_open", "room of an ended consultation", "",
                         f"{rooms:g} room(s) still open {HANG_S:g} s after consultation.end")

    async def teardown(self) -> None:
        await self.between()
        if self.foreign is not None:
            self.foreign.close()
        self.ledger.extra["calls"] = self.calls
        self.ledger.extra["distinct_fuzz_ssrcs"] = len(self.ssrc_pool)
