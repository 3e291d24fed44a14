"""The checks an uploaded still passes before it is stored: type, size, whole image.

The magic bytes must match the declared type (else 415), the header's size must be
within :data:`MAX_PIXELS` and the image must decode to that size (else 400): a
truncated or corrupt file is never stored as a clinical still. :class:`BadImage`
carries the HTTP answer.
"""

from __future__ import annotations

import struct
from typing import Optional

import cv2
import numpy as np

MAX_PIXELS = 40_000_000
"""A 40 MP sensor at most: a decompression bomb stops at the header check."""
MIMES = ("image/png", "image/jpeg")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG start-of-frame markers that carry the image size (not DHT/JPG/DAC: C4, C8, CC).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


class BadImage(ValueError):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def sniff_mime(data: bytes) -> Optional[str]:
    if data.startswith(_PNG_MAGIC):
        return "image/png"
    if data.startswith(_JPEG_MAGIC):
        return "image/jpeg"
    return None


def header_size(data: bytes, mime: str) -> tuple[int, int]:
    """(width, height) from the PNG IHDR or the first JPEG SOF; BadImage(400) if absent."""
    if mime == "image/png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise BadImage(400, "bad_image", "PNG without an IHDR chunk")
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    i = 2
    # Bounded: each step advances by at least 2 bytes.
    while i + 9 < len(data):
        if data[i] != 0xFF:
            raise BadImage(400, "bad_image", "JPEG marker expected")
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            raise BadImage(400, "bad_image", "JPEG segment length invalid")
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        if marker == 0xDA:
            break
        i += 2 + length
    raise BadImage(400, "bad_image", "JPEG without a frame header")


def check_image(data: bytes, declared: str) -> tuple[int, int]:
    """The image's (width, height) after every check; raises BadImage. CPU-bound (decodes)."""
    actual = sniff_mime(data)
    if actual is None or actual != declared:
        raise BadImage(415, "unsupported_media_type", f"the body is not a {declared} image")
    width, height = header_size(data, declared)
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
        raise BadImage(400, "bad_image", f"image size {width}x{height} out of bounds")
    # Decode it all: a truncated or corrupt file must not be stored as a clinical still.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise BadImage(400, "bad_image", "the image does not decode")
    if image.shape[1] != width or image.shape[0] != height:
        raise BadImage(400, "bad_image", "the image does not match its header's size")
    return width, height
