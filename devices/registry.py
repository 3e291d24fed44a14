"""One factory for every device, so that the agent creates adapters from names."""

from __future__ import annotations

import logging

from config.settings import DevicesSettings
from core.vocabulary import DEVICES

from .adapter import DeviceAdapter
from .capture import PyAVAudioSource, PyAVVideoSource, parse_size
from .dermatoscope import DermatoscopeAdapter
from .errors import DeviceOpenError
from .otoscope import OtoscopeAdapter
from .simulated import DermatoscopeScene, OtoscopeScene, PhonocardiogramSimulator
from .stethoscope import StethoscopeAdapter
from .vitals import VitalsAdapter, VitalsSimulator

logger = logging.getLogger(__name__)

def create_adapter(name: str, settings: DevicesSettings, simulate: bool, seed: int = 0) -> DeviceAdapter:
    """An adapter for ``name``; real devices are opened now (DeviceOpenError names them)."""
    if name == "stethoscope":
        if simulate:
            return StethoscopeAdapter(PhonocardiogramSimulator(72.0, channels=2, seed=seed), channels=2)
        return StethoscopeAdapter(PyAVAudioSource(name, settings.stethoscope_input, channels=2), channels=2)
    if name == "dermatoscope":
        size = parse_size(settings.dermatoscope_size)
        if simulate:
            scene = DermatoscopeScene(*size, seed=seed)
            adapter = DermatoscopeAdapter(scene, size, framerate=settings.framerate, chart_patches=scene.chart_patch_boxes)
            # The simulated chart is always in view: calibrate on the first frame.
            adapter.calibrate(scene.read())
            return adapter
        source = PyAVVideoSource(name, settings.dermatoscope_input, settings.dermatoscope_size, settings.framerate)
        return DermatoscopeAdapter(source, size, framerate=settings.framerate)
    if name == "otoscope":
        size = parse_size(settings.otoscope_size)
        if simulate:
            return OtoscopeAdapter(OtoscopeScene(*size, seed=seed), size, framerate=settings.framerate)
        source = PyAVVideoSource(name, settings.otoscope_input, settings.otoscope_size, settings.framerate)
        return OtoscopeAdapter(source, size, framerate=settings.framerate)
    if name == "vitals":
        if simulate:
            return VitalsAdapter(VitalsSimulator(seed))
        raise DeviceOpenError(name, "bluetooth", "no Bluetooth LE backend yet: feed() notifications from a BLE client")
    raise ValueError(f"unknown device {name!r}; expected one of {', '.join(DEVICES)}")
