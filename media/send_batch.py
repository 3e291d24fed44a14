"""The RTP packets due to one socket in one event-loop turn, protected and sent together.

Forwarding paid, per packet and subscriber, one ``sendto`` system call and one crossing into
libsrtp through cffi: most of its cost (``bench.hotpath``, ``docs/performance.md``). The packets
of a video frame arrive together, and every subscriber's copy of them is written in the same
event-loop turn. So a :class:`SendBatch` holds what is written to each :class:`Sink` (one
subscriber's socket, SRTP session and address) until the end of the turn
(``loop.call_soon``: after the turn's other ready callbacks, so the added latency is
what remains of that turn's work, well under a millisecond), then sends each sink's
packets with one call into :mod:`media._rtpsend` (SRTP protect in C, one ``sendmmsg`` per
64 packets, a run of packets of one size, such as a video frame's, as one UDP_SEGMENT
message: one pass through the kernel's IP stack instead of one per packet).

Where the extension is not built, or ``native=False``, or a sink's socket is not a plain
UDP socket (a TURN relay, a test's datagram hook), the same batches go out packet by packet
through pylibsrtp and the transport's ``sendto``: the same bytes, in the same order.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Protocol

import pylibsrtp

from media.pylibsrtp_internals import Protect

logger = logging.getLogger(__name__)


def _native_module() -> ModuleType | None:
    try:
        import media._rtpsend as _rtpsend
    except ImportError:
        return None
    return _rtpsend


NATIVE: ModuleType | None = _native_module()
""":mod:`media._rtpsend`, or None where it was not built (``pyproject.toml``: optional)."""


@dataclass(frozen=True)
class NativeRoute:
    """What :mod:`media._rtpsend` needs to protect and send for one sink."""

    fd: int
    protect: int
    """Address of libsrtp's ``srtp_protect``."""
    session: int
    """The sending ``srtp_t``."""
    address: bytes
    """The destination ``sockaddr``."""


@dataclass(eq=False)
class Sink:
    """One destination: a socket, the SRTP session that protects for it and the address."""

    protect: Protect
    sendto: Callable[[bytes, Any], None]
    address: Any
    transport: Any
    """What ``sendto`` sends through. With ``native``, a plain UDP transport: closing, the
    pending packets are dropped; holding a write buffer, they go through it, after it."""
    on_sent: Callable[[int, int], None]
    """(datagrams, bytes) handed to the socket or its transport."""
    native: NativeRoute | None = None
    session: object = None
    """What must stay alive while ``native`` is used (the pylibsrtp session owning its ``srtp_t``)."""
    pending: list[bytes] = field(default_factory=list)
    gso: bool = True
    """Runs of one size go as one UDP_SEGMENT message (``media/_rtpsend.c``); False once the
    socket refused one (its route's MTU, a kernel or device without it)."""

    def resolve(self) -> "Sink":
        """A fixed destination: itself (:class:`Outbox`)."""
        return self

    def lost(self) -> None:
        """Never raised by :meth:`resolve`."""


class Outbox(Protocol):
    """What a batch sends for: the packets queued this turn and, at the end of the turn, the
    :class:`Sink` they go through (ConnectionError: nowhere any more; they are dropped and
    :meth:`lost` is called). A :class:`Sink` is its own outbox; an RTP writer
    (``media.aiortc_internals.RtpWriter``) resolves its transport's current one."""

    @property
    def pending(self) -> list[bytes]: ...

    def resolve(self) -> Sink: ...

    def lost(self) -> None: ...


@dataclass
class BatchCounts:
    flushes: int = 0
    syscalls: int = 0
    """``sendmmsg`` or ``sendto`` calls (a packet that had to wait in the transport counts one)."""
    datagrams: int = 0
    failed: int = 0
    """Packets dropped: refused by libsrtp or, for good, by the socket."""

    @property
    def datagrams_per_syscall(self) -> float:
        return self.datagrams / self.syscalls if self.syscalls else 0.0


class SendBatch:
    """Packets added during a turn are sent at its end (:meth:`flush`, also callable directly);
    :meth:`close` flushes what is left."""

    def __init__(self, *, native: bool = True) -> None:
        self.native = NATIVE if native else None
        self._due: list[Outbox] = []
        self._scheduled = False
        self.counts = BatchCounts()

    @property
    def uses_native(self) -> bool:
        return self.native is not None

    def add(self, outbox: Outbox, packet: bytes) -> None:
        if not outbox.pending:
            self.due(outbox)
        outbox.pending.append(packet)

    def due(self, outbox: Outbox) -> None:
        """``outbox`` gets its first packet of this turn (the writer appends it to
        ``outbox.pending`` itself, ``sfu._fanout`` just before this call: the forwarding path
        saves a call per packet)."""
        self._due.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        due, self._due = self._due, []
        if not due:
            return
        self.counts.flushes += 1
        native = self.native
        for outbox in due:
            packets = outbox.pending  # kept and emptied: writers append to that very list
            if not packets:
                continue
            try:
                sink = outbox.resolve()
            except ConnectionError:
                self.counts.failed += len(packets)
                packets.clear()
                outbox.lost()
                continue
            route = sink.native
            if route is not None and native is not None:
                transport = sink.transport  # a plain UDP transport (media.aioice_internals.pair_socket)
                if transport.is_closing():
                    packets.clear()  # its connection closed in this turn: its descriptor may be another's now
                    continue
                if not transport.get_write_buffer_size():
                    self._send_native(native, sink, route, packets)
                    packets.clear()
                    continue
            self._send_each(sink, packets)  # as before batching, through the transport
            packets.clear()

    def _send_native(self, native: ModuleType, sink: Sink, route: NativeRoute, packets: list[bytes]) -> None:
        counts = self.counts
        sent, sent_bytes, unsent, failed, error, calls, gso = native.send(
            route.fd, route.protect, route.session, route.address, packets, sink.gso)
        if sink.gso and not gso:
            sink.gso = False
            logger.info("segmentation offload refused: this socket sends one datagram per message",
                        extra={"fd": route.fd})
        counts.syscalls += calls
        counts.datagrams += sent
        for datagram in unsent:  # the socket's buffer is full: its transport queues them, in order
            sink.sendto(datagram, sink.address)
            sent_bytes += len(datagram)
            counts.syscalls += 1
            counts.datagrams += 1
        if failed:
            counts.failed += failed
            logger.debug("packets not sent", extra={"count": failed, "error": error})
        sink.on_sent(sent + len(unsent), sent_bytes)

    def _send_each(self, sink: Sink, packets: list[bytes]) -> None:
        counts = self.counts
        protect, sendto, address = sink.protect, sink.sendto, sink.address
        sent = sent_bytes = 0
        for packet in packets:
            try:
                datagram = protect(packet)
            except (pylibsrtp.Error, ValueError) as exc:  # the key's limit reached; too long
                counts.failed += 1
                logger.debug("packet not protected", extra={"error": str(exc)})
                continue
            sendto(datagram, address)
            sent += 1
            sent_bytes += len(datagram)
        counts.syscalls += sent
        counts.datagrams += sent
        sink.on_sent(sent, sent_bytes)

    def close(self) -> None:
        self.flush()


__all__ = ["NATIVE", "BatchCounts", "NativeRoute", "Outbox", "SendBatch", "Sink"]
