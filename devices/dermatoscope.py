"""Dermatoscope: a 1280x720 stream for positioning, full-resolution calibrated stills.

Colour calibration fits a 3x4 affine matrix in linear RGB from the 24 chart patches
(:mod:`devices.colour`). The stream is resized first and corrected after (fewer pixels
for the same result); stills are corrected at full sensor resolution.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any, ClassVar, Optional, Sequence

import av
import cv2
import numpy as np

from .adapter import Capabilities, Clock, DeviceAdapter, FrameSource, MediaKind, Still
from .colour import ColourCorrection, PatchBox, patch_means
from .errors import DeviceCommandError
from .imaging import StillFormat, encode_still, rgb_to_video_frame

logger = logging.getLogger(__name__)

STREAM_SIZE = (1280, 720)


class DermatoscopeMode(str, enum.Enum):
    CALIBRATED = "calibrated"
    RAW = "raw"


class DermatoscopeAdapter(DeviceAdapter):
    name = "dermatoscope"
    kind = MediaKind.VIDEO
    modes: ClassVar[tuple[str, ...]] = tuple(m.value for m in DermatoscopeMode)
    supports_still = True

    def __init__(
        self,
        source: FrameSource,
        sensor_size: tuple[int, int],
        *,
        framerate: float = 30.0,
        chart_patches: Optional[Sequence[PatchBox]] = None,
        still_format: StillFormat = StillFormat.PNG,
        clock: Optional[Clock] = None,
    ) -> None:
        super().__init__(source, **({"clock": clock} if clock else {}))
        self.frame_rate = framerate
        self.sensor_size = sensor_size
        self.still_format = still_format
        self.chart_patches = tuple(chart_patches) if chart_patches else None
        self.correction: Optional[ColourCorrection] = None
        self._last_raw: Optional[np.ndarray] = None
        self._small = np.empty((STREAM_SIZE[1], STREAM_SIZE[0], 3), np.uint8)
        self._out = np.empty_like(self._small)
        self._black = np.zeros_like(self._small)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            device=self.name,
            kind=self.kind,
            modes=self.modes,
            default_mode=DermatoscopeMode.CALIBRATED.value,
            actions=self._actions(),
            still=True,
            still_size=self.sensor_size,
            still_mime=self.still_format.value,
            stream_size=STREAM_SIZE,
        )

    def _extra_actions(self) -> tuple[str, ...]:
        return ("calibrate",)

    # -- calibration -------------------------------------------------------------------

    def calibrate(self, frame: np.ndarray, patches: Optional[Sequence[PatchBox]] = None) -> ColourCorrection:
        """Fit the correction from the chart in ``frame`` (full sensor resolution)."""
        boxes = patches or self.chart_patches
        if not boxes or len(boxes) != 24:
            raise DeviceCommandError("calibration needs the 24 chart patch positions")
        correction = ColourCorrection.fit(patch_means(frame, boxes))
        self.correction = correction
        return correction

    async def _extra_command(self, action: str, cmd: dict[str, Any]) -> dict[str, Any]:
        if action != "calibrate":
            return await super()._extra_command(action, cmd)
        patches = None
        if "patches" in cmd:
            raw = cmd["patches"]
            try:
                patches = [PatchBox(*(int(v) for v in box)) for box in raw]
            except (TypeError, ValueError):
                raise DeviceCommandError("patches must be 24 [x0, y0, x1, y1] boxes") from None
            w, h = self.sensor_size
            if len(patches) != 24 or any(not (0 <= b.x0 < b.x1 <= w and 0 <= b.y0 < b.y1 <= h) for b in patches):
                raise DeviceCommandError("patches must be 24 non-empty boxes inside the sensor")
        elif not self.chart_patches:
            raise DeviceCommandError("chart position unknown: send 'patches'")
        async with self._lock:
            frame = self._last_raw
            if frame is None:
                raise DeviceCommandError("no frame yet to calibrate on")
            try:
                correction = self.calibrate(frame, patches)
            except ValueError as exc:
                raise DeviceCommandError(str(exc)) from exc
        return {"matrix": correction.matrix.round(5).tolist()}

    # -- live path ---------------------------------------------------------------------

    def process(self, frame: np.ndarray) -> np.ndarray:
        self._last_raw = frame
        if frame.shape[1] == STREAM_SIZE[0] and frame.shape[0] == STREAM_SIZE[1]:
            np.copyto(self._small, frame)
        else:
            cv2.resize(frame, STREAM_SIZE, dst=self._small, interpolation=cv2.INTER_LINEAR)
        if self._mode == DermatoscopeMode.CALIBRATED.value and self.correction is not None:
            self.correction.apply(self._small, out=self._out)
            return self._out.copy()
        return self._small.copy()

    def _idle_frame(self) -> np.ndarray:
        return self._black

    def to_av_frame(self, frame: np.ndarray) -> av.VideoFrame:
        return rgb_to_video_frame(frame)

    async def still(self) -> Still:
        async with self._lock:
            if not self.powered:
                raise DeviceCommandError("dermatoscope is off")
            assert self._source is not None
            loop = asyncio.get_running_loop()
            raw = await loop.run_in_executor(None, self._source.read)
            self._last_raw = raw
            correction = self.correction if self._mode == DermatoscopeMode.CALIBRATED.value else None
            fmt = self.still_format

        def render() -> bytes:
            image = correction.apply_exact(raw) if correction is not None else raw
            return encode_still(image, fmt)

        data = await asyncio.get_running_loop().run_in_executor(None, render)
        h, w, _ = raw.shape
        return Still(data, fmt.value, w, h, self._clock())
