"""Fuzz surface ``sdp``: offers to WHIP, WHEP and the pre-call check (``POST /api/echo``).

The offers start from real ones: aiortc's (made here once: publisher, subscriber, data
channel, with and without media) and a browser's (a Chrome-shaped offer with RTX, RED,
ULPFEC, header extensions and SSRC groups). Each input mutates one:

* *mild* mutations keep the offer negotiable and probe what the SFU does with what it
  accepts: codecs reordered or renumbered, SSRCs changed or multiplied (up to 200 in one
  section), header extension ids moved, unknown attributes, hostile candidates, ICE
  credentials and fingerprints, mids renamed, sections duplicated (up to 16), directions
  flipped, line endings changed;
* *harsh* mutations break it: lines deleted, duplicated or truncated, bytes flipped,
  non-UTF-8, empty or oversized bodies, kinds and protocols swapped, numbers out of range,
  plus hostile tokens and content types.

A 201 is a negotiation (a peer connection was built and answered): counted as
``negotiated``; its session is deleted at once (``DELETE`` of its ``Location``, which must
answer within 5 s too). Room tokens are those of a live consultation opened through the
signalling; a share of the inputs use hand-made tokens for other rooms.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import aiohttp
from aiortc import RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from bench.fuzz_grammar import Grammar, Tokens
from bench.fuzz_call import Call, open_call
from bench.fuzz_target import HANG_S, CheckFailed, Context, LiveConsultation, Surface
from bench.rtc import client_pc

Lines = list[str]

CHROME_OFFER = """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS stream
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:1 1 udp 2122260223 127.0.0.1 40001 typ host generation 0 network-id 1
a=ice-ufrag:Fz01
a=ice-pwd:fuzzfuzzfuzzfuzzfuzzfuzz
a=ice-options:trickle
a=fingerprint:sha-256 3B:6E:49:83:3A:0C:3E:2C:C1:52:1F:E0:9E:1C:27:B9:1D:4F:6E:52:0A:8B:17:84:4B:70:7E:E1:4E:AE:17:36
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendonly
a=msid:stream audio0
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:1001 cname:fuzzcname
a=ssrc:1001 msid:stream audio0
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 45 46 98 99 127 125
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:1 1 udp 2122260223 127.0.0.1 40001 typ host generation 0 network-id 1
a=ice-ufrag:Fz01
a=ice-pwd:fuzzfuzzfuzzfuzzfuzzfuzz
a=ice-options:trickle
a=fingerprint:sha-256 3B:6E:49:83:3A:0C:3E:2C:C1:52:1F:E0:9E:1C:27:B9:1D:4F:6E:52:0A:8B:17:84:4B:70:7E:E1:4E:AE:17:36
a=setup:actpass
a=mid:1
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:13 urn:3gpp:video-orientation
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=sendonly
a=msid:stream video0
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 goog-remb
a=rtcp-fb:96 transport-cc
a=rtcp-fb:96 ccm fir
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:102 H264/90000
a=rtcp-fb:102 goog-remb
a=rtcp-fb:102 transport-cc
a=rtcp-fb:102 ccm fir
a=rtcp-fb:102 nack
a=rtcp-fb:102 nack pli
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f
a=rtpmap:103 rtx/90000
a=fmtp:103 apt=102
a=rtpmap:45 AV1/90000
a=fmtp:45 level-idx=5;profile=0;tier=0
a=rtpmap:46 rtx/90000
a=fmtp:46 apt=45
a=rtpmap:98 VP9/90000
a=fmtp:98 profile-id=0
a=rtpmap:99 rtx/90000
a=fmtp:99 apt=98
a=rtpmap:127 red/90000
a=rtpmap:125 ulpfec/90000
a=ssrc-group:FID 2001 2002
a=ssrc:2001 cname:fuzzcname
a=ssrc:2001 msid:stream video0
a=ssrc:2002 cname:fuzzcname
a=ssrc:2002 msid:stream video0
"""


async def offer_templates() -> dict[str, str]:
    """Real offers, made once by aiortc peers on loopback (closed right after)."""
    out: dict[str, str] = {"chrome": CHROME_OFFER.replace("\n", "\r\n")}

    def prefer(transceiver: Any, mime: str) -> None:
        caps = RTCRtpSender.getCapabilities(transceiver.kind).codecs
        chosen = [c for c in caps if c.mimeType.lower() == mime] + \
                 [c for c in caps if c.mimeType.lower() != mime]
        transceiver.setCodecPreferences(chosen)

    async def make(name: str, build: Callable[[Any], None]) -> None:
        pc = client_pc()
        try:
            build(pc)
            await pc.setLocalDescription(await pc.createOffer())
            out[name] = pc.localDescription.sdp
        finally:
            await pc.close()

    def whip(mime: str) -> Callable[[Any], None]:
        def build(pc: Any) -> None:
            prefer(pc.addTransceiver(VideoStreamTrack(), direction="sendonly"), mime)
            pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        return build

    def whep(pc: Any) -> None:
        for kind in ("video", "video", "audio", "audio"):
            pc.addTransceiver(kind, direction="recvonly")

    def echo_dc(pc: Any) -> None:
        pc.createDataChannel("echo")

    def echo_av(pc: Any) -> None:
        pc.createDataChannel("echo")
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")

    await make("whip-vp8", whip("video/vp8"))
    await make("whip-h264", whip("video/h264"))
    await make("whep", whep)
    await make("echo-dc", echo_dc)
    await make("echo-av", echo_av)
    return out


# -- SDP as lines ---------------------------------------------------------------------
def split(sdp: str) -> Lines:
    return [ln for ln in sdp.replace("\r\n", "\n").split("\n") if ln != ""]


def sections(lines: Lines) -> list[tuple[int, int]]:
    """(start, end) of each media section (start: its m= line)."""
    starts = [i for i, ln in enumerate(lines) if ln.startswith("m=")]
    return [(s, (starts[k + 1] if k + 1 < len(starts) else len(lines))) for k, s in enumerate(starts)]


def _section(g: Grammar, lines: Lines) -> tuple[int, int] | None:
    found = sections(lines)
    return g.pick(found) if found else None


def _replace_numbers(lines: Lines, mapping: dict[str, str], prefixes: tuple[str, ...]) -> Lines:
    out = []
    for ln in lines:
        if ln.startswith(prefixes):
            for old, new in mapping.items():
                ln = ln.replace(f" {old} ", f" @{new}@ ").replace(f":{old} ", f":@{new}@ ") \
                    .replace(f"={old}", f"=@{new}@")
                if ln.endswith(f" {old}"):
                    ln = ln[: -len(old)] + f"@{new}@"
                if ln.endswith(f":{old}"):
                    ln = ln[: -len(old)] + f"@{new}@"
            ln = ln.replace("@", "")
        out.append(ln)
    return out


# mild: the offer stays one the SFU can negotiate (most of the time)
def m_shuffle_codecs(g: Grammar, lines: Lines) -> Lines:
    sec = _section(g, lines)
    if sec:
        parts = lines[sec[0]].split(" ")
        pts = parts[3:]
        g.rng.shuffle(pts)
        lines[sec[0]] = " ".join(parts[:3] + pts)
    return lines


def m_drop_attr(g: Grammar, lines: Lines) -> Lines:
    kinds = ("a=rtcp-fb", "a=extmap", "a=fmtp", "a=ssrc", "a=msid", "a=candidate", "a=ssrc-group", "a=rtcp:",
             "a=ice-options", "c=", "a=rtcp-rsize", "a=extmap-allow-mixed")
    idx = [i for i, ln in enumerate(lines) if ln.startswith(kinds)]
    for i in sorted(g.rng.sample(idx, min(len(idx), g.rng.randint(1, 4))), reverse=True):
        del lines[i]
    return lines


def m_new_ssrcs(g: Grammar, lines: Lines) -> Lines:
    ssrcs = {ln.split(":")[1].split(" ")[0] for ln in lines if ln.startswith("a=ssrc:")}
    mapping = {s: str(g.pick((0, 1, 2 ** 32 - 1, g.rng.getrandbits(32)))) for s in ssrcs}
    return _replace_numbers(lines, mapping, ("a=ssrc", "a=ssrc-group"))


def m_many_ssrcs(g: Grammar, lines: Lines) -> Lines:
    sec = _section(g, lines)
    if sec:
        n = g.pick((2, 10, 57, 60, 200))
        extra = [f"a=ssrc:{g.rng.getrandbits(32)} cname:fz{g.rng.randrange(5)}" for _ in range(n)]
        if g.chance(0.3):
            extra += [f"a=ssrc-group:FID {g.rng.getrandbits(32)} {g.rng.getrandbits(32)}" for _ in range(n // 2)]
        lines[sec[1]:sec[1]] = extra
    return lines


def m_unknown_attr(g: Grammar, lines: Lines) -> Lines:
    for _ in range(g.rng.randint(1, 5)):
        i = g.rng.randint(min(1, len(lines)), len(lines))
        lines.insert(i, g.pick((f"a=x-fuzz-{g.ident()}:{g.string()[:3000]}", f"a={g.ident()}",
                                "a=bundle-only", "a=ice-lite", "a=end-of-candidates", "a=rtcp-mux-only",
                                f"a=label:{g.string()[:200]}", "a=sctp-port:5000", "a=max-message-size:0",
                                f"a=max-message-size:{2 ** 64}", "a=ptime:0", "a=maxptime:100000")))
    return lines


def m_extmap_ids(g: Grammar, lines: Lines) -> Lines:
    for i, ln in enumerate(lines):
        if ln.startswith("a=extmap:") and g.chance(0.5):
            rest = ln.split(" ", 1)[1] if " " in ln else ""
            lines[i] = f"a=extmap:{g.pick((0, 1, 14, 15, 16, 255, 256, g.rng.randint(1, 14)))} {rest}"
    return lines


def m_payload_types(g: Grammar, lines: Lines) -> Lines:
    pts = {ln.split(":")[1].split(" ")[0] for ln in lines if ln.startswith("a=rtpmap:")}
    if not pts:
        return lines
    old = g.pick(sorted(pts))
    new = str(g.pick((g.rng.randint(96, 127), g.rng.randint(35, 63), g.rng.randint(0, 34), 128, 255)))
    return _replace_numbers(lines, {old: new}, ("m=", "a=rtpmap", "a=fmtp", "a=rtcp-fb"))


def m_msid(g: Grammar, lines: Lines) -> Lines:
    for i, ln in enumerate(lines):
        if "msid:" in ln and g.chance(0.6):
            head = ln.split("msid:")[0]
            lines[i] = f"{head}msid:{g.string()[:300] or 'x'} {g.ident()}"
    return lines


def m_candidates(g: Grammar, lines: Lines) -> Lines:
    sec = _section(g, lines)
    if not sec:
        return lines
    cands = [
        f"a=candidate:{g.ident()} 1 udp {g.rng.getrandbits(31)} {g.pick(('127.0.0.1', '10.0.0.1', '0.0.0.0', '::1', '255.255.255.255', 'fz.local', '8.8.8.8', '192.168.1.1'))} {g.pick((0, 1, 9, 65535, 65536, g.rng.randint(1024, 65535)))} typ host",
        f"a=candidate:2 1 tcp 1518280447 127.0.0.1 9 typ host tcptype {g.pick(('active', 'passive', 'so', 'x'))}",
        f"a=candidate:3 1 udp 41885439 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 0",
        f"a=candidate:4 2 udp 2122260222 127.0.0.1 {g.rng.randint(1, 65535)} typ host",
        f"a=candidate:5 1 udp 1686052607 127.0.0.1 40002 typ srflx raddr {g.string()[:40]} rport 1",
    ]
    for _ in range(g.rng.randint(1, 20)):
        lines.insert(sec[0] + 1, g.pick(cands))
    return lines


def m_ice_creds(g: Grammar, lines: Lines) -> Lines:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
    ufrag = "".join(g.rng.choice(alphabet) for _ in range(g.pick((4, 8, 32, 256))))
    pwd = "".join(g.rng.choice(alphabet) for _ in range(g.pick((22, 24, 64, 256))))
    return [f"a=ice-ufrag:{ufrag}" if ln.startswith("a=ice-ufrag:") else
            f"a=ice-pwd:{pwd}" if ln.startswith("a=ice-pwd:") else ln for ln in lines]


def m_fingerprint(g: Grammar, lines: Lines) -> Lines:
    alg, size = g.pick((("sha-256", 32), ("sha-1", 20), ("sha-512", 64), ("sha-384", 48), ("md5", 16),
                        ("sha-256", 31), ("SHA-256", 32)))
    hexed = ":".join(f"{g.rng.randrange(256):02X}" for _ in range(size))
    return [f"a=fingerprint:{alg} {hexed}" if ln.startswith("a=fingerprint:") else ln for ln in lines]


def m_bandwidth(g: Grammar, lines: Lines) -> Lines:
    sec = _section(g, lines)
    if sec:
        lines.insert(sec[0] + 1, g.pick((f"b=AS:{g.pick((0, 1, 10 ** 12, -5))}", "b=TIAS:500000", "b=CT:1",
                                         "a=framerate:1000000", "a=rid:h send", "a=rid:l send max-width=0",
                                         "a=simulcast:send h;l", "a=simulcast:send ~h;" + ";".join("r" * 50),
                                         "a=imageattr:* send [x=640,y=480]")))
    return lines


def m_mids(g: Grammar, lines: Lines) -> Lines:
    mids = [ln[len("a=mid:"):] for ln in lines if ln.startswith("a=mid:")]
    mapping = {m: g.pick((g.ident(1, 16), "0", "audio", "x" * 64, "é", m + m)) for m in mids}
    out = []
    for ln in lines:
        if ln.startswith("a=mid:"):
            ln = "a=mid:" + mapping.get(ln[len("a=mid:"):], ln)
        elif ln.startswith("a=group:BUNDLE"):
            ln = "a=group:BUNDLE " + " ".join(mapping.get(m, m) for m in ln.split(" ")[1:])
        out.append(ln)
    return out


def m_direction(g: Grammar, lines: Lines) -> Lines:
    dirs = ("a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive")
    idx = [i for i, ln in enumerate(lines) if ln in dirs]
    if idx:
        lines[g.pick(idx)] = g.pick(dirs)
    return lines


def m_dup_section(g: Grammar, lines: Lines) -> Lines:
    found = sections(lines)
    if not found:
        return lines
    start, end = g.pick(found)
    body = lines[start:end]
    copies = g.pick((1, 2, 4, 16))
    extra: Lines = []
    new_mids = []
    for k in range(copies):
        mid = f"fz{k}"
        new_mids.append(mid)
        extra += [f"a=mid:{mid}" if ln.startswith("a=mid:") else ln for ln in body]
    lines = lines + extra
    return [ln + " " + " ".join(new_mids) if ln.startswith("a=group:BUNDLE") else ln for ln in lines]


def m_setup(g: Grammar, lines: Lines) -> Lines:
    value = g.pick(("active", "passive", "holdconn", "actpass", "x"))
    return [f"a=setup:{value}" if ln.startswith("a=setup:") else ln for ln in lines]


def m_codec_case(g: Grammar, lines: Lines) -> Lines:
    return [ln.replace("VP8", "vp8").replace("opus", "OPUS").replace("H264", "h264") if ln.startswith("a=rtpmap")
            and g.chance(0.5) else ln for ln in lines]


MILD: dict[str, Callable[[Grammar, Lines], Lines]] = {
    "shuffle_codecs": m_shuffle_codecs, "drop_attr": m_drop_attr, "new_ssrcs": m_new_ssrcs,
    "many_ssrcs": m_many_ssrcs, "unknown_attr": m_unknown_attr, "extmap_ids": m_extmap_ids,
    "payload_types": m_payload_types, "msid": m_msid, "candidates": m_candidates, "ice_creds": m_ice_creds,
    "fingerprint": m_fingerprint, "bandwidth": m_bandwidth, "mids": m_mids, "direction": m_direction,
    "dup_section": m_dup_section, "setup": m_setup, "codec_case": m_codec_case,
}


# harsh: most of these fail early (parse, checks), some reach aiortc
def h_delete_lines(g: Grammar, lines: Lines) -> Lines:
    for _ in range(g.rng.randint(1, 6)):
        if lines:
            del lines[g.rng.randrange(len(lines))]
    return lines


def h_dup_lines(g: Grammar, lines: Lines) -> Lines:
    for _ in range(g.rng.randint(1, 6)):
        if lines:
            i = g.rng.randrange(len(lines))
            lines.insert(i, lines[i] if g.chance(0.7) else g.mutate_text(lines[i]))
    return lines


def h_truncate(g: Grammar, lines: Lines) -> Lines:
    return lines[: g.rng.randint(0, len(lines))]


def h_flip(g: Grammar, lines: Lines) -> Lines:
    for _ in range(g.rng.randint(1, 5)):
        if lines:
            i = g.rng.randrange(len(lines))
            lines[i] = g.mutate_text(lines[i])
    return lines


def h_kinds(g: Grammar, lines: Lines) -> Lines:
    sec = _section(g, lines)
    if sec:
        parts = lines[sec[0]].split(" ")
        parts[0] = "m=" + g.pick(("audio", "video", "application", "text", "message", "", "VIDEO"))
        if g.chance(0.4) and len(parts) > 1:  # an earlier mutation may have left "m=" alone
            parts[1] = str(g.pick((0, -1, 65536, 9, "x")))
        if g.chance(0.4) and len(parts) > 2:
            parts[2] = g.pick(("RTP/AVP", "UDP/DTLS/SCTP", "RTP/SAVP", "TCP/DTLS/RTP/SAVPF", "UDP/TLS/RTP/SAVPF", ""))
        lines[sec[0]] = " ".join(parts)
    return lines


def h_numbers(g: Grammar, lines: Lines) -> Lines:
    idx = [i for i, ln in enumerate(lines) if any(c.isdigit() for c in ln)]
    for i in g.rng.sample(idx, min(len(idx), g.rng.randint(1, 4))):
        digits = [k for k, c in enumerate(lines[i]) if c.isdigit()]
        k = g.pick(digits)
        lines[i] = lines[i][:k] + str(g.pick((-1, 2 ** 32, 2 ** 64, 99999999999, 0))) + lines[i][k + 1:]
    return lines


def h_garbage(g: Grammar, lines: Lines) -> Lines:
    return [g.string() for _ in range(g.rng.randint(0, 30))]


HARSH: dict[str, Callable[[Grammar, Lines], Lines]] = {
    "delete_lines": h_delete_lines, "dup_lines": h_dup_lines, "truncate": h_truncate, "flip": h_flip,
    "kinds": h_kinds, "numbers": h_numbers, "garbage": h_garbage,
}


def mutate_offer(g: Grammar, offer: str, mild: bool) -> tuple[list[str], bytes]:
    """(mutation names, body)."""
    lines = split(offer)
    names = []
    for _ in range(g.rng.randint(1, 3)):
        table = MILD if mild or g.chance(0.4) else HARSH
        name = g.pick(list(table))
        names.append(name)
        lines = table[name](g, lines)
    if not mild and not any(n in HARSH for n in names):
        name = g.pick(list(HARSH))
        names.append(name)
        lines = HARSH[name](g, lines)
    sep = "\r\n" if g.chance(0.8) else g.pick(("\n", "\r", "\r\n\r\n"))
    text = sep.join(lines) + sep
    body = text.encode("utf-8", "surrogatepass")
    if not mild:
        r = g.rng.random()
        if r < 0.05:
            names.append("non_utf8")
            body = body.replace(b"a=", b"a\xff=", 1) + b"\xc3\x28"
        elif r < 0.08:
            names.append("oversized")
            body = body + b"a=x-pad:" + b"p" * g.pick((70_000, 1_000_000)) + b"\r\n"
        elif r < 0.1:
            names.append("empty")
            body = b""
    return names, body


# -- the surface ------------------------------------------------------------------------
TARGETS = {
    # target -> (templates, weight)
    "whip": (("whip-vp8", "whip-h264", "chrome"), 0.45),
    "whep": (("whep",), 0.25),
    "echo": (("echo-dc", "echo-av"), 0.3),
}
MILD_SHARE = 0.35
"""Of the inputs, this share gets only mild mutations (and valid headers): most negotiate."""
PLAIN_SHARE = 0.05
"""And this share is a template as it is: every one must negotiate."""
SEATS = {"physician": ("camera", "microphone"), "agent": ("dermatoscope", "stethoscope")}
"""Seats that WHIP offers publish for. Not the nurse's: its camera and microphone are the live
call's publications (a WHIP of the same identity and source would replace them, and WHEP
offers would find nothing to play)."""


class SdpSurface(Surface):
    name = "sdp"
    batch_size = 50

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.live: LiveConsultation | None = None
        self.call: Call | None = None
        """The live consultation's call: the nurse publishes (there is something to play)."""
        self.negotiated = 0
        self.per_target: dict[str, int] = {}

    async def setup(self) -> None:
        self.call = await open_call(self.ctx, "sdp")
        self.live = self.call.live

    def request_for(self, target: str, mild: bool) -> tuple[str, dict[str, str], str]:
        """(path with query, headers, who) for one offer."""
        g = self.g
        assert self.live is not None
        live = self.live
        headers = {"Content-Type": "application/sdp"}
        if target == "echo":
            role = g.pick(("nurse", "physician", "agent"))
            token = self.ctx.tokens.issue_access(role, f"fz-sdp-{role}", site="fz-sdp-site") if role != "physician" \
                else self.ctx.tokens.issue_access(role, "fz-sdp-dr")
            path = "/api/echo"
            who = role
        else:
            # (The nurse plays only the others' publications, which come and go here: a
            # refusal of its WHEP is no finding; the physician always has one to play.)
            seat = g.pick(list(SEATS)) if target == "whip" else "physician" if mild else g.pick(("physician", "nurse"))
            token = live.room_tokens[seat]
            path = f"/{target}/{live.room}"
            who = seat
            if target == "whip":
                sources = list(SEATS[seat])
                if not mild and g.chance(0.2):
                    sources = [g.pick(("camera", "microphone", "stethoscope", "dermatoscope", "otoscope",
                                       g.string()[:50])) for _ in range(g.rng.randint(0, 5))]
                path += "?" + "&".join(f"source={s}" for s in sources)
        if not mild and g.chance(0.2):
            r = g.rng.random()
            if r < 0.3:
                room = f"fz-{g.ident()}"
                token = self.ctx.tokens.issue_room(room, "fz-intruder", role="nurse",
                                                   publish=("camera", "microphone"), subscribe=True)
                path = path.replace(live.room, room) if target != "echo" else path
                who = "hand-made room token"
            elif r < 0.6:
                token = Tokens(g, lambda: token).mutated()
                who = "hostile token"
            elif r < 0.8:
                headers["Content-Type"] = g.pick(("text/plain", "application/json", "", "application/sdp; x=1",
                                                  "multipart/form-data; boundary=x"))
            else:
                token = ""
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return path, headers, who

    async def one(self) -> None:
        g = self.g
        target = g.rng.choices(list(TARGETS), [w for _, w in TARGETS.values()])[0]
        templates = TARGETS[target][0]
        if g.chance(0.05):
            templates = tuple(self.ctx.offers)  # the wrong kind of offer for this target
        template = g.pick(templates)
        r = g.rng.random()
        plain = r < PLAIN_SHARE
        mild = r < MILD_SHARE
        if plain:
            names, body = ["plain"], self.ctx.offers[template].encode()
        else:
            names, body = mutate_offer(g, self.ctx.offers[template], mild)
        path, headers, who = self.request_for(target, mild)
        rid = f"fzsdp{self.ledger.inputs}"
        headers["X-Request-Id"] = rid
        where = f"POST /{target}" if target != "echo" else "POST /api/echo"
        text = (f"POST {path} as {who}, template {template}, mutations {'+'.join(names)}, "
                f"Content-Type {headers.get('Content-Type')!r}\n{body[:1200].decode(errors='replace')}")
        self.ledger.sent(rid, where, text)
        try:
            status, answer, location = await asyncio.wait_for(self._post(path, headers, body), HANG_S)
        except asyncio.TimeoutError:
            self.ledger.hang(where, text, "no answer to the offer")
            return
        except ValueError:  # a header aiohttp will not send (control characters): never left this process
            self.ledger.count("client_refused_headers")
            return
        except (aiohttp.ClientError, OSError) as exc:
            self.ledger.count("connection_errors")
            self.ledger.found("connection_error", where, text, f"{type(exc).__name__}: {exc}")
            return
        self.ledger.count(f"status_{status}")
        if status >= 500:
            self.ledger.server_error(where, text, status, answer)
        elif status == 201:
            self.negotiated += 1
            self.per_target[target] = self.per_target.get(target, 0) + 1
            if who == "hand-made room token":
                self.ledger.count("rooms_opened_by_hand_made_tokens")
                self.ledger.found("room_without_consultation", where, text,
                                  "201: a room token for a room of no consultation opened a room")
            await self._delete(where, text, location, headers)
        elif plain and template in TARGETS[target][0]:
            self.ledger.count("plain_refused")
            self.ledger.found("plain_offer_refused", where, text, f"HTTP {status}: {answer[:300]}", str(status))

    async def _post(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, str]:
        async with self.ctx.http.post(self.ctx.base + path, data=body, headers=headers) as r:
            return r.status, (await r.read()).decode(errors="replace"), r.headers.get("Location", "")

    async def _delete(self, where: str, text: str, location: str, headers: dict[str, str]) -> None:
        if not location:
            self.ledger.found("no_location", where, text, "201 without a Location")
            return
        try:
            async with asyncio.timeout(HANG_S):
                async with self.ctx.http.delete(self.ctx.base + location, headers=headers) as r:
                    status = r.status
                    body = await r.text()
        except TimeoutError:
            self.ledger.hang(f"DELETE {location.rsplit('/', 1)[0]}/{{session}}", text, "no answer to the DELETE")
            return
        except (aiohttp.ClientError, OSError) as exc:
            self.ledger.found("connection_error", "DELETE", text, f"{type(exc).__name__}: {exc}")
            return
        self.ledger.count(f"delete_status_{status}")
        if status >= 500:
            self.ledger.server_error("DELETE " + location.rsplit("/", 1)[0] + "/{session}", text, status, body)

    async def run_batch(self, n: int, deadline: float) -> None:
        for _ in range(n):
            if time.monotonic() > deadline:
                return
            await self.one()

    async def teardown(self) -> None:
        self.ledger.extra["negotiated"] = self.negotiated
        self.ledger.extra["negotiated_by_target"] = dict(self.per_target)
        if self.call is not None:
            try:
                await self.call.live.end()
            except CheckFailed as exc:
                if exc.hang:
                    self.ledger.hangs += 1
                self.ledger.found("hang" if exc.hang else "legit_failure", "consultation.end (sdp live)", "",
                                  str(exc))
            finally:
                await self.call.close(self.ctx.http)
