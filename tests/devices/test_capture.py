import pytest

from config.settings import DevicesSettings
from devices.capture import PyAVAudioSource, PyAVVideoSource, parse_audio_input
from devices.errors import DeviceOpenError
from devices.registry import create_adapter


def test_missing_v4l2_device_is_named() -> None:
    with pytest.raises(DeviceOpenError, match="dermatoscope input '/dev/video-missing'") as info:
        PyAVVideoSource("dermatoscope", "/dev/video-missing", "1920x1080", 30).open()
    assert info.value.device == "dermatoscope"


def test_missing_alsa_device_is_named() -> None:
    with pytest.raises(DeviceOpenError, match="stethoscope input 'alsa:nonexistent'"):
        PyAVAudioSource("stethoscope", "alsa:nonexistent").open()


def test_registry_opens_real_devices_now() -> None:
    settings = DevicesSettings(otoscope_input="/dev/video-missing", stethoscope_input="alsa:nonexistent")
    with pytest.raises(DeviceOpenError, match="otoscope"):
        create_adapter("otoscope", settings, simulate=False)
    with pytest.raises(DeviceOpenError, match="stethoscope"):
        create_adapter("stethoscope", settings, simulate=False)


def test_audio_input_spec() -> None:
    assert parse_audio_input("alsa:hw:1,0") == ("alsa", "hw:1,0")
    assert parse_audio_input("pulse:alsa_input.usb") == ("pulse", "alsa_input.usb")
    with pytest.raises(ValueError):
        parse_audio_input("/dev/snd")
