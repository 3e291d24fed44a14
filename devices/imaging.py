"""Helpers shared by the camera devices: still encoding and RGB ↔ av frames."""

from __future__ import annotations

import enum

import av
import cv2
import numpy as np

from .errors import DeviceError


class StillFormat(str, enum.Enum):
    PNG = "image/png"
    """Lossless."""
    JPEG = "image/jpeg"
    """Quality 95."""


def encode_still(rgb: np.ndarray, fmt: StillFormat = StillFormat.PNG) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt is StillFormat.PNG:
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise DeviceError(f"could not encode a {fmt.value} still")
    return bytes(data.tobytes())


def decode_still(data: bytes) -> np.ndarray:
    """RGB array of an encoded still (for tests and previews)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DeviceError("could not decode the still")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rgb_to_video_frame(rgb: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
