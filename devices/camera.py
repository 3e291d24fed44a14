"""StillCamera: a video device streaming a processed view of a larger sensor, with stills.

The dermatoscope and the otoscope share this shape: frames come from the sensor
at full size, the live path reduces them to ``stream_size`` (network-sized) and
processes them, and a still is one full-resolution capture, finished (colour
correction, field-of-view mask) and encoded off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Callable, ClassVar, Optional

import av
import numpy as np

from .adapter import Capabilities, Clock, DeviceAdapter, FrameSource, MediaKind, Still
from .errors import DeviceCommandError
from .imaging import StillFormat, encode_still, rgb_to_video_frame

Finisher = Callable[[np.ndarray], np.ndarray]


class StillCamera(DeviceAdapter):
    kind = MediaKind.VIDEO
    supports_still = True
    stream_size: ClassVar[tuple[int, int]]
    """(width, height) of the live track."""
    default_mode: ClassVar[str]

    def __init__(
        self,
        source: FrameSource,
        sensor_size: tuple[int, int],
        *,
        framerate: float = 30.0,
        still_format: StillFormat = StillFormat.PNG,
        clock: Optional[Clock] = None,
    ) -> None:
        super().__init__(source, **({"clock": clock} if clock else {}))
        self.frame_rate = framerate
        self.sensor_size = sensor_size
        self.still_format = still_format
        width, height = self.stream_size
        # Buffers reused frame after frame: the live path allocates only its output copy.
        self._small = np.empty((height, width, 3), np.uint8)
        self._black = np.zeros_like(self._small)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            device=self.name,
            kind=self.kind,
            modes=self.modes,
            default_mode=self.default_mode,
            actions=self._actions(),
            still=True,
            still_size=self.sensor_size,
            still_mime=self.still_format.value,
            stream_size=self.stream_size,
        )

    def _idle_frame(self) -> np.ndarray:
        return self._black

    def to_av_frame(self, frame: np.ndarray) -> av.VideoFrame:
        return rgb_to_video_frame(frame)

    def _still_finisher(self, raw: np.ndarray) -> Optional[Finisher]:
        """Called under the adapter's lock with the full-resolution capture: what to apply
        to it before encoding (None: encode it as captured). Reads state consistently."""
        return None

    async def still(self) -> Still:
        loop = asyncio.get_running_loop()
        async with self._lock:
            if not self.powered:
                raise DeviceCommandError(f"{self.name} is off")
            assert self._source is not None
            raw = await loop.run_in_executor(None, self._source.read)
            finish = self._still_finisher(raw)
            fmt = self.still_format

        def render() -> bytes:
            return encode_still(finish(raw) if finish is not None else raw, fmt)

        data = await loop.run_in_executor(None, render)
        height, width, _ = raw.shape
        return Still(data, fmt.value, width, height, self._clock())
