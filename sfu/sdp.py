"""SDP in and out of the SFU: checking offers, reading negotiated legs, labelling answers.

The one place that reads or edits SDP text:

* :func:`parse_offer` refuses what the SFU will not negotiate (too big, not
  parseable, no ICE credentials, several media sections without BUNDLE,
  duplicate or missing mids) with an :class:`SdpError` whose ``reason`` can be
  shown to the caller;
* :func:`bundle_candidates` gives aiortc an offer whose every bundled section
  carries the candidates of the BUNDLE-tagged (first) section: the one
  transport the SFU shares between them is the offerer's tagged one (RFC 8843),
  while aiortc would take the candidates of the *last* section it reads;
* :func:`leg_parameters` reads, from the SFU's own answer, what one media
  section negotiated (payload types, SSRCs, header extension ids);
* :func:`label_answer` puts ``a=msid:<publisher identity> <source>`` on each
  forwarded media section, so that receivers know whose track is which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiortc import sdp as aiortc_sdp
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from media.aiortc_internals import is_red
from sfu.errors import SfuError

MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA_SECTIONS = 32


class SdpError(SfuError):
    """An offer the SFU refuses; ``reason`` is safe to show the caller."""

    error = "bad_sdp"


@dataclass(frozen=True)
class MediaLine:
    """One audio or video section of an offer."""

    index: int
    """Position among all the offer's media sections (m-line index)."""
    mid: str
    kind: str
    direction: str
    """As written in the offer (the offerer's point of view)."""
    codecs: tuple[RTCRtpCodecParameters, ...]
    rejected: bool
    """Port 0 without ``a=bundle-only``: the offerer removed this section."""
    ssrcs: tuple[int, ...] = ()
    """Media SSRCs the offer declares (a=ssrc), RTX ones excluded."""
    rtx_ssrcs: tuple[tuple[int, int], ...] = ()
    """(rtx ssrc, media ssrc) pairs of a=ssrc-group:FID."""

    @property
    def offers_media(self) -> bool:
        """The offerer sends on this section (a publication)."""
        return not self.rejected and self.direction in ("sendonly", "sendrecv")

    @property
    def wants_media(self) -> bool:
        """The offerer receives on this section (a subscription)."""
        return not self.rejected and self.direction in ("recvonly", "sendrecv")


@dataclass(frozen=True)
class Offer:
    sdp: str
    media: tuple[MediaLine, ...]
    has_data_channel: bool


def parse_offer(text: str) -> Offer:
    if not isinstance(text, str) or not text.strip():
        raise SdpError("empty SDP offer")
    if len(text.encode("utf-8", "replace")) > MAX_SDP_BYTES:
        raise SdpError(f"SDP offer larger than {MAX_SDP_BYTES} bytes", status=413, error="too_large")
    if not text.lstrip().startswith("v=0"):
        raise SdpError("not an SDP session description (must start with v=0)")
    if "\x00" in text:
        raise SdpError("SDP contains NUL characters")
    try:
        description = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc raises ValueError, KeyError, IndexError... on hostile input
        raise SdpError(f"SDP offer could not be parsed ({type(exc).__name__})") from None
    if not description.media:
        raise SdpError("SDP offer has no media sections")
    if len(description.media) > MAX_MEDIA_SECTIONS:
        raise SdpError(f"SDP offer has more than {MAX_MEDIA_SECTIONS} media sections")
    bundle = next((g for g in description.group if g.semantic == "BUNDLE"), None)
    bundled = set(bundle.items) if bundle else set()
    bundle_only = [any(a.strip() == "a=bundle-only" for a in attributes) for attributes in _sections(text)]
    lines: list[MediaLine] = []
    mids: set[str] = set()
    has_data = False
    for index, media in enumerate(description.media):
        mid = media.rtp.muxId
        if not mid:
            raise SdpError(f"media section {index} has no a=mid")
        if mid in mids:
            raise SdpError(f"duplicate mid {mid!r}")
        mids.add(mid)
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise SdpError("ICE username fragment or password missing")
        if not media.dtls or not media.dtls.fingerprints:
            raise SdpError("DTLS fingerprint missing")
        rejected = media.port == 0 and not (index < len(bundle_only) and bundle_only[index])
        if len(description.media) > 1 and mid not in bundled and not rejected:
            # Separate transports per section are not supported: refused, never half-negotiated.
            raise SdpError("offers with several media sections must BUNDLE them all (bundle policy "
                           "max-bundle or balanced; separate transports per section are not supported)")
        if media.kind == "application":
            has_data = True
            continue
        if media.kind not in ("audio", "video"):
            raise SdpError(f"unsupported media kind {media.kind!r}")
        if not media.rtcp_mux:
            raise SdpError("RTCP multiplexing (a=rtcp-mux) is required")
        for extension in media.rtp.headerExtensions:
            # RFC 8285: 1-14 in the one-byte form, 1-255 in the two-byte one; nothing else can be
            # written into a packet (the C fan-out refuses such a leg: sfu/_fanout.c).
            if not 1 <= extension.id <= 255:
                raise SdpError(f"a=extmap id {extension.id} of media section {index} is outside 1-255 (RFC 8285)")
        if len(mid.encode("utf-8")) > 255:
            raise SdpError(f"a=mid of media section {index} is longer than 255 bytes: it could not be "
                           "sent in the mid header extension (RFC 8843)")
        fid = tuple((int(g.items[1]), int(g.items[0])) for g in media.ssrc_group
                    if g.semantic == "FID" and len(g.items) == 2)
        rtx = {r for r, _ in fid}
        ssrcs = tuple(s.ssrc for s in media.ssrc if s.ssrc not in rtx)
        lines.append(MediaLine(index=index, mid=mid, kind=media.kind, direction=media.direction or "sendrecv",
                               codecs=tuple(media.rtp.codecs), rejected=rejected, ssrcs=ssrcs,
                               rtx_ssrcs=fid))
    if bundle is not None and (len(bundle.items) != len(bundled) or not bundled <= mids):
        # aiortc shares the transport of the group's first mid: naming no section, it left every
        # section without a transport, and its connect task died on it (RFC 8843: each
        # identification-tag names one m-line of the offer, once).
        raise SdpError("the BUNDLE group must name media sections of the offer (a=mid), each once")
    return Offer(sdp=text, media=tuple(lines), has_data_channel=has_data)


@dataclass(frozen=True)
class LegParameters:
    """What one media section of the SFU's answer negotiated."""

    mid: str
    kind: str
    codec: RTCRtpCodecParameters
    rtx_payload_type: int | None
    ssrc: int | None
    """The SFU's sending SSRC on this section (None when it only receives)."""
    rtx_ssrc: int | None
    extensions: dict[str, int]
    """Header extension uri -> id."""
    red_payload_type: int | None = None
    """RED (RFC 2198) over ``codec`` on this section, when negotiated (media/red.py)."""

    @property
    def payload_type(self) -> int:
        """The codec's payload type (aiortc types it optional; a parsed answer always has it)."""
        payload_type = self.codec.payloadType
        if payload_type is None:
            raise ValueError(f"m-line {self.mid}: codec without a payload type")
        return payload_type


def leg_parameters(answer: str, mid: str) -> LegParameters:
    description = aiortc_sdp.SessionDescription.parse(answer)
    for media in description.media:
        if media.rtp.muxId != mid:
            continue
        main = next(c for c in media.rtp.codecs if not is_rtx(c) and not is_red(c))
        rtx = next((c for c in media.rtp.codecs if is_rtx(c) and c.parameters.get("apt") == main.payloadType), None)
        red = next((c for c in media.rtp.codecs if is_red(c)), None)
        ssrc = rtx_ssrc = None
        for group in media.ssrc_group:
            if group.semantic == "FID" and len(group.items) == 2:
                ssrc, rtx_ssrc = int(group.items[0]), int(group.items[1])
        if ssrc is None and media.ssrc:
            ssrc = media.ssrc[0].ssrc
        return LegParameters(
            mid=mid, kind=media.kind, codec=main, rtx_payload_type=rtx.payloadType if rtx else None,
            ssrc=ssrc, rtx_ssrc=rtx_ssrc,
            extensions={ext.uri: ext.id for ext in media.rtp.headerExtensions},
            red_payload_type=red.payloadType if red is not None and main.mimeType.lower() == "audio/opus" else None,
        )
    raise KeyError(mid)


_M_LINE = re.compile(r"^m=")


def _sections(text: str) -> list[list[str]]:
    """The lines of each media section (the m= line first), in order."""
    sections: list[list[str]] = []
    for line in text.splitlines():
        if _M_LINE.match(line):
            sections.append([])
        if sections:
            sections[-1].append(line)
    return sections


def bundle_candidates(text: str) -> str:
    """``text`` (an offer) with the ``a=candidate`` / ``a=end-of-candidates`` lines of its
    BUNDLE-tagged section (the first mid of the group) in every section of the group.

    aiortc adds to a shared transport the candidates of the last section it reads; a
    balanced-policy offer (or a client that lists candidates in the tagged section only)
    would then send the SFU's checks to a transport the offerer drops once BUNDLE is
    agreed. Unchanged when there is no group or the tagged section lists no candidate."""
    newline = "\r\n" if "\r\n" in text else "\n"
    head: list[str] = []
    sections: list[list[str]] = []
    for line in text.split(newline):
        if _M_LINE.match(line):
            sections.append([])
        (sections[-1] if sections else head).append(line)
    group = next((line.split()[1:] for line in head if line.startswith("a=group:BUNDLE")), [])
    if len(group) < 2 or len(sections) < 2:
        return text

    def mid_of(section: list[str]) -> str | None:
        return next((line[6:].strip() for line in section if line.startswith("a=mid:")), None)

    def is_candidate(line: str) -> bool:
        return line.startswith("a=candidate:") or line.startswith("a=end-of-candidates")

    tagged = next((s for s in sections if mid_of(s) == group[0]), None)
    if tagged is None:
        return text
    candidates = [line for line in tagged if is_candidate(line)]
    if not any(line.startswith("a=candidate:") for line in candidates):
        return text
    members = set(group)
    out = list(head)
    for section in sections:
        if section is tagged or mid_of(section) not in members:
            out.extend(section)
            continue
        kept = [line for line in section if not is_candidate(line)]
        while kept and kept[-1] == "":
            kept.pop()
        trailing = len(section) - len(kept) - sum(1 for line in section if is_candidate(line))
        out.extend(kept + candidates + [""] * max(0, trailing))
    return newline.join(out)


def label_answer(answer: str, labels: dict[str, tuple[str, str]]) -> str:
    """``answer`` with ``a=msid:<stream> <track>`` set for each ``mid -> (stream, track)``
    (and ``a=ssrc:... msid:`` lines, if any, made to agree). A section left unlabelled (a
    subscription whose publication ended) keeps aiortc's msid with its mid added to the track:
    aiortc gives every section of a connection one stream id and the source as the track, so two
    ended cameras would repeat one msid, and a browser refuses the whole answer for it
    ("Duplicate a=msid lines")."""
    newline = "\r\n" if "\r\n" in answer else "\n"
    sections: list[list[str]] = [[]]
    for line in answer.split(newline):
        if _M_LINE.match(line):
            sections.append([])
        sections[-1].append(line)
    out: list[str] = list(sections[0])
    for section in sections[1:]:
        mid = next((line[6:] for line in section if line.startswith("a=mid:")), None)
        label = labels.get(mid) if mid is not None else None
        if label is None:
            default = next((line[7:].split(" ", 1) for line in section if line.startswith("a=msid:")), None)
            if mid is None or default is None or len(default) != 2:
                out.extend(section)
                continue
            label = (default[0], f"{default[1]}-{mid}")
        msid = f"{label[0]} {label[1]}"
        lines = [line for line in section if not line.startswith("a=msid:")]
        ssrc_lines = []
        for i, line in enumerate(lines):
            if line.startswith("a=ssrc:") and " msid:" in line:
                ssrc_lines.append(i)
        for i in ssrc_lines:
            head = lines[i].split(" msid:", 1)[0]
            lines[i] = f"{head} msid:{msid}"
        # a=msid goes right after a=mid (any place in the section is valid).
        at = next(i for i, line in enumerate(lines) if line.startswith("a=mid:")) + 1
        lines.insert(at, f"a=msid:{msid}")
        out.extend(lines)
    return newline.join(out)


def reject_sections(answer: str, mids: set[str]) -> str:
    """``answer`` with the sections of ``mids`` (those the offer removed: port 0) rejected too:
    port 0 and out of the BUNDLE group, as JSEP answers them (aiortc would answer them like
    live ones, and a browser would take a removed section as the BUNDLE tag)."""
    if not mids:
        return answer
    newline = "\r\n" if "\r\n" in answer else "\n"
    out: list[str] = []
    head: list[str] = []
    sections: list[list[str]] = []
    for line in answer.split(newline):
        if _M_LINE.match(line):
            sections.append([])
        (sections[-1] if sections else head).append(line)
    for line in head:
        if line.startswith("a=group:BUNDLE"):
            kept = [m for m in line.split()[1:] if m not in mids]
            line = " ".join(["a=group:BUNDLE", *kept])
        out.append(line)
    for section in sections:
        mid = next((line[6:].strip() for line in section if line.startswith("a=mid:")), None)
        if mid in mids:
            parts = section[0].split(" ")
            section = [" ".join([parts[0], "0", *parts[2:]]), *section[1:]]
        out.extend(section)
    return newline.join(out)


def msids(sdp: str) -> dict[str, str]:
    """mid -> ``a=msid`` value of each media section (tests, clients)."""
    result: dict[str, str] = {}
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        elif sections:
            sections[-1].append(line)
    for section in sections:
        mid = next((line[6:].strip() for line in section if line.startswith("a=mid:")), None)
        msid = next((line[7:].strip() for line in section if line.startswith("a=msid:")), None)
        if mid is not None and msid is not None:
            result[mid] = msid
    return result
