"""Exceptions raised by device adapters.

::

    DeviceError                  anything that went wrong with a device
    ├── DeviceOpenError          a real device could not be opened (names the device)
    └── DeviceCommandError       a command was refused; nothing was changed
"""

from __future__ import annotations


class DeviceError(Exception):
    """Base class of device problems."""


class DeviceOpenError(DeviceError):
    """A capture device (ALSA, PulseAudio, V4L2) could not be opened."""

    def __init__(self, device: str, source: str, reason: str) -> None:
        super().__init__(f"cannot open {device} input {source!r}: {reason}")
        self.device = device
        self.source = source
        self.reason = reason


class DeviceCommandError(DeviceError):
    """A command was malformed, unknown or out of range; the adapter is unchanged."""
