"""Measurements that adapters emit (heart rate, level meter, vitals), always with units."""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable

logger = logging.getLogger(__name__)


class Quantity(str, enum.Enum):
    """What a measurement measures."""

    HEART_RATE = "heart_rate"
    LEVEL_RMS = "level_rms"
    LEVEL_PEAK = "level_peak"
    BODY_TEMPERATURE = "body_temperature"
    SYSTOLIC = "systolic"
    DIASTOLIC = "diastolic"
    MEAN_ARTERIAL_PRESSURE = "mean_arterial_pressure"
    PULSE_RATE = "pulse_rate"
    SPO2 = "spo2"


@dataclass(frozen=True)
class Measurement:
    """One value from one device."""

    device: str
    """Adapter name: one of :data:`core.vocabulary.DEVICES`."""
    quantity: Quantity
    value: float
    """NaN when the device reported a special value (NaN, NRes, ±INF are kept as float)."""
    unit: str
    """UCUM-like unit: ``/min``, ``dBFS``, ``Cel``, ``[degF]``, ``mm[Hg]``, ``kPa``, ``%``."""
    timestamp: float
    """Seconds on the adapter clock (monotonic) when the value was computed."""
    confidence: float = 1.0
    """0..1; heart rate uses the normalised autocorrelation peak."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["quantity"] = self.quantity.value
        return data


MeasurementListener = Callable[[Measurement], None]


class MeasurementQueue:
    """A bounded asyncio queue fed by an adapter listener; drops the oldest when full,
    so that a slow consumer never stalls the live path."""

    def __init__(self, maxsize: int = 256) -> None:
        self._queue: asyncio.Queue[Measurement] = asyncio.Queue(maxsize)
        self.dropped = 0

    def __call__(self, measurement: Measurement) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(measurement)

    async def get(self) -> Measurement:
        return await self._queue.get()

    def get_nowait(self) -> Measurement:
        return self._queue.get_nowait()

    def empty(self) -> bool:
        return self._queue.empty()
