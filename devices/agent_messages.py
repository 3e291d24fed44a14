"""The agent's data channel messages, sans I/O: parsing commands, building replies.

Physician → agent (relayed by the SFU in an envelope ``{"from", "role", "data"}``)::

    {"type": "command", "id": "c1", "device": "stethoscope", "action": "set_mode", "mode": "bell"}

actions: ``set_mode`` (mode), ``set_gain`` (gain_db), ``power`` (on), ``still``,
``capabilities``, and ``calibrate`` for the dermatoscope.

Physician → agent: the device the physician is looking at (the large panel), which gets the
uplink's video budget first (devices/uplink.py)::

    {"type": "viewing", "device": "dermatoscope"}

Agent → everyone in the room::

    {"type": "command_result", "id", "device", "action", "ok": true, "status": {...}}
    {"type": "command_result", "id", "device", "action", "ok": false, "error": "..."}
    {"type": "device_status", "device", "kind", "on", "mode", "gain_db", "capabilities"}
    {"type": "measurement", "device", "name", "value", "unit", "ts", "confidence"}
    {"type": "still_ready", "id", "device", "still_id", "width", "height", "mime", "url", "preview"}
    {"type": "uplink", "mode", "budget_kbps", "viewing", "tracks": [{"device", "kind", "target_kbps",
     "paused", "reason"}]}
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

import cv2
import numpy as np

from .adapter import DeviceAdapter
from .measurements import Measurement, Quantity
from .uplink import Allocation

CommandId = Union[str, int, None]

COMMANDER_ROLE = "physician"
"""Only the physician drives devices (the SFU also checks the room token's command grant)."""

FORWARDED_QUANTITIES = frozenset(q for q in Quantity if q not in (Quantity.LEVEL_RMS, Quantity.LEVEL_PEAK))
"""Measurements sent on the channel: heart rate and vitals. Level meters (10 per second)
stay local: the physician's page draws its own from the audio."""

PREVIEW_MAX_CHARS = 8192
"""A still_ready's preview data URL, at most (the room channel caps a message at 16 KB)."""


@dataclass(frozen=True)
class Command:
    id: CommandId
    device: str
    action: str
    fields: dict[str, Any]
    """The command as the adapter takes it: ``action`` and its arguments."""


class CommandRefused(ValueError):
    """A message that is not a command the agent may run; ``id`` to answer to."""

    def __init__(self, command_id: CommandId, device: Optional[str], reason: str) -> None:
        super().__init__(reason)
        self.id = command_id
        self.device = device
        self.reason = reason


def parse_envelope(text: Any) -> Optional[dict[str, Any]]:
    """The relayed envelope as a dict, or None (binary, not JSON, not an envelope)."""
    if not isinstance(text, str):
        return None
    try:
        envelope = json.loads(text)
    except ValueError:
        return None
    if not isinstance(envelope, dict) or "data" not in envelope or "from" not in envelope:
        return None
    return envelope


def _command_id(value: Any) -> CommandId:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and len(value) <= 64):
        return value
    return None


def parse_command(envelope: dict[str, Any], devices: set[str]) -> Optional[Command]:
    """The command in ``envelope``; None when it is not a command at all (other messages);
    raises :class:`CommandRefused` for a command the agent will not run."""
    data = envelope.get("data")
    if not isinstance(data, dict) or data.get("type") != "command":
        return None
    command_id = _command_id(data.get("id"))
    device = data.get("device")
    device_name = device if isinstance(device, str) and len(device) <= 32 else None
    if envelope.get("role") != COMMANDER_ROLE:
        raise CommandRefused(command_id, device_name, "only the physician may drive the devices")
    if device_name is None or device_name not in devices:
        raise CommandRefused(command_id, device_name, f"unknown device {device!r}; this agent has "
                                                      f"{', '.join(sorted(devices))}")
    action = data.get("action")
    if not isinstance(action, str):
        raise CommandRefused(command_id, device_name, "a command needs an 'action'")
    fields = {k: v for k, v in data.items() if k not in ("type", "id", "device")}
    return Command(command_id, device_name, action, fields)


def device_status(adapter: DeviceAdapter) -> dict[str, Any]:
    """What the physician's panel shows for one device."""
    return {
        "device": adapter.name,
        "kind": adapter.kind.value,
        "on": adapter.powered,
        "mode": adapter.mode,
        "gain_db": adapter.gain_db if adapter.gain_control else None,
    }


def device_status_message(adapter: DeviceAdapter) -> dict[str, Any]:
    return {"type": "device_status", **device_status(adapter), "capabilities": adapter.capabilities().to_json()}


def result_ok(command: Command, adapter: DeviceAdapter, reply: dict[str, Any]) -> dict[str, Any]:
    status = device_status(adapter)
    # The adapter's reply adds what the action produced (still id, calibration matrix...).
    extra = {k: v for k, v in reply.items() if k not in ("ok", "device", "action") and k not in status}
    return {"type": "command_result", "id": command.id, "device": command.device, "action": command.action,
            "ok": True, "status": {**status, **extra}}


def result_error(command_id: CommandId, device: Optional[str], error: str,
                 action: Optional[str] = None) -> dict[str, Any]:
    return {"type": "command_result", "id": command_id, "device": device, "action": action, "ok": False,
            "error": error}


def measurement_message(measurement: Measurement, wall_clock: float | None = None) -> Optional[dict[str, Any]]:
    """The channel message for a measurement, or None for those that stay local."""
    if measurement.quantity not in FORWARDED_QUANTITIES:
        return None
    value: Optional[float] = measurement.value
    if value is None or not math.isfinite(value):
        value = None  # JSON has no NaN/inf: a special value (NRes...) shows as no value
    return {"type": "measurement", "device": measurement.device, "name": measurement.quantity.value,
            "value": value, "unit": measurement.unit, "ts": round(time.time() if wall_clock is None else wall_clock, 3),
            "confidence": round(measurement.confidence, 3)}


def make_preview(image: bytes, max_chars: int = PREVIEW_MAX_CHARS) -> Optional[str]:
    """A small JPEG data URL of an encoded still, at most ``max_chars`` long (CPU-bound)."""
    bgr = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    h, w = bgr.shape[:2]
    for width, quality in ((192, 70), (160, 60), (128, 50), (96, 40)):
        small = cv2.resize(bgr, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            return None
        url = "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")
        if len(url) <= max_chars:
            return url
    return None


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def parse_viewing(envelope: dict[str, Any], devices: set[str]) -> Optional[str]:
    """The device a ``viewing`` message names, when the physician sent it and the agent has
    that device; None for anything else (other messages, other roles, unknown devices)."""
    data = envelope.get("data")
    if not isinstance(data, dict) or data.get("type") != "viewing" or envelope.get("role") != COMMANDER_ROLE:
        return None
    device = data.get("device")
    return device if isinstance(device, str) and device in devices else None


def parse_site_share(data: Any) -> Optional[float]:
    """The share of a ``site_share`` notice (from the SFU only: the caller checks the sender),
    in (0, 1]; None for anything else."""
    if not isinstance(data, dict) or data.get("type") != "site_share":
        return None
    share = data.get("share")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share <= 1.0:
        return None
    return float(share)


def uplink_message(allocation: Allocation, viewing: Optional[str], congested: bool) -> dict[str, Any]:
    """What the physician's page shows of the uplink: a banner when the link reduced or paused
    video (``congested``; a start's ramp reduces video too, on any link), and each track's
    target."""
    budget = allocation.budget_kbps
    return {"type": "uplink", "mode": allocation.mode.value, "congested": congested,
            "budget_kbps": None if budget is None else round(budget), "viewing": viewing,
            "tracks": [t.to_json() for t in allocation.targets]}
