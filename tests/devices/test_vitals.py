import asyncio
import datetime
import math
import struct

import pytest

from devices.measurements import MeasurementQueue, Quantity
from devices.vitals import (
    BLOOD_PRESSURE_MEASUREMENT,
    PLX_CONTINUOUS_MEASUREMENT,
    TEMPERATURE_MEASUREMENT,
    GattParseError,
    Special,
    TemperatureType,
    VitalsAdapter,
    VitalsSimulator,
    decode_float,
    decode_sfloat,
    encode_float,
    encode_sfloat,
    parse_blood_pressure_measurement,
    parse_plx_continuous_measurement,
    parse_temperature_measurement,
)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (0x0072, 114.0),  # exponent 0
        (0xF16C, 36.4),  # exponent -1, mantissa 364
        (0x2001, 100.0),  # exponent 2
        (0x0FFF, -1.0),  # negative mantissa
        (0xE7D0, 20.0),  # 2000e-2
    ],
)
def test_sfloat_values(raw: int, value: float) -> None:
    assert decode_sfloat(raw).value == pytest.approx(value)
    assert decode_sfloat(raw).valid


@pytest.mark.parametrize(
    ("raw", "special"),
    [(0x07FF, Special.NAN), (0x0800, Special.NRES), (0x07FE, Special.POSITIVE_INFINITY),
     (0x0802, Special.NEGATIVE_INFINITY), (0x0801, Special.RESERVED)],
)  # fmt: skip
def test_sfloat_specials(raw: int, special: Special) -> None:
    decoded = decode_sfloat(raw)
    assert decoded.special is special and not decoded.valid
    if special is Special.POSITIVE_INFINITY:
        assert decoded.value == math.inf
    elif special is Special.NEGATIVE_INFINITY:
        assert decoded.value == -math.inf
    else:
        assert math.isnan(decoded.value)


@pytest.mark.parametrize(
    ("raw", "special"),
    [(0x007FFFFF, Special.NAN), (0x00800000, Special.NRES), (0x007FFFFE, Special.POSITIVE_INFINITY),
     (0x00800002, Special.NEGATIVE_INFINITY), (0x00800001, Special.RESERVED)],
)  # fmt: skip
def test_float_specials(raw: int, special: Special) -> None:
    assert decode_float(raw).special is special


def test_float_values_and_round_trip() -> None:
    assert decode_float(0xFF00016C).value == pytest.approx(36.4)
    assert decode_float(0xFEFFFFFF).value == pytest.approx(-0.01)
    assert decode_float(0x02000003).value == pytest.approx(300.0)
    for value in (36.9, -40.0, 98.6, 0.0):
        assert decode_float(encode_float(value)).value == pytest.approx(value)
        assert decode_sfloat(encode_sfloat(value)).value == pytest.approx(value)


def test_temperature_measurement_from_spec_layout() -> None:
    # Flags: °C, timestamp, type; 36.4 °C as FLOAT 0xFF00016C; 2024-03-05 14:30:15; tympanum.
    data = bytes([0x06, 0x6C, 0x01, 0x00, 0xFF]) + struct.pack("<HBBBBB", 2024, 3, 5, 14, 30, 15) + bytes([9])
    m = parse_temperature_measurement(data)
    assert m.temperature.value == pytest.approx(36.4) and m.unit == "Cel"
    assert m.timestamp == datetime.datetime(2024, 3, 5, 14, 30, 15)
    assert m.temperature_type is TemperatureType.TYMPANUM
    fahrenheit = parse_temperature_measurement(bytes([0x01]) + struct.pack("<I", encode_float(98.6)))
    assert fahrenheit.unit == "[degF]" and fahrenheit.temperature.value == pytest.approx(98.6)
    assert fahrenheit.timestamp is None and fahrenheit.temperature_type is None


def test_blood_pressure_measurement_all_fields() -> None:
    # mmHg 120/80, MAP 93, timestamp, pulse 72, user 1, status: irregular pulse + rate above range.
    flags = 0x02 | 0x04 | 0x08 | 0x10
    data = struct.pack("<BHHH", flags, 0x0078, 0x0050, 0x005D)
    data += struct.pack("<HBBBBB", 2023, 12, 31, 23, 59, 59) + struct.pack("<HBH", 0x0048, 1, 0b01100)
    m = parse_blood_pressure_measurement(data)
    assert (m.systolic.value, m.diastolic.value, m.mean_arterial_pressure.value) == (120, 80, 93)
    assert m.unit == "mm[Hg]" and m.pulse_rate is not None and m.pulse_rate.value == 72
    assert m.user_id == 1 and m.status == ("irregular_pulse",) and m.pulse_rate_range == "exceeds_upper_limit"
    kpa = parse_blood_pressure_measurement(struct.pack("<BHHH", 0x01, 0xF0A0, 0xF06A, 0xF07C))
    assert kpa.unit == "kPa" and kpa.systolic.value == pytest.approx(16.0) and kpa.pulse_rate is None


def test_blood_pressure_unknown_timestamp_and_nan_map() -> None:
    data = struct.pack("<BHHH", 0x02, 0x0078, 0x0050, 0x07FF) + bytes(7)
    m = parse_blood_pressure_measurement(data)
    assert m.timestamp is None and m.mean_arterial_pressure.special is Special.NAN


def test_plx_continuous_with_every_optional_field() -> None:
    flags = 0x1F
    data = struct.pack("<BHH", flags, 0x0061, 0x0048)  # normal: 97 %, 72 bpm
    data += struct.pack("<HH", 0x0060, 0x004A)  # fast
    data += struct.pack("<HH", 0x0062, 0x0047)  # slow
    data += struct.pack("<H", 0x0080 | 0x4000)  # validated, questionable
    data += (0x0020 | 0x0800).to_bytes(3, "little")  # low perfusion, sensor unconnected
    data += struct.pack("<H", 0xF02D)  # PAI 4.5
    m = parse_plx_continuous_measurement(data)
    assert (m.spo2.value, m.pulse_rate.value) == (97, 72)
    assert m.spo2_fast is not None and m.spo2_fast.value == 96 and m.pulse_rate_slow is not None and m.pulse_rate_slow.value == 71
    assert m.measurement_status == ("validated_data", "questionable_measurement")
    assert m.device_status == ("low_perfusion", "sensor_unconnected")
    assert m.pulse_amplitude_index is not None and m.pulse_amplitude_index.value == pytest.approx(4.5)
    minimal = parse_plx_continuous_measurement(struct.pack("<BHH", 0, 0x0062, 0x07FF))
    assert minimal.spo2_fast is None and minimal.pulse_rate.special is Special.NAN


def test_truncated_frames_are_refused() -> None:
    with pytest.raises(GattParseError, match="truncated"):
        parse_plx_continuous_measurement(bytes([0x01, 0x61, 0x00, 0x48, 0x00]))
    with pytest.raises(GattParseError):
        parse_temperature_measurement(bytes([0x02, 0x6C, 0x01, 0x00, 0xFF]))


async def test_simulated_vitals_go_through_the_parsers() -> None:
    adapter = VitalsAdapter(VitalsSimulator(seed=3), interval_s=0.01)
    queue = MeasurementQueue()
    adapter.add_measurement_listener(queue)
    await adapter.start()
    seen: dict[Quantity, str] = {}
    async with asyncio.timeout(5):
        while len(seen) < 6:
            m = await queue.get()
            seen[m.quantity] = m.unit
            if m.quantity is Quantity.SPO2:
                assert 90 <= m.value <= 100
            if m.quantity is Quantity.BODY_TEMPERATURE:
                assert 36 < m.value < 38
    assert seen[Quantity.SYSTOLIC] == "mm[Hg]" and seen[Quantity.BODY_TEMPERATURE] == "Cel" and seen[Quantity.SPO2] == "%"
    await adapter.close()
    await adapter.close()


def test_feed_ignores_bad_bytes_and_power_off() -> None:
    adapter = VitalsAdapter()
    assert adapter.feed(PLX_CONTINUOUS_MEASUREMENT, b"\x00\x01") == []
    assert adapter.parse_errors == 1
    assert len(adapter.feed(BLOOD_PRESSURE_MEASUREMENT, struct.pack("<BHHH", 0, 0x78, 0x50, 0x5D))) == 3
    asyncio.run(adapter.handle_command({"action": "power", "on": False}))
    assert adapter.feed(TEMPERATURE_MEASUREMENT, bytes([0]) + struct.pack("<I", encode_float(37.0))) == []
