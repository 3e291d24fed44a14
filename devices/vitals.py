"""Vital signs from Bluetooth GATT measurements: parsers, a simulator, an adapter.

Parsed characteristics (all little-endian, per the Bluetooth SIG service specifications):

* 0x2A1C Temperature Measurement: flags (bit 0 °F, bit 1 timestamp, bit 2 type), FLOAT;
* 0x2A35 Blood Pressure Measurement: flags (bit 0 kPa, bit 1 timestamp, bit 2 pulse rate,
  bit 3 user id, bit 4 status), three SFLOATs (systolic, diastolic, mean arterial);
* 0x2A5F PLX Continuous Measurement: flags (bit 0 fast, bit 1 slow, bit 2 measurement
  status, bit 3 device and sensor status, bit 4 pulse amplitude index), SpO2 and PR as SFLOAT.

Numbers are IEEE 11073-20601 SFLOAT (4-bit exponent, 12-bit mantissa) and FLOAT (8-bit
exponent, 24-bit mantissa), both with special values NaN, NRes, ±INF and a reserved one.
The simulator produces byte frames that go through the same parsers (the live path).
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
import math
import struct
from dataclasses import dataclass
from typing import Callable, Optional, Union

import av
import numpy as np

from .adapter import Capabilities, Clock, DeviceAdapter, MediaKind
from .errors import DeviceError
from .measurements import Measurement, Quantity

logger = logging.getLogger(__name__)

TEMPERATURE_MEASUREMENT = 0x2A1C
BLOOD_PRESSURE_MEASUREMENT = 0x2A35
PLX_CONTINUOUS_MEASUREMENT = 0x2A5F


class GattParseError(DeviceError):
    """A measurement's bytes do not match its characteristic's format."""


class Special(str, enum.Enum):
    NAN = "NaN"
    NRES = "NRes"
    """Not at this resolution."""
    POSITIVE_INFINITY = "+INF"
    NEGATIVE_INFINITY = "-INF"
    RESERVED = "reserved"


@dataclass(frozen=True)
class MderFloat:
    """A decoded SFLOAT/FLOAT: value is NaN for NaN/NRes/reserved, ±inf for ±INF."""

    value: float
    special: Optional[Special] = None

    @property
    def valid(self) -> bool:
        return self.special is None


_SFLOAT_SPECIAL = {0x07FF: Special.NAN, 0x0800: Special.NRES, 0x07FE: Special.POSITIVE_INFINITY,
                   0x0802: Special.NEGATIVE_INFINITY, 0x0801: Special.RESERVED}  # fmt: skip
_FLOAT_SPECIAL = {0x7FFFFF: Special.NAN, 0x800000: Special.NRES, 0x7FFFFE: Special.POSITIVE_INFINITY,
                  0x800002: Special.NEGATIVE_INFINITY, 0x800001: Special.RESERVED}  # fmt: skip
_SPECIAL_VALUE = {Special.POSITIVE_INFINITY: math.inf, Special.NEGATIVE_INFINITY: -math.inf}


def _decode_mder(raw: int, mantissa_bits: int, name: str, specials: dict[int, Special]) -> MderFloat:
    """IEEE-11073 MDER float: a signed mantissa, then a signed base-10 exponent above it."""
    exponent_bits = 4 if mantissa_bits == 12 else 8
    if not 0 <= raw < 1 << (mantissa_bits + exponent_bits):
        raise GattParseError(f"{name} out of range: {raw:#x}")
    mantissa, exponent = raw & ((1 << mantissa_bits) - 1), raw >> mantissa_bits
    if exponent == 0 and mantissa in specials:
        special = specials[mantissa]
        return MderFloat(_SPECIAL_VALUE.get(special, math.nan), special)
    if mantissa >= 1 << (mantissa_bits - 1):
        mantissa -= 1 << mantissa_bits
    if exponent >= 1 << (exponent_bits - 1):
        exponent -= 1 << exponent_bits
    return MderFloat(_scale(mantissa, exponent))


def decode_sfloat(raw: int) -> MderFloat:
    """16-bit SFLOAT → value."""
    return _decode_mder(raw, 12, "SFLOAT", _SFLOAT_SPECIAL)


def decode_float(raw: int) -> MderFloat:
    """32-bit FLOAT → value."""
    return _decode_mder(raw, 24, "FLOAT", _FLOAT_SPECIAL)


def _scale(mantissa: int, exponent: int) -> float:
    # round() keeps 36.4 from coming out as 36.400000000000006.
    return round(mantissa * 10.0**exponent, max(0, -exponent))


def encode_sfloat(value: Union[float, Special], exponent: int = -1) -> int:
    if isinstance(value, Special):
        return {v: k for k, v in _SFLOAT_SPECIAL.items()}[value]
    mantissa = round(value / 10.0**exponent)
    if not -2046 <= mantissa <= 2045 or not -8 <= exponent <= 7:
        raise ValueError(f"{value} does not fit an SFLOAT with exponent {exponent}")
    return ((exponent & 0xF) << 12) | (mantissa & 0x0FFF)


def encode_float(value: Union[float, Special], exponent: int = -1) -> int:
    if isinstance(value, Special):
        return {v: k for k, v in _FLOAT_SPECIAL.items()}[value]
    mantissa = round(value / 10.0**exponent)
    if not -(2**23) + 3 <= mantissa <= 2**23 - 3 or not -128 <= exponent <= 127:
        raise ValueError(f"{value} does not fit a FLOAT with exponent {exponent}")
    return ((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF)


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._what = what

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise GattParseError(f"{self._what}: truncated ({len(self._data)} bytes)")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack("<H", self.take(2))[0]
        return value

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "little")

    def sfloat(self) -> MderFloat:
        return decode_sfloat(self.u16())

    def float32(self) -> MderFloat:
        return decode_float(struct.unpack("<I", self.take(4))[0])

    def timestamp(self) -> Optional[datetime.datetime]:
        year, month, day, hour, minute, second = struct.unpack("<HBBBBB", self.take(7))
        if year == 0 or month == 0 or day == 0:
            return None  # the spec's "not known"
        try:
            return datetime.datetime(year, month, day, hour, minute, second)
        except ValueError as exc:
            raise GattParseError(f"{self._what}: bad timestamp ({exc})") from None


class TemperatureType(enum.IntEnum):
    ARMPIT = 1
    BODY = 2
    EAR = 3
    FINGER = 4
    GASTROINTESTINAL = 5
    MOUTH = 6
    RECTUM = 7
    TOE = 8
    TYMPANUM = 9


@dataclass(frozen=True)
class TemperatureMeasurement:
    temperature: MderFloat
    unit: str
    """``Cel`` or ``[degF]``."""
    timestamp: Optional[datetime.datetime] = None
    temperature_type: Optional[TemperatureType] = None


def parse_temperature_measurement(data: bytes) -> TemperatureMeasurement:
    r = _Reader(data, "temperature measurement")
    flags = r.u8()
    temperature = r.float32()
    timestamp = r.timestamp() if flags & 0x02 else None
    ttype = None
    if flags & 0x04:
        code = r.u8()
        ttype = TemperatureType(code) if code in TemperatureType._value2member_map_ else None
    return TemperatureMeasurement(temperature, "[degF]" if flags & 0x01 else "Cel", timestamp, ttype)


BP_STATUS_BITS = {0: "body_movement", 1: "cuff_too_loose", 2: "irregular_pulse", 5: "improper_position"}
BP_PULSE_RANGE = {0: "within_range", 1: "exceeds_upper_limit", 2: "below_lower_limit", 3: "reserved"}


@dataclass(frozen=True)
class BloodPressureMeasurement:
    systolic: MderFloat
    diastolic: MderFloat
    mean_arterial_pressure: MderFloat
    unit: str
    """``mm[Hg]`` or ``kPa``."""
    timestamp: Optional[datetime.datetime] = None
    pulse_rate: Optional[MderFloat] = None
    user_id: Optional[int] = None
    """255 means unknown user."""
    status: tuple[str, ...] = ()
    pulse_rate_range: Optional[str] = None


def parse_blood_pressure_measurement(data: bytes) -> BloodPressureMeasurement:
    r = _Reader(data, "blood pressure measurement")
    flags = r.u8()
    systolic, diastolic, mean = r.sfloat(), r.sfloat(), r.sfloat()
    timestamp = r.timestamp() if flags & 0x02 else None
    pulse = r.sfloat() if flags & 0x04 else None
    user = r.u8() if flags & 0x08 else None
    status: tuple[str, ...] = ()
    pulse_range = None
    if flags & 0x10:
        bits = r.u16()
        status = tuple(name for bit, name in BP_STATUS_BITS.items() if bits & (1 << bit))
        pulse_range = BP_PULSE_RANGE[(bits >> 3) & 0x3]
    unit = "kPa" if flags & 0x01 else "mm[Hg]"
    return BloodPressureMeasurement(systolic, diastolic, mean, unit, timestamp, pulse, user, status, pulse_range)


PLX_MEASUREMENT_STATUS_BITS = {
    5: "measurement_ongoing", 6: "early_estimated_data", 7: "validated_data", 8: "fully_qualified_data",
    9: "from_measurement_storage", 10: "for_demonstration", 11: "for_testing", 12: "calibration_ongoing",
    13: "measurement_unavailable", 14: "questionable_measurement", 15: "invalid_measurement",
}  # fmt: skip
PLX_DEVICE_STATUS_BITS = {
    0: "extended_display_update_ongoing", 1: "equipment_malfunction", 2: "signal_processing_irregularity",
    3: "inadequate_signal", 4: "poor_signal", 5: "low_perfusion", 6: "erratic_signal", 7: "nonpulsatile_signal",
    8: "questionable_pulse", 9: "signal_analysis_ongoing", 10: "sensor_interference", 11: "sensor_unconnected",
    12: "unknown_sensor", 13: "sensor_displaced", 14: "sensor_malfunctioning", 15: "sensor_disconnected",
}  # fmt: skip


@dataclass(frozen=True)
class PlxContinuousMeasurement:
    spo2: MderFloat
    """Percent."""
    pulse_rate: MderFloat
    """Beats per minute."""
    spo2_fast: Optional[MderFloat] = None
    pulse_rate_fast: Optional[MderFloat] = None
    spo2_slow: Optional[MderFloat] = None
    pulse_rate_slow: Optional[MderFloat] = None
    measurement_status: tuple[str, ...] = ()
    device_status: tuple[str, ...] = ()
    pulse_amplitude_index: Optional[MderFloat] = None


def parse_plx_continuous_measurement(data: bytes) -> PlxContinuousMeasurement:
    r = _Reader(data, "PLX continuous measurement")
    flags = r.u8()
    spo2, pr = r.sfloat(), r.sfloat()
    fast = (r.sfloat(), r.sfloat()) if flags & 0x01 else (None, None)
    slow = (r.sfloat(), r.sfloat()) if flags & 0x02 else (None, None)
    mstatus: tuple[str, ...] = ()
    if flags & 0x04:
        bits = r.u16()
        mstatus = tuple(name for bit, name in PLX_MEASUREMENT_STATUS_BITS.items() if bits & (1 << bit))
    dstatus: tuple[str, ...] = ()
    if flags & 0x08:
        bits = r.u24()
        dstatus = tuple(name for bit, name in PLX_DEVICE_STATUS_BITS.items() if bits & (1 << bit))
    pai = r.sfloat() if flags & 0x10 else None
    return PlxContinuousMeasurement(spo2, pr, fast[0], fast[1], slow[0], slow[1], mstatus, dstatus, pai)


ParsedMeasurement = Union[TemperatureMeasurement, BloodPressureMeasurement, PlxContinuousMeasurement]
PARSERS: dict[int, Callable[[bytes], ParsedMeasurement]] = {
    TEMPERATURE_MEASUREMENT: parse_temperature_measurement,
    BLOOD_PRESSURE_MEASUREMENT: parse_blood_pressure_measurement,
    PLX_CONTINUOUS_MEASUREMENT: parse_plx_continuous_measurement,
}


def to_measurements(parsed: ParsedMeasurement, now: float, device: str = "vitals") -> list[Measurement]:
    """Unit-carrying measurements from a parsed characteristic (invalid values become NaN)."""
    if isinstance(parsed, TemperatureMeasurement):
        return [Measurement(device, Quantity.BODY_TEMPERATURE, parsed.temperature.value, parsed.unit, now)]
    if isinstance(parsed, BloodPressureMeasurement):
        out = [
            Measurement(device, Quantity.SYSTOLIC, parsed.systolic.value, parsed.unit, now),
            Measurement(device, Quantity.DIASTOLIC, parsed.diastolic.value, parsed.unit, now),
            Measurement(device, Quantity.MEAN_ARTERIAL_PRESSURE, parsed.mean_arterial_pressure.value, parsed.unit, now),
        ]
        if parsed.pulse_rate is not None:
            out.append(Measurement(device, Quantity.PULSE_RATE, parsed.pulse_rate.value, "/min", now))
        return out
    return [
        Measurement(device, Quantity.SPO2, parsed.spo2.value, "%", now),
        Measurement(device, Quantity.PULSE_RATE, parsed.pulse_rate.value, "/min", now),
    ]


class VitalsSimulator:
    """GATT byte frames as a thermometer, a cuff and an oximeter would notify them."""

    def __init__(self, seed: int = 0, *, temperature_c: float = 36.8, systolic: float = 124,
                 diastolic: float = 78, pulse: float = 72, spo2: float = 97) -> None:  # fmt: skip
        self._rng = np.random.default_rng(seed)
        self.temperature_c, self.systolic, self.diastolic = temperature_c, systolic, diastolic
        self.pulse, self.spo2 = pulse, spo2
        self._tick = 0

    def frames(self) -> list[tuple[int, bytes]]:
        """The notifications of one second: an oximeter sample every second, a
        temperature every 10 s, a blood pressure every 30 s (first ones at once)."""
        rng = self._rng
        out: list[tuple[int, bytes]] = []
        pr = self.pulse + rng.normal(0, 1)
        spo2 = min(100.0, self.spo2 + rng.normal(0, 0.4))
        out.append((PLX_CONTINUOUS_MEASUREMENT, plx_bytes(round(spo2), round(pr), status=0x0080)))
        if self._tick % 10 == 0:
            temp = self.temperature_c + rng.normal(0, 0.05)
            out.append((TEMPERATURE_MEASUREMENT, temperature_bytes(round(temp, 1), ttype=TemperatureType.EAR)))
        if self._tick % 30 == 0:
            sys_, dia = self.systolic + rng.normal(0, 3), self.diastolic + rng.normal(0, 2)
            out.append((BLOOD_PRESSURE_MEASUREMENT, blood_pressure_bytes(round(sys_), round(dia), round(pr))))
        self._tick += 1
        return out


def temperature_bytes(celsius: float, ttype: Optional[TemperatureType] = None) -> bytes:
    flags = 0x04 if ttype is not None else 0
    data = struct.pack("<BI", flags, encode_float(celsius, -1))
    return data + (bytes([ttype]) if ttype is not None else b"")


def blood_pressure_bytes(systolic: float, diastolic: float, pulse: Optional[float] = None) -> bytes:
    mean = round(diastolic + (systolic - diastolic) / 3)
    flags = 0x04 if pulse is not None else 0
    data = struct.pack("<BHHH", flags, encode_sfloat(systolic, 0), encode_sfloat(diastolic, 0), encode_sfloat(mean, 0))
    return data + (struct.pack("<H", encode_sfloat(pulse, 0)) if pulse is not None else b"")


def plx_bytes(spo2: float, pulse: float, status: Optional[int] = None) -> bytes:
    flags = 0x04 if status is not None else 0
    data = struct.pack("<BHH", flags, encode_sfloat(spo2, 0), encode_sfloat(pulse, 0))
    return data + (struct.pack("<H", status) if status is not None else b"")


class VitalsAdapter(DeviceAdapter):
    """Vital-sign sensors: no media track, measurements only.

    :meth:`feed` takes one GATT notification (a real BLE client calls it); with a
    simulator, :meth:`start` runs a task that feeds its frames once a second.
    """

    name = "vitals"
    kind = MediaKind.DATA

    def __init__(self, simulator: Optional[VitalsSimulator] = None, *, clock: Optional[Clock] = None,
                 interval_s: float = 1.0) -> None:  # fmt: skip
        super().__init__(None, **({"clock": clock} if clock else {}))
        self._simulator = simulator
        self._interval_s = interval_s
        self._task: Optional[asyncio.Task[None]] = None
        self.parse_errors = 0

    def capabilities(self) -> Capabilities:
        return Capabilities(device=self.name, kind=self.kind, actions=self._actions())

    def feed(self, characteristic: int, data: bytes) -> list[Measurement]:
        """Parse one notification and emit its measurements (nothing while powered off)."""
        parser = PARSERS.get(characteristic)
        if parser is None or not self.powered or self.closed:
            return []
        try:
            parsed = parser(data)
        except GattParseError:
            # The bytes are not logged: they could be a patient's values.
            self.parse_errors += 1
            logger.warning("vitals: unparsable notification on %#06x (%d bytes)", characteristic, len(data))
            return []
        measurements = to_measurements(parsed, self._clock(), self.name)
        for m in measurements:
            self._emit(m)
        return measurements

    async def start(self) -> None:
        if self._simulator is not None and self._task is None:
            self._task = asyncio.create_task(self._run(self._simulator))

    async def _run(self, simulator: VitalsSimulator) -> None:
        while True:
            for characteristic, data in simulator.frames():
                self.feed(characteristic, data)
            await asyncio.sleep(self._interval_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await super().close()

    def process(self, frame: np.ndarray) -> np.ndarray:
        return frame

    def _idle_frame(self) -> np.ndarray:
        return np.zeros(0)

    def to_av_frame(self, frame: np.ndarray) -> av.AudioFrame:
        raise DeviceError("vitals have no media track")
