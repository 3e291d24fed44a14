"""Connected medical devices: each an adapter from a source to a labelled track."""

from .adapter import Capabilities, Control, DeviceAdapter, DeviceTrack, FrameSource, MediaKind, Still
from .errors import DeviceCommandError, DeviceError, DeviceOpenError
from .measurements import Measurement, MeasurementQueue, Quantity
from .registry import create_adapter

__all__ = [
    "Capabilities",
    "Control",
    "DeviceAdapter",
    "DeviceCommandError",
    "DeviceError",
    "DeviceOpenError",
    "DeviceTrack",
    "FrameSource",
    "MediaKind",
    "Measurement",
    "MeasurementQueue",
    "Quantity",
    "Still",
    "create_adapter",
]
