"""SDP editing for device tracks, kept in one place.

:func:`set_opus_fmtp` rewrites the Opus ``a=fmtp`` of the m-line whose ``a=mid`` is the
given mid, adding (or replacing) the stereo/FEC/DTX/bitrate parameters and keeping the
others. It is a pure text function: no parsing library, no I/O.
"""

from __future__ import annotations

import re

STETHOSCOPE_OPUS_PARAMS: dict[str, str] = {
    "stereo": "1",
    "sprop-stereo": "1",
    "useinbandfec": "1",
    "usedtx": "0",
    "maxaveragebitrate": "128000",
}


class SdpError(ValueError):
    """The SDP lacks what the edit needs (the mid, or Opus in that m-line)."""


def stethoscope_opus_params(bitrate: int = 128000) -> dict[str, str]:
    params = dict(STETHOSCOPE_OPUS_PARAMS)
    params["maxaveragebitrate"] = str(bitrate)
    return params


def set_opus_fmtp(sdp: str, mid: str, params: dict[str, str] | None = None) -> str:
    """The SDP with ``params`` merged into the Opus fmtp of the m-section ``mid``."""
    params = stethoscope_opus_params() if params is None else params
    newline = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(newline)
    trailing = lines[-1] == ""
    if trailing:
        lines = lines[:-1]
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")] + [len(lines)]
    for start, end in zip(starts, starts[1:]):
        section = lines[start:end]
        if f"a=mid:{mid}" not in section:
            continue
        payload_types = [
            m.group(1)
            for line in section
            if (m := re.match(r"a=rtpmap:(\d+) opus/48000(?:/\d+)?$", line, re.IGNORECASE))
        ]
        if not payload_types:
            raise SdpError(f"m-line with mid {mid!r} offers no Opus")
        for pt in payload_types:
            section = _merge_fmtp(section, pt, params)
        return newline.join(lines[:start] + section + lines[end:]) + (newline if trailing else "")
    raise SdpError(f"no m-line with mid {mid!r}")


def _merge_fmtp(section: list[str], pt: str, params: dict[str, str]) -> list[str]:
    prefix = f"a=fmtp:{pt} "
    for i, line in enumerate(section):
        if line.startswith(prefix):
            existing = dict(_split_param(p) for p in line[len(prefix) :].split(";") if p.strip())
            existing.update(params)
            section = list(section)
            section[i] = prefix + ";".join(f"{k}={v}" for k, v in existing.items())
            return section
    rtpmap = next(i for i, line in enumerate(section) if line.startswith(f"a=rtpmap:{pt} "))
    fmtp = prefix + ";".join(f"{k}={v}" for k, v in params.items())
    return section[: rtpmap + 1] + [fmtp] + section[rtpmap + 1 :]


def _split_param(text: str) -> tuple[str, str]:
    key, _, value = text.strip().partition("=")
    return key, value


def opus_fmtp(sdp: str, mid: str) -> dict[str, str]:
    """The Opus fmtp parameters of the m-section ``mid`` (for tests and checks)."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    in_section = False
    section: list[str] = []
    for line in lines:
        if line.startswith("m="):
            if in_section:
                break
            section = []
        section.append(line)
        if line == f"a=mid:{mid}":
            in_section = True
    if not in_section:
        raise SdpError(f"no m-line with mid {mid!r}")
    pt = next(
        (m.group(1) for line in section if (m := re.match(r"a=rtpmap:(\d+) opus/", line, re.IGNORECASE))), None
    )
    if pt is None:
        raise SdpError(f"m-line with mid {mid!r} offers no Opus")
    for line in section:
        if line.startswith(f"a=fmtp:{pt} "):
            return dict(_split_param(p) for p in line.split(" ", 1)[1].split(";") if p.strip())
    return {}
