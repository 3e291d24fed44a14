"""One subscription's forwarding state: what its packets are mapped, rewritten, kept and
counted with.

Two implementations with one interface:

* :class:`Leg`, in Python: its subscription forwards each packet itself
  (:meth:`sfu.subscription.Subscription.send`);
* ``sfu._fanout.Leg`` (``sfu/_fanout.c``), in C: the forwarder hands each publisher packet to
  ``sfu._fanout.fan_out`` once for all its subscriptions' C legs, which maps, rewrites, keeps
  (NACK history), queues and counts in one crossing into C. A leg that is not ``active`` (its
  transport not ready) or a RED packet its leg must convert is handed back to
  :meth:`~sfu.subscription.Subscription.send`, which works on the same mapper and history.

Both count what the subscription's Sender Reports carry (``sr_*``: aiortc's sender reads them
through :func:`media.aiortc_internals.report_from`).
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Union

from media.aiortc_internals import ntp_now
from sfu.rtp import PacketHistory, SequenceMapper

if TYPE_CHECKING:
    from sfu._fanout import Leg as NativeLeg  # its types: sfu/_fanout.pyi


def _native_module() -> ModuleType | None:
    try:
        import sfu._fanout as _fanout
    except ImportError:
        return None
    return _fanout


FANOUT: ModuleType | None = _native_module()
""":mod:`sfu._fanout`, or None where it was not built (``pyproject.toml``: optional)."""


class Leg:
    """The Python leg (see the module's docstring)."""

    def __init__(self, history_size: int, first_sequence_number: int, first_timestamp: int) -> None:
        self.mapper = SequenceMapper(first_sequence_number, first_timestamp)
        self.history = PacketHistory(history_size)
        self.active = False
        self.red_in: int | None = None
        self.bytes_out = 0
        """Bytes forwarded (retransmissions aside), before SRTP."""
        self.sr_packets = 0
        self.sr_octets = 0
        self.sr_timestamp = 0
        self.sr_ntp = 0
        self.last_sent_at: float | None = None

    def note_sent(self, timestamp: int, payload_bytes: int) -> None:
        """Count one packet for the Sender Reports. The (NTP time, RTP timestamp) pair moves on
        the first packet of each frame only: every packet of a frame has its timestamp, and
        reading the wall clock per packet costs."""
        if not self.sr_packets or self.sr_timestamp != timestamp:
            self.sr_ntp = ntp_now()
            self.sr_timestamp = timestamp
        self.sr_octets += payload_bytes
        self.sr_packets += 1

    def set_rewriter(self, id_map: dict[int, int], mid_id: int, mid: bytes) -> None:
        """The Python path rewrites with its subscription's :class:`sfu.rtp.ExtensionRewriter`."""


AnyLeg = Union[Leg, "NativeLeg"]
"""A subscription's leg, either kind: the same attributes and methods."""


def new_leg(*, native: bool, ssrc: int, payload_type: int, history_size: int, first_sequence_number: int,
            first_timestamp: int, pending: list[bytes], enqueue: Callable[[], Any]) -> AnyLeg:
    """A C leg when ``native`` and :data:`FANOUT` is built (its packets go to ``pending``,
    ``enqueue()`` called when it gets the first of a turn), else a Python one."""
    if native and FANOUT is not None:
        leg: NativeLeg = FANOUT.Leg(ssrc=ssrc, payload_type=payload_type, history_size=history_size,
                                    first_sequence_number=first_sequence_number, first_timestamp=first_timestamp,
                                    pending=pending, enqueue=enqueue)
        return leg
    return Leg(history_size, first_sequence_number, first_timestamp)


__all__ = ["FANOUT", "AnyLeg", "Leg", "new_leg"]
