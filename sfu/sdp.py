"""SDP in and out of the SFU: checking offers, reading negotiated legs, labelling answers.

The one place that reads or edits SDP text:

* :func:`parse_offer` refuses what the SFU will not negotiate (too big, not
  parseable, no ICE credentials, several media sections without BUNDLE,
  duplicate or missing mids) with an :class:`SdpError` whose ``reason`` can be
  shown to the caller;
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
    """Port 0: the offerer removed this section."""
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
        if not media.ice.usernameFragment or not media.ice.password:
            raise SdpError("ICE username fragment or password missing")
        if not media.dtls or not media.dtls.fingerprints:
            raise SdpError("DTLS fingerprint missing")
        if len(description.media) > 1 and mid not in bundled:
            raise SdpError("offers with several media sections must BUNDLE them all")
        if media.kind == "application":
            has_data = True
            continue
        if media.kind not in ("audio", "video"):
            raise SdpError(f"unsupported media kind {media.kind!r}")
        if not media.rtcp_mux:
            raise SdpError("RTCP multiplexing (a=rtcp-mux) is required")
        fid = tuple((int(g.items[1]), int(g.items[0])) for g in media.ssrc_group
                    if g.semantic == "FID" and len(g.items) == 2)
        rtx = {r for r, _ in fid}
        ssrcs = tuple(s.ssrc for s in media.ssrc if s.ssrc not in rtx)
        lines.append(MediaLine(index=index, mid=mid, kind=media.kind, direction=media.direction or "sendrecv",
                               codecs=tuple(media.rtp.codecs), rejected=media.port == 0, ssrcs=ssrcs,
                               rtx_ssrcs=fid))
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


def leg_parameters(answer: str, mid: str) -> LegParameters:
    description = aiortc_sdp.SessionDescription.parse(answer)
    for media in description.media:
        if media.rtp.muxId != mid:
            continue
        main = next(c for c in media.rtp.codecs if not is_rtx(c))
        rtx = next((c for c in media.rtp.codecs if is_rtx(c) and c.parameters.get("apt") == main.payloadType), None)
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
        )
    raise KeyError(mid)


_M_LINE = re.compile(r"^m=")


def label_answer(answer: str, labels: dict[str, tuple[str, str]]) -> str:
    """``answer`` with ``a=msid:<stream> <track>`` set for each ``mid -> (stream, track)``
    (and ``a=ssrc:... msid:`` lines, if any, made to agree)."""
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
            out.extend(section)
            continue
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
