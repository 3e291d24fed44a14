import pytest

from config.settings import DevicesSettings
from core.vocabulary import DEVICES
from devices.errors import DeviceOpenError
from devices.registry import create_adapter


async def test_creates_every_simulated_device() -> None:
    settings = DevicesSettings(dermatoscope_size="640x360", otoscope_size="640x360")
    for name in DEVICES:
        adapter = create_adapter(name, settings, simulate=True, seed=1)
        caps = adapter.capabilities()
        assert adapter.name == name == caps.device
        if name == "vitals":
            assert adapter.track is None
        else:
            track = adapter.track
            assert track is not None and track.source == name  # type: ignore[attr-defined]
            assert track.kind == caps.kind.value
            assert adapter.track is track
        await adapter.close()


def test_unknown_and_unavailable_devices() -> None:
    with pytest.raises(ValueError, match="unknown device 'thermometer'"):
        create_adapter("thermometer", DevicesSettings(), simulate=True)
    with pytest.raises(DeviceOpenError, match="vitals"):
        create_adapter("vitals", DevicesSettings(), simulate=False)
