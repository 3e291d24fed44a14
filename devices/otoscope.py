"""Otoscope: a 720x480 stream with the circular field of view found and masked, stills.

The circle is found once (Otsu threshold on a 1/4-scale grey image, largest contour,
``minEnclosingCircle``), then checked cheaply every half second on a 1/8-scale image:
only when the light falls clearly outside the circle, or the circle goes dark, is it
searched again.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import ClassVar, Optional

import cv2
import numpy as np

from .adapter import Clock, FrameSource
from .camera import Finisher, StillCamera
from .imaging import StillFormat

logger = logging.getLogger(__name__)

STREAM_SIZE = (720, 480)


class OtoscopeMode(str, enum.Enum):
    MASKED = "masked"
    RAW = "raw"


@dataclass(frozen=True)
class Circle:
    """In pixels of the image it was found in."""

    cx: float
    cy: float
    radius: float

    def scaled(self, factor: float) -> "Circle":
        return Circle(self.cx * factor, self.cy * factor, self.radius * factor)


def find_field_of_view(rgb: np.ndarray, scale: int = 4) -> Optional[Circle]:
    """The bright disc of an otoscope image, or None if there is none."""
    small = cv2.resize(rgb, (rgb.shape[1] // scale, rgb.shape[0] // scale), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    threshold, binary = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    if threshold < 8:
        return None  # all dark (lamp off): no disc to find
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    largest = max(contours, key=cv2.contourArea)
    if cv2.contourArea(largest) < 0.02 * grey.size:
        return None
    (cx, cy), radius = cv2.minEnclosingCircle(largest)
    # Contours lie on the last bright pixel row: add half a pixel, then scale back.
    return Circle((cx + 0.5) * scale - 0.5, (cy + 0.5) * scale - 0.5, (radius + 0.5) * scale)


class FieldOfViewTracker:
    """Keeps the circle and its mask for one image size; re-detects only when needed."""

    CHECK_EVERY = 15

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self.circle: Optional[Circle] = None
        self.mask: np.ndarray = np.full((size[1], size[0], 3), 255, np.uint8)
        self._frames = 0
        self.detections = 0

    def _set(self, circle: Optional[Circle]) -> None:
        self.circle = circle
        w, h = self.size
        if circle is None:
            self.mask = np.full((h, w, 3), 255, np.uint8)
            return
        mask = np.zeros((h, w), np.uint8)
        # Shrink by 1 % so the soft edge of the speculum is masked, not shown as a halo.
        cv2.circle(mask, (round(circle.cx), round(circle.cy)), max(1, round(circle.radius * 0.99)), 255, -1, cv2.LINE_AA)
        self.mask = cv2.merge([mask, mask, mask])

    def _still_valid(self, rgb: np.ndarray) -> bool:
        assert self.circle is not None
        tiny = cv2.resize(rgb, (self.size[0] // 8, self.size[1] // 8), interpolation=cv2.INTER_NEAREST)
        grey = cv2.cvtColor(tiny, cv2.COLOR_RGB2GRAY)
        small_mask = cv2.resize(self.mask[..., 0], (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        inside, outside = grey[small_mask], grey[~small_mask]
        if inside.size == 0:
            return False
        bright_outside = float((outside > 40).mean()) if outside.size else 0.0
        return bright_outside < 0.05 and float(inside.mean()) > 15

    def update(self, rgb: np.ndarray) -> np.ndarray:
        """The mask for this frame (uint8, 255 inside the circle)."""
        due = self._frames % self.CHECK_EVERY == 0
        self._frames += 1
        if self.circle is None:
            if due:
                self.detections += 1
                self._set(find_field_of_view(rgb))
        elif due and not self._still_valid(rgb):
            self.detections += 1
            self._set(find_field_of_view(rgb))
        return self.mask


class OtoscopeAdapter(StillCamera):
    name = "otoscope"
    modes: ClassVar[tuple[str, ...]] = tuple(m.value for m in OtoscopeMode)
    stream_size = STREAM_SIZE
    default_mode = OtoscopeMode.MASKED.value

    def __init__(
        self,
        source: FrameSource,
        sensor_size: tuple[int, int],
        *,
        framerate: float = 30.0,
        still_format: StillFormat = StillFormat.PNG,
        clock: Optional[Clock] = None,
    ) -> None:
        super().__init__(source, sensor_size, framerate=framerate, still_format=still_format, clock=clock)
        self.tracker = FieldOfViewTracker(STREAM_SIZE)
        w, h = sensor_size
        # Crop the sensor to the stream's 3:2 so the circle stays a circle.
        crop_w = min(w, round(h * STREAM_SIZE[0] / STREAM_SIZE[1]))
        crop_h = min(h, round(crop_w * STREAM_SIZE[1] / STREAM_SIZE[0]))
        self._crop = ((w - crop_w) // 2, (h - crop_h) // 2, crop_w, crop_h)

    def process(self, frame: np.ndarray) -> np.ndarray:
        x, y, cw, ch = self._crop
        cv2.resize(frame[y : y + ch, x : x + cw], STREAM_SIZE, dst=self._small, interpolation=cv2.INTER_LINEAR)
        if self._mode == OtoscopeMode.RAW.value:
            return self._small.copy()
        mask = self.tracker.update(self._small)
        out: np.ndarray = cv2.bitwise_and(self._small, mask)
        return out

    def full_resolution_mask(self, shape: tuple[int, ...]) -> Optional[np.ndarray]:
        circle = self.tracker.circle
        if circle is None:
            return None
        x, y, cw, _ = self._crop
        scale = cw / STREAM_SIZE[0]
        mask = np.zeros(shape[:2], np.uint8)
        centre = (round(circle.cx * scale + x), round(circle.cy * scale + y))
        cv2.circle(mask, centre, round(circle.radius * scale * 0.99), 255, -1, cv2.LINE_AA)
        return cv2.merge([mask, mask, mask])

    def _still_finisher(self, raw: np.ndarray) -> Optional[Finisher]:
        mask = self.full_resolution_mask(raw.shape) if self._mode == OtoscopeMode.MASKED.value else None
        if mask is None:
            return None
        return lambda image: cv2.bitwise_and(image, mask)
