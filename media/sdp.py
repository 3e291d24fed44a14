"""Checks on SDP that comes from outside, before aiortc sees it.

aiortc accepts nearly anything as an offer (text with no media section gives
an answer with no media). Whatever posts SDP to us (WHIP, WHEP, the network
check, the signalling socket) goes through :func:`parse_offer` first, so that
bad input gets a clear 400 with a reason instead of a useless answer or an
exception deep inside aiortc.
"""

from __future__ import annotations

from aiortc.sdp import SessionDescription

MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA_SECTIONS = 32


class SdpError(ValueError):
    """An SDP that we refuse; the message says why and is safe to return."""


def parse_offer(sdp: str, *, require_media: bool = True) -> SessionDescription:
    if len(sdp.encode("utf-8", "replace")) > MAX_SDP_BYTES:
        raise SdpError(f"SDP larger than {MAX_SDP_BYTES} bytes")
    if "\x00" in sdp:
        raise SdpError("SDP contains NUL characters")
    if not sdp.lstrip().startswith("v=0"):
        raise SdpError("SDP must start with v=0")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises ValueError, KeyError, IndexError on malformed lines
        raise SdpError(f"malformed SDP: {type(exc).__name__}: {exc}") from None
    if require_media and not description.media:
        raise SdpError("SDP has no media section")
    if len(description.media) > MAX_MEDIA_SECTIONS:
        raise SdpError(f"SDP has more than {MAX_MEDIA_SECTIONS} media sections")
    for index, media in enumerate(description.media):
        if media.kind not in ("audio", "video", "application"):
            raise SdpError(f"m-line {index}: unsupported media kind {media.kind!r}")
        ice = media.ice
        if ice is None or not ice.usernameFragment or not ice.password:
            raise SdpError(f"m-line {index}: missing ICE credentials (a=ice-ufrag / a=ice-pwd)")
        if not media.dtls or not media.dtls.fingerprints:
            raise SdpError(f"m-line {index}: missing DTLS fingerprint (a=fingerprint)")
    mids = [media.rtp.muxId for media in description.media]
    for group in description.group:
        if group.semantic == "BUNDLE" and (len(set(group.items)) != len(group.items)
                                           or not set(group.items) <= set(mids)):
            # aiortc shares the transport of the group's first mid: naming no section, it left
            # every section without one and its connect task died (RFC 8843: each tag once).
            raise SdpError("the BUNDLE group must name media sections of the SDP (a=mid), each once")
    return description
