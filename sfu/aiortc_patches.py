"""Every aiortc internal the SFU touches, and nothing else.

aiortc 1.16 is an endpoint library: it decodes what it receives and encodes
what it sends. The SFU forwards RTP packets instead, so it reaches inside, per
instance (never by patching classes or modules), in these places:

* ``RTCDtlsTransport._handle_rtp_data`` (the decrypted RTP datagram, before
  aiortc's router, jitter buffer and decoder): replaced on each SFU transport
  by :func:`tap_transport`. RTCP keeps its normal path. Once the transport is
  connected, SRTP datagrams skip aioice's queue and the DTLS receive coroutine:
  aioice's ``Connection.data_received`` unprotects them with the transport's
  ``_rx_srtp`` and calls the tap at once.
* ``RTCRtpReceiver``'s private statistics and NACK generator: fed by
  :func:`feed_receiver` so its receiver reports and NACKs upstream go on;
  ``_send_rtcp_nack`` / ``_send_rtcp_pli`` send them. Its codec and RTX tables
  are read by :func:`receiver_tables`. Its decoder queue is replaced by one
  that counts what would be decoded (:func:`count_decodes`): the SFU never
  puts anything there, and the transcode counter proves it.
* ``RTCRtpSender``: its ``_handle_rtcp_packet`` is wrapped per instance so the
  SFU answers NACKs from its own history and turns PLI/FIR into a request
  upstream (:func:`intercept_sender_rtcp`); its private Sender Report counters
  are advanced with what the SFU sends (:func:`note_sent`); its
  ``_next_encoded_frame`` is wrapped to count any frame it would encode or
  pack (:func:`count_encodes`); its track is :class:`SilentTrack`, which never
  yields, so that aiortc's own RTP loop stays idle while its RTCP loop sends
  Sender Reports.
* ``RTCRtpTransceiver._set_mid`` / ``_set_mline_index``: the SFU creates the
  transceivers of an offer itself, bound to their mids, so that codec
  preferences apply before ``setRemoteDescription`` negotiates codecs
  (:func:`bind_transceiver`).
* ``RTCDtlsTransport._send_rtp`` (SRTP protect + send): :func:`send_rtp`; on the
  forwarding path :func:`send_rtp_now` does the same synchronously, through the
  transport's SRTP session and aioice's nominated pair (``Connection._nominated``,
  ``CandidatePair.protocol.transport`` / ``remote_addr``).

``tests/sfu/test_aiortc_patches.py`` checks each of these on real aiortc
objects, so that an upgrade that changes them fails loudly.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from typing import Any, Awaitable, Callable, Coroutine

import aioice.ice
import pylibsrtp

from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import (RTCP_PSFB_APP, RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket,
                        RtcpRtpfbPacket)
from aiortc import clock
from aiortc.rtp import is_rtcp

logger = logging.getLogger(__name__)

RtpTap = Callable[[bytes, int], Awaitable[None]]
"""Called with each decrypted RTP datagram and its arrival time (ms)."""

_TAPPED = "_sfu_tap"


def tap_transport(transport: RTCDtlsTransport, on_rtp: RtpTap,
                  on_rtp_now: Callable[[bytes, int], None] | None = None) -> bool:
    """Route this transport's decrypted RTP to ``on_rtp`` instead of aiortc's router.
    ``on_rtp_now``, when given, is the same handler as a plain function: the direct receive
    path calls it instead of driving a coroutine per packet. Returns False when it was
    already tapped (idempotent)."""
    if getattr(transport, _TAPPED, None) is not None:
        return False
    setattr(transport, _TAPPED, on_rtp)
    transport._handle_rtp_data = on_rtp  # type: ignore[method-assign,assignment]
    _receive_srtp_directly(transport, on_rtp, on_rtp_now)
    return True


_NTP_EPOCH_OFFSET_S = 2208988800
"""Seconds from 1900 (NTP) to 1970 (Unix): aiortc's ``clock.current_ms()`` counts from 1900."""


def _receive_srtp_directly(transport: RTCDtlsTransport, on_rtp: Callable[[bytes, int], Any],
                           on_rtp_now: Callable[[bytes, int], None] | None = None) -> None:
    """SRTP datagrams of a connected transport go from aioice's datagram callback
    (``Connection.data_received``) straight to unprotect and ``on_rtp``, instead of
    through aioice's queue, ``RTCIceTransport._recv`` and ``RTCDtlsTransport._recv_next``
    (a task wake-up and three coroutines per packet). ``on_rtp`` is run synchronously
    and finishes without suspending on the forwarding path; if it ever does suspend, a
    task finishes it. DTLS, RTCP and anything before the handshake completes keep
    aiortc's path (the queue)."""
    connection = transport.transport._connection
    queued = connection.data_received
    pending: set[asyncio.Task[None]] = set()
    unprotect: list[Any] = [None, None]  # [session, its unprotect function]

    def data_received(data: bytes, component: int) -> None:
        srtp = transport._rx_srtp
        if (srtp is None or transport._state is not _CONNECTED or not 127 < data[0] < 192
                or is_rtcp(data)):
            queued(data, component)
            return
        transport._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
        transport._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
        if unprotect[0] is not srtp:
            unprotect[0], unprotect[1] = srtp, srtp_unprotector(srtp)
        plain = unprotect[1](data)
        if plain is None:
            return
        arrival_ms = int((time.time() + _NTP_EPOCH_OFFSET_S) * 1000)
        if on_rtp_now is None:
            run_now(on_rtp(plain, arrival_ms), pending)
            return
        try:
            on_rtp_now(plain, arrival_ms)
        except Exception:  # noqa: BLE001 - a packet must not break the transport
            logger.exception("RTP handler failed")

    connection.data_received = data_received  # type: ignore[method-assign]
    # aioice tries to parse every datagram as STUN first (an exception per media packet);
    # a first byte of 128-191 is RTP/RTCP, never STUN (whose first two bits are 0).
    for protocol in list(connection._protocols):
        _skip_stun_parse(protocol, data_received)


def _skip_stun_parse(protocol: Any, data_received: Callable[[bytes, int], None]) -> None:
    parse_first = protocol.datagram_received
    if getattr(parse_first, "__func__", None) is not aioice.ice.StunProtocol.datagram_received:
        return  # already wrapped (a test's datagram hook): every datagram keeps going through it
    component = protocol.local_candidate.component

    def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
        if data and 127 < data[0] < 192:
            data_received(data, component)
        else:
            parse_first(data, addr)

    protocol.datagram_received = datagram_received


def run_now(coro: Coroutine[Any, Any, None], pending: set["asyncio.Task[None]"]) -> None:
    """Run ``coro`` up to its first suspension now; if it suspends, a task (kept in
    ``pending`` until done) finishes it. Exceptions are logged, never raised into the
    datagram callback."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return
    except Exception:  # noqa: BLE001 - a packet must not break the transport
        logger.exception("RTP handler failed")
        return
    task = asyncio.ensure_future(_finish(coro, yielded))
    pending.add(task)
    task.add_done_callback(pending.discard)


async def _finish(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Drive a coroutine that suspended on ``yielded`` (a future, or None for a bare yield)
    as a task would."""
    while True:
        if yielded is None:
            await asyncio.sleep(0)
        else:
            yielded._asyncio_future_blocking = False  # taken over, as Task.__step does
            try:
                await yielded
            except BaseException:  # noqa: BLE001 - the coroutine sees it when resumed
                pass
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        except Exception:  # noqa: BLE001
            logger.exception("RTP handler failed")
            return


def header_extension_ids(transport: RTCDtlsTransport) -> Any:
    """aiortc's extension map of a transport (for ``RtpPacket.parse``)."""
    return transport._rtp_header_extensions_map


def route_by_aiortc(transport: RTCDtlsTransport, packet: Any) -> Any:
    """aiortc's own routing decision (SSRC tables built from the SDP, then payload type)."""
    return transport._rtp_router.route_rtp(packet)


def receiver_tables(receiver: RTCRtpReceiver) -> tuple[dict[int, RTCRtpCodecParameters], dict[int, int]]:
    """(payload type -> codec, RTX ssrc -> media ssrc) of a started receiver."""
    codecs: dict[int, RTCRtpCodecParameters] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
    rtx: dict[int, int] = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
    return codecs, rtx


class _Seen:
    """What ``StreamStatistics.add`` and ``NackGenerator.add`` read from a packet."""

    __slots__ = ("sequence_number", "timestamp", "ssrc")

    def __init__(self, ssrc: int, sequence_number: int, timestamp: int) -> None:
        self.ssrc = ssrc
        self.sequence_number = sequence_number
        self.timestamp = timestamp


def feed_receiver(receiver: RTCRtpReceiver, ssrc: int, sequence_number: int, timestamp: int,
                  clock_rate: int, *, count_stats: bool = True) -> list[int] | None:
    """Account one media packet to the receiver's statistics (receiver reports) and NACK
    generator; returns the sequence numbers to NACK upstream, if any went missing."""
    return feed_receiver_packet(receiver, _Seen(ssrc, sequence_number, timestamp), clock_rate,
                                count_stats=count_stats)


def feed_receiver_packet(receiver: RTCRtpReceiver, seen: Any, clock_rate: int, *,
                         count_stats: bool = True) -> list[int] | None:
    """:func:`feed_receiver` for anything with the ``ssrc``, ``sequence_number`` and
    ``timestamp`` of the media packet (a :class:`sfu.rtp.RtpHeader`: no object made per packet)."""
    ssrc = seen.ssrc
    if count_stats:
        streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        stats = streams.get(ssrc)
        if stats is None:
            stats = streams[ssrc] = StreamStatistics(clock_rate)
        stats.add(seen)  # type: ignore[arg-type]
    nack = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
    if nack is not None and nack.add(seen):
        return sorted(nack.missing)
    return None


def feed_receiver_rtx(receiver: RTCRtpReceiver, ssrc: int, sequence_number: int, timestamp: int,
                      clock_rate: int) -> None:
    """Account an RTX packet to the statistics of its own (RTX) ssrc, as aiortc does."""
    streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    stats = streams.get(ssrc)
    if stats is None:
        stats = streams[ssrc] = StreamStatistics(clock_rate)
    stats.add(_Seen(ssrc, sequence_number, timestamp))  # type: ignore[arg-type]


async def send_nack(receiver: RTCRtpReceiver, media_ssrc: int, lost: list[int]) -> None:
    await receiver._send_rtcp_nack(media_ssrc, lost)


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    await receiver._send_rtcp_pli(media_ssrc)


def reset_nack_generator(receiver: RTCRtpReceiver) -> None:
    """Forget the sequence numbers the NACK generator tracks (the publisher's SSRC changed:
    its new numbering is no gap to NACK)."""
    nack = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
    if nack is not None:
        nack.max_seq = None
        nack.missing.clear()


class _CountingQueue(queue.Queue):  # type: ignore[type-arg]
    def __init__(self, on_put: Callable[[], None]) -> None:
        super().__init__()
        self._on_put = on_put

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            self._on_put()
        super().put(item, block, timeout)


def count_decodes(receiver: RTCRtpReceiver, on_decode: Callable[[], None]) -> None:
    """Call ``on_decode`` for every frame the receiver would hand to its decoder.
    Must run before the receiver starts (before the answer is applied)."""
    receiver._RTCRtpReceiver__decoder_queue = _CountingQueue(on_decode)  # type: ignore[attr-defined]


def count_encodes(sender: RTCRtpSender, on_encode: Callable[[], None]) -> None:
    """Call ``on_encode`` for every frame the sender's own RTP loop would encode or pack."""
    original = sender._next_encoded_frame

    async def next_encoded_frame(codec: RTCRtpCodecParameters) -> Any:
        frame = await original(codec)
        if frame is not None:
            on_encode()
        return frame

    sender._next_encoded_frame = next_encoded_frame  # type: ignore[method-assign]


class SilentTrack(MediaStreamTrack):
    """A track that never yields a frame: keeps a sender (and its RTCP) alive while the SFU
    writes its RTP. ``id`` is the source label, which aiortc puts in ``a=msid``."""

    def __init__(self, kind: str, track_id: str) -> None:
        super().__init__()
        self.kind = kind
        self._id = track_id
        self._never: asyncio.Future[None] | None = None

    async def recv(self) -> Any:
        if self._never is None:
            self._never = asyncio.get_running_loop().create_future()
        await self._never
        raise AssertionError("unreachable")

    def stop(self) -> None:
        super().stop()
        if self._never is not None and not self._never.done():
            self._never.cancel()


NackHandler = Callable[[list[int]], Awaitable[None]]
KeyframeHandler = Callable[[str], None]


def intercept_sender_rtcp(sender: RTCRtpSender, on_nack: NackHandler, on_keyframe: KeyframeHandler) -> None:
    """NACKs (``on_nack(lost)``) and PLI/FIR (``on_keyframe("pli"|"fir")``) received for this
    sender go to the SFU; receiver reports and REMB keep aiortc's handling (statistics)."""
    original = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: Any) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            await on_nack(list(packet.lost))
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            on_keyframe("fir" if packet.fmt == RTCP_PSFB_FIR else "pli")
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            return  # REMB: no encoder to steer
        else:
            await original(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


def sender_rtx_payload_type(sender: RTCRtpSender) -> int | None:
    """The RTX payload type a started sender negotiated for its codec (None: no RTX)."""
    value: int | None = sender._RTCRtpSender__rtx_payload_type  # type: ignore[attr-defined]
    return value


def sender_started(sender: RTCRtpSender) -> bool:
    return bool(sender._RTCRtpSender__started)  # type: ignore[attr-defined]


def ntp_now() -> int:
    """``aiortc.clock.current_ntp_time()`` (the same wall clock, to the microsecond, the same
    64-bit value) without making two datetimes and a timedelta: half the cost."""
    return ntp_from_unix_ns(time.time_ns())


def ntp_from_unix_ns(unix_ns: int) -> int:
    """``aiortc.clock.datetime_to_ntp`` of the UTC datetime (microseconds) at ``unix_ns``."""
    seconds, ns = divmod(unix_ns, 1_000_000_000)
    return ((seconds + _NTP_EPOCH_OFFSET_S) << 32) | (((ns // 1000) << 32) // 1_000_000)


def note_sent(sender: RTCRtpSender, timestamp: int, payload_bytes: int) -> None:
    """Advance the sender's Sender Report counters for one packet the SFU sent for it.
    The (NTP time, RTP timestamp) pair moves on the first packet of each frame only: every
    packet of a frame has its timestamp, and reading the wall clock per packet costs."""
    if sender._RTCRtpSender__rtp_timestamp != timestamp:  # type: ignore[attr-defined]
        sender._RTCRtpSender__ntp_timestamp = ntp_now()  # type: ignore[attr-defined]
        sender._RTCRtpSender__rtp_timestamp = timestamp  # type: ignore[attr-defined]
    sender._RTCRtpSender__octet_count += payload_bytes  # type: ignore[attr-defined]
    sender._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]


def sender_report_counts(sender: RTCRtpSender) -> tuple[int, int, int]:
    """(packets, octets, last RTP timestamp) the next Sender Report will carry."""
    return (sender._RTCRtpSender__packet_count, sender._RTCRtpSender__octet_count,  # type: ignore[attr-defined]
            sender._RTCRtpSender__rtp_timestamp)  # type: ignore[attr-defined]


def bind_transceiver(transceiver: RTCRtpTransceiver, mid: str, mline_index: int) -> None:
    """Bind a transceiver made with ``addTransceiver`` to the offer's m-line ``mid`` at
    ``mline_index``, so that ``setRemoteDescription`` uses it (with its codec preferences)."""
    transceiver._set_mid(mid)
    transceiver._set_mline_index(mline_index)


async def send_rtp(transport: RTCDtlsTransport, data: bytes) -> None:
    """SRTP-protect and send one RTP or RTCP packet (raises ConnectionError when closed)."""
    await transport._send_rtp(data)


_CONNECTED = DtlsState.CONNECTED


def send_rtp_now(transport: RTCDtlsTransport, data: bytes) -> None:
    """SRTP-protect and send one RTP packet (not RTCP) at once: what
    ``RTCDtlsTransport._send_rtp`` does, without its four levels of coroutines
    (``_send_rtp`` -> ``RTCIceTransport._send`` -> ``Connection.sendto`` ->
    ``StunProtocol.send_data``, none of which waits for anything). The forwarding hot
    path: one call per packet and subscriber. Raises ConnectionError when not connected."""
    if transport._state is not _CONNECTED:
        raise ConnectionError("Cannot send encrypted RTP, not connected")
    protected = transport._tx_srtp.protect(data)
    pair = transport.transport._connection._nominated.get(1)
    if pair is None:
        raise ConnectionError("Cannot send data, not connected")
    pair.protocol.transport.sendto(protected, pair.remote_addr)
    transport._RTCDtlsTransport__tx_bytes += len(protected)  # type: ignore[attr-defined]
    transport._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]


class RtpWriter:
    """:func:`send_rtp_now` for one transport, with what it looks up per packet resolved once:
    the transport's SRTP session (protect through libsrtp directly, reusing one length cell,
    instead of ``Session.protect``'s checks and allocation per call) and aioice's nominated
    pair (re-read per packet from the connection's dict, re-resolved when it changes).
    The forwarding hot path: one call per packet and subscriber. Raises ConnectionError when
    not connected, like :func:`send_rtp_now`; the bytes sent are the same."""

    __slots__ = ("transport", "_session", "_protect", "_nominated", "_pair", "_sendto", "_addr")

    def __init__(self, transport: RTCDtlsTransport) -> None:
        self.transport = transport
        self._session: Any = None
        self._protect: Callable[[bytes], bytes] = _unbound
        self._nominated: dict[int, Any] | None = None
        self._pair: Any = None
        self._sendto: Callable[[bytes, Any], None] = _unbound_sendto
        self._addr: Any = None

    def __call__(self, data: bytes) -> None:
        transport = self.transport
        if transport._state is not _CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        if transport._tx_srtp is not self._session:
            self._session = transport._tx_srtp
            self._protect = srtp_protector(self._session)
        protected = self._protect(data)
        nominated = self._nominated
        if nominated is None:
            nominated = self._nominated = transport.transport._connection._nominated
        pair = nominated.get(1)
        if pair is not self._pair:
            if pair is None:
                raise ConnectionError("Cannot send data, not connected")
            self._pair = pair
            self._sendto = pair.protocol.transport.sendto
            self._addr = pair.remote_addr
        self._sendto(protected, self._addr)
        transport._RTCDtlsTransport__tx_bytes += len(protected)  # type: ignore[attr-defined]
        transport._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]


def _unbound(data: bytes) -> bytes:
    raise AssertionError("unreachable")


def _unbound_sendto(data: bytes, addr: Any) -> None:
    raise AssertionError("unreachable")


def srtp_protector(session: pylibsrtp.Session) -> Callable[[bytes], bytes]:
    """``session.protect`` without its per-call type check and ``int *`` allocation: the
    same libsrtp call on the session's own buffer (pylibsrtp 1.0's ``Session.__process``),
    the same bytes out, the same errors."""
    ffi, lib = pylibsrtp._binding.ffi, pylibsrtp._binding.lib
    cdata, buffer, srtp = session._cdata, session._buffer, session._srtp
    limit = len(cdata) - pylibsrtp.SRTP_MAX_TRAILER_LEN
    length = ffi.new("int *")
    protect = lib.srtp_protect
    check = pylibsrtp._srtp_assert

    def protect_now(data: bytes) -> bytes:
        n = len(data)
        if n > limit:
            raise ValueError("packet is too long")
        length[0] = n
        buffer[0:n] = data
        rc = protect(srtp[0], cdata, length)
        if rc:
            check(rc)
        return buffer[0:length[0]]

    return protect_now


def srtp_unprotector(session: pylibsrtp.Session) -> Callable[[bytes], bytes | None]:
    """``session.unprotect`` the way :func:`srtp_protector` does ``protect``: the same libsrtp
    call on the session's buffer, the same bytes out; None where ``unprotect`` raises
    ``pylibsrtp.Error`` (authentication, replay), ValueError for a datagram too long, as it."""
    lib = pylibsrtp._binding.lib
    cdata, buffer, srtp = session._cdata, session._buffer, session._srtp
    limit = len(cdata)
    length = pylibsrtp._binding.ffi.new("int *")
    unprotect = lib.srtp_unprotect

    def unprotect_now(data: bytes) -> bytes | None:
        n = len(data)
        if n > limit:
            raise ValueError("packet is too long")
        length[0] = n
        buffer[0:n] = data
        if unprotect(srtp[0], cdata, length):
            return None
        return buffer[0:length[0]]

    return unprotect_now


def transport_connected(transport: RTCDtlsTransport) -> bool:
    return transport.state == "connected"


def rtx_codec(codecs: list[RTCRtpCodecParameters], payload_type: int) -> RTCRtpCodecParameters | None:
    for codec in codecs:
        if is_rtx(codec) and codec.parameters.get("apt") == payload_type:
            return codec
    return None


def now_ms() -> int:
    return clock.current_ms()


def codecs_compatible(a: object, b: object) -> bool:
    """aiortc's own rule for two codecs being the same (mime type, clock rate, and for
    H.264 packetization mode and profile)."""
    from aiortc.rtcpeerconnection import is_codec_compatible

    return bool(is_codec_compatible(a, b))  # type: ignore[arg-type]
