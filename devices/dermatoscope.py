"""Dermatoscope: a 1280x720 stream for positioning, full-resolution calibrated stills.

Colour calibration fits a 3x4 affine matrix in linear RGB from the 24 chart patches
(:mod:`devices.colour`). The stream is resized first and corrected after (fewer pixels
for the same result); stills are corrected at full sensor resolution.
"""

from __future__ import annotations

import enum
import logging
from typing import Any, ClassVar, Optional, Sequence

import cv2
import numpy as np

from .adapter import Clock, FrameSource
from .camera import Finisher, StillCamera
from .colour import ColourCorrection, PatchBox, patch_means
from .errors import DeviceCommandError
from .imaging import StillFormat

logger = logging.getLogger(__name__)

STREAM_SIZE = (1280, 720)


class DermatoscopeMode(str, enum.Enum):
    CALIBRATED = "calibrated"
    RAW = "raw"


class DermatoscopeAdapter(StillCamera):
    name = "dermatoscope"
    modes: ClassVar[tuple[str, ...]] = tuple(m.value for m in DermatoscopeMode)
    stream_size = STREAM_SIZE
    default_mode = DermatoscopeMode.CALIBRATED.value

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
        super().__init__(source, sensor_size, framerate=framerate, still_format=still_format, clock=clock)
        self.chart_patches = tuple(chart_patches) if chart_patches else None
        self.correction: Optional[ColourCorrection] = None
        self._last_raw: Optional[np.ndarray] = None
        self._out = np.empty_like(self._small)

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

    def _still_finisher(self, raw: np.ndarray) -> Optional[Finisher]:
        self._last_raw = raw
        correction = self.correction if self._mode == DermatoscopeMode.CALIBRATED.value else None
        return correction.apply_exact if correction is not None else None
