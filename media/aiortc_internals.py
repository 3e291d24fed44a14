"""Every aiortc internal we touch, and nothing else.

aiortc 1.16 is an endpoint library: it decodes what it receives and encodes what it sends.
The SFU forwards RTP packets instead, and a server scopes its ICE, so we reach inside, per
instance (never by patching classes or modules, but for the benchmarks'
:func:`use_null_decoders` and :func:`set_default_video_bitrate`), in these places:

* ``RTCPeerConnection.__createDtlsTransport``: :class:`IceHookedPeerConnection` hands each
  new aioice connection (``RTCIceTransport._connection``, :func:`ice_connection`) to a
  subclass before gathering starts (``media/ice.py`` scopes it).
* ``RTCDtlsTransport._handle_rtp_data`` (the decrypted RTP datagram, before aiortc's router,
  jitter buffer and decoder): replaced on each SFU transport by :func:`tap_transport` (and
  on a benchmark's player by :func:`handle_rtp_data`). RTCP keeps its normal path, but
  ``_handle_rtcp_data`` is wrapped so that RTCP aiortc cannot route never ends the receive
  task (:func:`guard_rtcp`). Once the
  transport is connected, SRTP datagrams skip aioice's queue and the DTLS receive coroutine:
  aioice's datagram callback unprotects them with the transport's ``_rx_srtp`` and calls the
  tap at once (``_state``, ``__rx_bytes``, ``__rx_packets``).
* Closing: when ``RTCPeerConnection.close`` does not finish (``media/teardown.py``), its
  transceivers, SCTP, DTLS and ICE transports are stopped directly and the aioice sockets
  closed (:func:`release_peer_connection`).
* ``RTCRtpReceiver``'s private statistics and NACK generator: fed by
  :func:`feed_receiver_packet` so its receiver reports and NACKs upstream go on;
  ``_send_rtcp_nack`` / ``_send_rtcp_pli`` send them. Its codec and RTX tables are read by
  :func:`receiver_tables`. Its decoder queue is replaced by one that counts what would be
  decoded (:func:`count_decodes`): the SFU never puts anything there, and the transcode
  counter proves it.
* ``RTCRtpSender``: its ``_handle_rtcp_packet`` is wrapped per instance so the SFU answers
  NACKs from its own history and turns PLI/FIR into a request upstream
  (:func:`intercept_sender_rtcp`); its private Sender Report counters are read from what
  the SFU counts where it sends (:func:`report_from`: a subclass of the sender's class); its
  ``_next_encoded_frame`` is wrapped to count any frame it would encode or pack
  (:func:`count_encodes`); its private ``__encoder`` is set beforehand to use another
  encoder (:func:`replace_sender_encoder`); its track is
  :class:`SilentTrack`, which never yields, so that aiortc's own RTP loop stays idle while
  its RTCP loop sends Sender Reports. A benchmark's sender that packs pre-encoded frames
  takes PLI/FIR itself (``_send_keyframe``, :func:`route_keyframe_requests`).
* A track's and a sender's ids in ``a=msid`` (``MediaStreamTrack._id``,
  ``RTCRtpSender._stream_id``): :func:`set_track_id`, :func:`set_stream_id`.
* ``RTCRtpTransceiver._set_mid`` / ``_set_mline_index``: the SFU creates the transceivers of
  an offer itself, bound to their mids, so that codec preferences apply before
  ``setRemoteDescription`` negotiates codecs (:func:`bind_transceiver`).
* ``RTCDtlsTransport._send_rtp`` (SRTP protect + send): :func:`send_rtp`; on the forwarding
  path :class:`RtpWriter` (and :func:`send_rtp_now`) does the same synchronously, through the
  transport's ``_tx_srtp`` session and aioice's nominated pair (``__tx_bytes``,
  ``__tx_packets``).
* Watching and steering a client peer in tests: ``_handle_rtp_data`` and
  ``RTCRtpReceiver._handle_rtp_packet`` wrapped to see what arrives (:func:`watch_received_rtp`,
  :func:`watch_routed_rtp`), ``_send_rtp`` wrapped to see or rewrite what leaves
  (:func:`watch_sent_rtp`, :func:`rewrite_sent_rtp`); ``RTCRtpSender._ssrc``
  (:func:`sender_ssrc`), ``RTCDtlsTransport._rtp_router.register_sender``
  (:func:`route_rtcp_for_ssrc`), ``_send_keyframe`` (:func:`request_keyframe`);
  ``RTCRtpSender._handle_rtcp_packet`` wrapped to see the feedback a publisher gets
  (:func:`watch_sender_rtcp`, :func:`remb_of`).
* Congestion control in the SFU: the receiver's ``_send_rtcp`` and RTCP SSRC send the REMB
  the SFU computes (:func:`send_remb`); subscribers' REMB reaches the SFU through
  :func:`intercept_sender_rtcp`; the receiver's NACK generator is bypassed
  (``feed_receiver_packet(nack=False)``: ``sfu/nack.py`` decides).
* The device agent's uplink: a sender's REMB goes to the agent instead of its encoder
  (:func:`intercept_remb`); its VP8/H.264 encoder's private ``__target_bitrate`` is set past
  aiortc's clamp (:func:`set_encoder_bitrate`); ``RTCRtpSender._enabled`` pauses it
  (:func:`set_sender_paused`); ``RTCDtlsTransport._send_rtp`` and ``RTCRtpSender._retransmit``
  are wrapped to pace what it sends (:func:`pace_sent_rtp`), with abs-send-time written
  again at the real send (the id in its private header extension map,
  :func:`sender_abs_send_time_id`); its receiver reports give the round trip of each one
  (``__lsr``, ``__lsr_time``: :func:`watch_receiver_reports`).
* ``aiortc.rtcpeerconnection.is_codec_compatible``: :func:`codecs_compatible`;
  ``H264Encoder._split_bitstream``: :func:`split_h264_nal_units` (recording).
* RED (RFC 2198), which aiortc does not know: :func:`register_red_codec` (run when this
  module loads) adds ``audio/red`` to ``aiortc.codecs.CODECS`` so that offers and answers
  negotiate it like any codec, and wraps the ``get_decoder`` of ``aiortc.rtcrtpreceiver`` so
  that an aiortc receiver that negotiated RED decodes the primary block with Opus. These two
  are process-wide (aiortc keeps its codec table and decoder lookup in modules); an aiortc
  *sender* sends RED only with an encoder that builds it (``devices/opus_encoder.py``).

The aioice and libsrtp halves of those paths are in :mod:`media.aioice_internals` and
:mod:`media.pylibsrtp_internals`. Loads only on the aiortc versions
``tests/media/test_aiortc_internals.py`` checked, which fail loudly when an upgrade changes
any of these.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import queue
import struct
import time
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, Optional, Protocol, Sequence

import aioice
import aiortc.codecs
import aiortc.rtcrtpreceiver
import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import h264, vpx
from aiortc.codecs.base import Encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    RtpPacket,
    is_rtcp,
    pack_remb_fci,
    unpack_remb_fci,
)

from media import aioice_internals
from media.eager import run_now
from media.library_versions import VersionRange
from media.pylibsrtp_internals import Protect, Unprotect, native_session, srtp_protector, srtp_unprotector
from media.red import RedError
from media.red import primary as red_primary
from media.send_batch import NATIVE, NativeRoute, Sink

logger = logging.getLogger(__name__)

TESTED = VersionRange("aiortc", at_least="1.16", below="1.17", module=__name__)
TESTED.check_installed()


class IncompatibleAiortcError(RuntimeError):
    """aiortc no longer works the way a hook here expects."""


# -- ICE -----------------------------------------------------------------------------------
def ice_connection(transport: RTCIceTransport) -> aioice.Connection:
    """The aioice connection behind an ICE transport (the gatherer's, shared)."""
    return transport._connection


class IceHookedPeerConnection(RTCPeerConnection):
    """An RTCPeerConnection that hands each aioice connection it creates to
    :meth:`ice_connection_created` before gathering starts (aiortc has no public hook: this
    overrides the name-mangled ``RTCPeerConnection.__createDtlsTransport``)."""

    def ice_connection_created(self, connection: aioice.Connection) -> None:
        """Override: adjust ``connection`` (its gathering, what it accepts)."""

    def _RTCPeerConnection__createDtlsTransport(self) -> RTCDtlsTransport:  # noqa: N802
        create = RTCPeerConnection._RTCPeerConnection__createDtlsTransport  # type: ignore[attr-defined]
        dtls: RTCDtlsTransport = create(self)
        self.ice_connection_created(ice_connection(dtls.transport))
        return dtls


async def release_peer_connection(pc: RTCPeerConnection, step_s: float) -> None:
    """Free what ``pc`` holds when ``RTCPeerConnection.close`` did not finish: its receivers,
    senders and SCTP, then its DTLS transports, then its ICE transports are stopped, each
    phase all at once and given ``step_s`` (what is still running then is cancelled); then
    the ICE connections' sockets are closed whatever happened, its listeners removed, and
    its private ``__isClosed`` future settled, so that any later ``close()`` returns."""
    transceivers = pc.getTransceivers()
    sctp = pc.sctp
    dtls: list[RTCDtlsTransport] = []
    for transport in [t.receiver.transport for t in transceivers] + [t.sender.transport for t in transceivers] + (
            [sctp.transport] if sctp is not None else []):
        if transport is not None and transport not in dtls:
            dtls.append(transport)
    await _within([t.receiver.stop() for t in transceivers] + [t.sender.stop() for t in transceivers]
                  + ([sctp.stop()] if sctp is not None else []), step_s)
    await _within([d.stop() for d in dtls], step_s)
    await _within([d.transport.stop() for d in dtls], step_s)
    for transport in dtls:
        aioice_internals.close_sockets(ice_connection(transport.transport))
    pc.remove_all_listeners()
    # A later close() (anyone's) awaits this future, which the unfinished close never settled.
    closed: asyncio.Future[bool] | None = getattr(pc, "_RTCPeerConnection__isClosed")
    if closed is None:
        closed = asyncio.get_running_loop().create_future()
        setattr(pc, "_RTCPeerConnection__isClosed", closed)
    if not closed.done():
        closed.set_result(True)


async def _within(coros: Sequence[Awaitable[Any]], timeout_s: float) -> None:
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in tasks:
        task.add_done_callback(_quiet)
    for task in pending:
        task.cancel()


def _quiet(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a part that failed to stop is released all the same


# -- the receive path ----------------------------------------------------------------------
RtpTap = Callable[[bytes, int], Awaitable[None]]
"""Called with each decrypted RTP datagram and its arrival time (ms)."""

_TAPPED = "_sfu_tap"
_GUARDED = "_rtcp_guarded"
_MAX_DATAGRAM = aioice_internals.MAX_MEDIA_DATAGRAM_BYTES
_CONNECTED = DtlsState.CONNECTED
_NTP_EPOCH_OFFSET_S = 2208988800
"""Seconds from 1900 (NTP) to 1970 (Unix): aiortc's ``clock.current_ms()`` counts from 1900."""


def tap_transport(transport: RTCDtlsTransport, on_rtp: RtpTap,
                  on_rtp_now: Callable[[bytes, int], None] | None = None) -> bool:
    """Route this transport's decrypted RTP to ``on_rtp`` instead of aiortc's router.
    ``on_rtp_now``, when given, is the same handler as a plain function: the direct receive
    path calls it instead of driving a coroutine per packet. Returns False when it was
    already tapped (idempotent)."""
    if getattr(transport, _TAPPED, None) is not None:
        return False
    setattr(transport, _TAPPED, on_rtp)
    handle_rtp_data(transport, on_rtp)
    guard_rtcp(transport)
    _receive_srtp_directly(transport, on_rtp, on_rtp_now)
    return True


def guard_rtcp(transport: RTCDtlsTransport) -> None:
    """RTCP that aiortc cannot route is dropped instead of ending the transport's receive task.
    aiortc's router lets ``struct.error`` out of a REMB that counts more SSRCs than it holds
    (``unpack_remb_fci``); out of ``_recv_next`` it ended ``RTCDtlsTransport.__run``, and
    with it every packet of the session, for good (bench.fuzz, udp). It is a participant's
    own authenticated RTCP: dropped quietly. Anything else a handler raises is logged (a bug
    of ours), and the transport goes on receiving. Idempotent."""
    if getattr(transport, _GUARDED, False):
        return
    setattr(transport, _GUARDED, True)
    handle = transport._handle_rtcp_data

    async def guarded(data: bytes) -> None:
        try:
            await handle(data)
        except struct.error:
            logger.debug("RTCP aiortc cannot route dropped")
        except Exception:  # noqa: BLE001 - a packet must not end the transport
            logger.exception("RTCP handler failed")

    transport._handle_rtcp_data = guarded  # type: ignore[method-assign]


def handle_rtp_data(transport: RTCDtlsTransport, on_rtp: RtpTap) -> None:
    """Route this transport's decrypted RTP to ``on_rtp`` instead of aiortc's router, on
    aiortc's own receive path (aioice's queue, the DTLS receive coroutine)."""
    transport._handle_rtp_data = on_rtp  # type: ignore[method-assign,assignment]


def _receive_srtp_directly(transport: RTCDtlsTransport, on_rtp: Callable[[bytes, int], Any],
                           on_rtp_now: Callable[[bytes, int], None] | None = None) -> None:
    """SRTP datagrams of a connected transport go from aioice's datagram callback
    (``Connection.data_received``) straight to unprotect and ``on_rtp``, instead of
    through aioice's queue, ``RTCIceTransport._recv`` and ``RTCDtlsTransport._recv_next``
    (a task wake-up and three coroutines per packet). ``on_rtp`` is run synchronously
    and finishes without suspending on the forwarding path; if it ever does suspend, a
    task finishes it. DTLS, RTCP and anything before the handshake completes keep
    aiortc's path (the queue)."""
    pending: set[asyncio.Task[None]] = set()

    def wrap(queued: aioice_internals.DataReceived) -> aioice_internals.DataReceived:
        current: list[Any] = [None]  # the session the unprotect function below was made for
        unprotect: list[Unprotect] = [_never_unprotect]

        def data_received(data: bytes, component: int) -> None:
            srtp = transport._rx_srtp
            if (srtp is None or transport._state is not _CONNECTED or not 11 < len(data) <= _MAX_DATAGRAM
                    or not 127 < data[0] < 192 or is_rtcp(data)):
                queued(data, component)  # the connection's own guard drops datagrams too short or too long
                return
            transport._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
            transport._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
            if current[0] is not srtp:
                current[0], unprotect[0] = srtp, srtp_unprotector(srtp)
            plain = unprotect[0](data)
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

        return data_received

    aioice_internals.take_datagrams(ice_connection(transport.transport), wrap)


def _never_unprotect(data: bytes) -> bytes | None:
    raise AssertionError("unreachable")


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


MAX_RECEIVER_STREAMS = 8
"""SSRCs one receiver keeps statistics for, hence reports on (the oldest is forgotten for a
new one). Each is a block of its receiver report: past about 57, libsrtp refuses to protect
the report ("packet is too long"), aiortc's RTCP task dies with it, and closing the receiver
then waits for that task forever (issue 17)."""


def _new_stream(streams: dict[int, StreamStatistics], ssrc: int, clock_rate: int) -> StreamStatistics:
    while len(streams) >= MAX_RECEIVER_STREAMS:
        del streams[next(iter(streams))]
    stats = streams[ssrc] = StreamStatistics(clock_rate)
    return stats


def forget_receiver_stream(receiver: RTCRtpReceiver, ssrc: int) -> None:
    """Stop reporting on ``ssrc`` (a source the publisher no longer sends)."""
    streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    streams.pop(ssrc, None)


def feed_receiver(receiver: RTCRtpReceiver, ssrc: int, sequence_number: int, timestamp: int,
                  clock_rate: int, *, count_stats: bool = True) -> list[int] | None:
    """Account one media packet to the receiver's statistics (receiver reports) and NACK
    generator; returns the sequence numbers to NACK upstream, if any went missing."""
    return feed_receiver_packet(receiver, _Seen(ssrc, sequence_number, timestamp), clock_rate,
                                count_stats=count_stats)


def feed_receiver_packet(receiver: RTCRtpReceiver, seen: Any, clock_rate: int, *,
                         count_stats: bool = True, nack: bool = True) -> list[int] | None:
    """:func:`feed_receiver` for anything with the ``ssrc``, ``sequence_number`` and
    ``timestamp`` of the media packet (a parsed RTP header: no object made per packet).
    ``nack=False``: statistics only (the SFU decides its NACKs itself: ``sfu/nack.py``)."""
    if count_stats:
        streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        stats = streams.get(seen.ssrc)
        if stats is None:
            stats = _new_stream(streams, seen.ssrc, clock_rate)
        stats.add(seen)
    if not nack:
        return None
    generator = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
    if generator is not None and generator.add(seen):
        return sorted(generator.missing)
    return None


def feed_receiver_rtx(receiver: RTCRtpReceiver, ssrc: int, sequence_number: int, timestamp: int,
                      clock_rate: int) -> None:
    """Account an RTX packet to the statistics of its own (RTX) ssrc, as aiortc does."""
    streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    stats = streams.get(ssrc)
    if stats is None:
        stats = _new_stream(streams, ssrc, clock_rate)
    stats.add(_Seen(ssrc, sequence_number, timestamp))  # type: ignore[arg-type]


async def send_nack(receiver: RTCRtpReceiver, media_ssrc: int, lost: list[int]) -> None:
    await receiver._send_rtcp_nack(media_ssrc, lost)


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    await receiver._send_rtcp_pli(media_ssrc)


async def send_remb(receiver: RTCRtpReceiver, bitrate: int, ssrcs: list[int]) -> None:
    """Send a REMB (RTCP PSFB APP, what ``RTCRtpReceiver._handle_rtp_packet`` sends from its
    own estimator) from the receiver's RTCP SSRC: ``bitrate`` bit/s for the streams ``ssrcs``.
    Nothing before the receiver has its RTCP SSRC (negotiation not applied yet)."""
    rtcp_ssrc: int | None = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
    if rtcp_ssrc is None:
        return
    packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0,
                            fci=pack_remb_fci(int(bitrate), list(ssrcs)))
    await receiver._send_rtcp(packet)


def reset_nack_generator(receiver: RTCRtpReceiver) -> None:
    """Forget the sequence numbers the NACK generator tracks (the publisher's SSRC changed:
    its new numbering is no gap to NACK)."""
    nack = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
    if nack is not None:
        nack.max_seq = None
        nack.missing.clear()


class _CountingQueue(queue.Queue[Any]):
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


def set_default_video_bitrate(bitrate: int) -> None:
    """Every VP8 and H.264 encoder this process makes from now on starts at ``bitrate``
    (capped at each codec's maximum) instead of aiortc's defaults (500 kbit/s, 1 Mbit/s): a
    benchmark's transcoding relay. Process-wide: replaces the ``DEFAULT_BITRATE`` that
    ``aiortc.codecs.vpx`` and ``aiortc.codecs.h264`` read."""
    vpx.DEFAULT_BITRATE = min(bitrate, vpx.MAX_BITRATE)
    h264.DEFAULT_BITRATE = min(bitrate, h264.MAX_BITRATE)


def use_null_decoders() -> None:
    """Every receiver this process starts from now on decodes nothing (a benchmark's player,
    whose CPU is not what is measured). Process-wide: replaces the ``get_decoder`` that
    ``aiortc.rtcrtpreceiver``'s decoder thread looks up."""

    class NullDecoder:
        def decode(self, encoded_frame: Any) -> list[Any]:
            return []

    aiortc.rtcrtpreceiver.get_decoder = lambda codec: NullDecoder()  # type: ignore[assignment,return-value]


# -- SRTP as aiortc sets it up -------------------------------------------------------------
def srtp_session_pairs() -> list[tuple[pylibsrtp.Session, pylibsrtp.Session]]:
    """(outbound, inbound) SRTP sessions sharing a fresh key, one pair for each profile aiortc
    negotiates, with the policy aiortc gives its own (for tests and benches)."""
    pairs = []
    for profile in SRTP_PROFILES:
        key = os.urandom(profile.key_length + profile.salt_length)
        sessions = []
        for ssrc_type in (pylibsrtp.Policy.SSRC_ANY_OUTBOUND, pylibsrtp.Policy.SSRC_ANY_INBOUND):
            policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile.libsrtp_profile)
            policy.allow_repeat_tx = True
            policy.window_size = 1024
            sessions.append(pylibsrtp.Session(policy))
        pairs.append((sessions[0], sessions[1]))
    return pairs


# -- the send path ---------------------------------------------------------------------------
def count_encodes(sender: RTCRtpSender, on_encode: Callable[[], None]) -> None:
    """Call ``on_encode`` for every frame the sender's own RTP loop would encode or pack."""
    original = sender._next_encoded_frame

    async def next_encoded_frame(codec: RTCRtpCodecParameters) -> Any:
        frame = await original(codec)
        if frame is not None:
            on_encode()
        return frame

    sender._next_encoded_frame = next_encoded_frame  # type: ignore[method-assign]


_ENCODER_ATTRIBUTE = "_RTCRtpSender__encoder"


def check_encoder_replaceable(sender: RTCRtpSender) -> None:
    """IncompatibleAiortcError when aiortc's sender no longer creates its encoder lazily
    (``_next_encoded_frame`` calls ``get_encoder(codec)`` only while its private
    ``__encoder`` is None); RuntimeError when this sender already has one."""
    source = inspect.getsource(RTCRtpSender._next_encoded_frame)
    if "if self.__encoder is None" not in source or "get_encoder(" not in source:
        raise IncompatibleAiortcError(
            "RTCRtpSender no longer creates its encoder lazily through __encoder/get_encoder; "
            "update media/aiortc_internals.py for this aiortc version"
        )
    if not hasattr(sender, _ENCODER_ATTRIBUTE):
        raise IncompatibleAiortcError("RTCRtpSender has no private __encoder attribute any more")
    if getattr(sender, _ENCODER_ATTRIBUTE) is not None:
        raise RuntimeError("the sender already has an encoder: install ours before it sends")


def replace_sender_encoder(sender: RTCRtpSender, encoder: Encoder) -> None:
    """Make ``sender`` encode with ``encoder`` instead of the one aiortc would pick (call
    before it sends; that sender alone, no global patch)."""
    check_encoder_replaceable(sender)
    setattr(sender, _ENCODER_ATTRIBUTE, encoder)


def sender_encoder(sender: RTCRtpSender) -> Optional[Encoder]:
    """The encoder a sender currently holds (None until it encodes its first frame)."""
    encoder: Optional[Encoder] = getattr(sender, _ENCODER_ATTRIBUTE, None)
    return encoder


def set_track_id(track: MediaStreamTrack, track_id: str) -> None:
    """Give ``track`` the id aiortc puts in ``a=msid`` (the source label); aiortc makes a
    random one and has no setter (``MediaStreamTrack._id``)."""
    track._id = track_id


def set_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """The stream id aiortc puts in this sender's ``a=msid`` (``RTCRtpSender._stream_id``)."""
    sender._stream_id = stream_id


def route_keyframe_requests(sender: RTCRtpSender, on_keyframe: Callable[[], None]) -> None:
    """PLI/FIR received for this sender call ``on_keyframe`` instead of flagging its own
    encoder (``RTCRtpSender._send_keyframe``): a sender that packs frames it did not encode."""
    sender._send_keyframe = on_keyframe  # type: ignore[method-assign]


def split_h264_nal_units(access_unit: bytes) -> list[bytes]:
    """The NAL units of an Annex-B access unit, split as aiortc's H.264 packetizer splits them
    (``H264Encoder._split_bitstream``)."""
    return list(H264Encoder._split_bitstream(access_unit))


class SilentTrack(MediaStreamTrack):
    """A track that never yields a frame: keeps a sender (and its RTCP) alive while the SFU
    writes its RTP. ``id`` is the source label, which aiortc puts in ``a=msid``."""

    def __init__(self, kind: str, track_id: str) -> None:
        super().__init__()
        self.kind = kind
        set_track_id(self, track_id)
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


def intercept_sender_rtcp(sender: RTCRtpSender, on_nack: NackHandler, on_keyframe: KeyframeHandler,
                          on_remb: Callable[[int], None] | None = None) -> None:
    """NACKs (``on_nack(lost)``), PLI/FIR (``on_keyframe("pli"|"fir")``) and REMB
    (``on_remb(bitrate)``: the subscriber's estimate of its whole transport; aiortc's router
    hands it to each sender whose SSRC it lists) received for this sender go to the SFU;
    receiver reports keep aiortc's handling (statistics)."""
    original = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: Any) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            await on_nack(list(packet.lost))
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            on_keyframe("fir" if packet.fmt == RTCP_PSFB_FIR else "pli")
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            if on_remb is not None:  # no encoder of ours to steer: the SFU passes it upstream
                try:
                    bitrate, _ = unpack_remb_fci(packet.fci)
                except ValueError:
                    return  # another application-layer feedback
                on_remb(bitrate)
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


class ReportCounts(Protocol):
    """What a forwarding leg counts for its sender's reports (``sfu.leg``)."""

    sr_packets: int
    sr_octets: int
    sr_timestamp: int
    sr_ntp: int


def _counted(name: str) -> property:
    def read(sender: Any) -> int:
        return int(getattr(sender._teleconsult_counts, name))

    def write(sender: Any, value: int) -> None:
        setattr(sender._teleconsult_counts, name, value)

    return property(read, write)


class _Counted:
    """Sender Report and stats counters that are a forwarding leg's: the SFU counts each packet
    where it writes it (in C, for ``sfu._fanout``), and aiortc reads those counters once a
    report, instead of the SFU writing four attributes per packet."""

    _RTCRtpSender__packet_count = _counted("sr_packets")
    _RTCRtpSender__octet_count = _counted("sr_octets")
    _RTCRtpSender__rtp_timestamp = _counted("sr_timestamp")
    _RTCRtpSender__ntp_timestamp = _counted("sr_ntp")


class _CountedSender(_Counted, RTCRtpSender):
    pass


class _StandInSender:
    """What this module reads and writes of a started ``RTCRtpSender`` (:func:`stand_in_sender`)."""


class _CountedStandInSender(_Counted, _StandInSender):
    pass


def report_from(sender: RTCRtpSender, counts: ReportCounts) -> None:
    """From now on ``sender``'s Sender Reports and stats carry ``counts``, what it counted so
    far (aiortc's own counters, or an earlier leg's on a reused sender) added to them, so that
    they never go back. Its class becomes a subclass of its own that reads them: aiortc reads
    the name-mangled attributes in ``_run_rtcp`` and ``getStats``."""
    if getattr(sender, "_teleconsult_counts", None) is counts:
        return
    counts.sr_packets += sender._RTCRtpSender__packet_count  # type: ignore[attr-defined]
    counts.sr_octets += sender._RTCRtpSender__octet_count  # type: ignore[attr-defined]
    if sender._RTCRtpSender__ntp_timestamp and not counts.sr_ntp:  # type: ignore[attr-defined]
        counts.sr_ntp = sender._RTCRtpSender__ntp_timestamp  # type: ignore[attr-defined]
        counts.sr_timestamp = sender._RTCRtpSender__rtp_timestamp  # type: ignore[attr-defined]
    sender._teleconsult_counts = counts  # type: ignore[attr-defined]
    if not isinstance(sender, _Counted):
        sender.__class__ = _CountedSender if isinstance(sender, RTCRtpSender) else _CountedStandInSender


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


def send_rtp_now(transport: RTCDtlsTransport, data: bytes) -> None:
    """SRTP-protect and send one RTP packet (not RTCP) at once: what
    ``RTCDtlsTransport._send_rtp`` does, without its four levels of coroutines
    (``_send_rtp`` -> ``RTCIceTransport._send`` -> ``Connection.sendto`` ->
    ``StunProtocol.send_data``, none of which waits for anything). Raises ConnectionError
    when not connected."""
    if transport._state is not _CONNECTED:
        raise ConnectionError("Cannot send encrypted RTP, not connected")
    protected = transport._tx_srtp.protect(data)
    pair = aioice_internals.nominated_pairs(ice_connection(transport.transport)).get(1)
    if pair is None:
        raise ConnectionError("Cannot send data, not connected")
    sendto, addr = aioice_internals.pair_destination(pair)
    sendto(protected, addr)
    transport._RTCDtlsTransport__tx_bytes += len(protected)  # type: ignore[attr-defined]
    transport._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]


class RtpWriter:
    """:func:`send_rtp_now` for one transport, with what it looks up per packet resolved once:
    the transport's SRTP session (protect through libsrtp directly, reusing one length cell,
    instead of ``Session.protect``'s checks and allocation per call) and aioice's nominated
    pair (re-read from the connection's dict, re-resolved when it changes).
    The forwarding hot path: one call per packet and subscriber, or, as an outbox of a
    :class:`media.send_batch.SendBatch` (``batch.add(writer, packet)``, or ``sfu._fanout``
    appending to :attr:`pending` itself), one entry sent at the end of the event-loop turn. Called directly it raises ConnectionError when
    not connected, like :func:`send_rtp_now`; queued packets are checked at the end of the turn
    (:meth:`resolve`): when the transport is no longer connected they are dropped and
    :attr:`on_lost` is told. The bytes sent are the same either way."""

    __slots__ = ("transport", "_session", "_protect", "_nominated", "_pair", "_sendto", "_addr", "_sink",
                 "pending", "on_lost")

    def __init__(self, transport: RTCDtlsTransport) -> None:
        self.transport = transport
        self._session: pylibsrtp.Session | None = None
        self._protect: Protect = _unbound
        self._nominated: dict[int, Any] | None = None
        self._pair: Any = None
        self._sendto: aioice_internals.SendTo = _unbound_sendto
        self._addr: Any = None
        self._sink: Sink | None = None
        self.pending: list[bytes] = []
        """This turn's queued packets (one list for the writer's life: C code appends to it)."""
        self.on_lost: list[Callable[[], None]] = []
        """Called when queued packets were dropped because the transport is no longer connected."""

    def _resolve(self) -> None:
        """Follow the transport's SRTP session and nominated pair (ConnectionError: none)."""
        transport = self.transport
        if transport._state is not _CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        if transport._tx_srtp is not self._session:
            self._session = transport._tx_srtp
            self._protect = srtp_protector(self._session)
            self._sink = None
        nominated = self._nominated
        if nominated is None:
            nominated = self._nominated = aioice_internals.nominated_pairs(ice_connection(transport.transport))
        pair = nominated.get(1)
        if pair is not self._pair:
            if pair is None:
                raise ConnectionError("Cannot send data, not connected")
            self._pair = pair
            self._sendto, self._addr = aioice_internals.pair_destination(pair)
            self._sink = None

    def __call__(self, data: bytes) -> None:
        self._resolve()
        protected = self._protect(data)
        self._sendto(protected, self._addr)
        transport = self.transport
        transport._RTCDtlsTransport__tx_bytes += len(protected)  # type: ignore[attr-defined]
        transport._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]

    def resolve(self) -> Sink:
        """Where this turn's packets go (:class:`media.send_batch.Outbox`); ConnectionError when
        the transport is not connected (any more)."""
        sink = self._sink
        transport = self.transport
        if (sink is None or transport._state is not _CONNECTED or transport._tx_srtp is not self._session
                or self._nominated.get(1) is not self._pair):  # type: ignore[union-attr]
            self._resolve()
            sink = self._sink
            if sink is None:
                sink = self._sink = self._new_sink()
        return sink

    def lost(self) -> None:
        for callback in list(self.on_lost):
            callback()

    def _new_sink(self) -> Sink:
        transport, session, pair = self.transport, self._session, self._pair
        assert session is not None and pair is not None
        native = None
        fd = aioice_internals.pair_socket(pair)
        if fd is not None and NATIVE is not None:
            protect, srtp = native_session(session)
            try:
                address = NATIVE.pack_address(str(self._addr[0]), int(self._addr[1]))
            except ValueError:
                address = None  # not a numeric address: the transport resolves it
            if address is not None:
                native = NativeRoute(fd=fd, protect=protect, session=srtp, address=address)

        def on_sent(datagrams: int, octets: int) -> None:
            transport._RTCDtlsTransport__tx_bytes += octets  # type: ignore[attr-defined]
            transport._RTCDtlsTransport__tx_packets += datagrams  # type: ignore[attr-defined]

        # The sink holds the session: libsrtp's srtp_t lives as long as the sink can use it.
        return Sink(protect=self._protect, sendto=self._sendto, address=self._addr,
                    transport=aioice_internals.pair_transport(pair), on_sent=on_sent, native=native,
                    session=session)


def _unbound(data: bytes) -> bytes:
    raise AssertionError("unreachable")


def _unbound_sendto(data: bytes, addr: Any) -> None:
    raise AssertionError("unreachable")


# -- the agent's uplink (devices/agent_uplink.py) -------------------------------------------
RembHandler = Callable[[int], None]
PacedSend = Callable[[bytes], Awaitable[None]]
PacedEnqueue = Callable[[bytes, bool, PacedSend], None]


def intercept_remb(sender: RTCRtpSender, on_remb: RembHandler) -> None:
    """A REMB received for this sender calls ``on_remb(bits_per_s)`` instead of setting its
    encoder's ``target_bitrate`` (``RTCRtpSender._handle_rtcp_packet``): the agent splits one
    site budget between its sessions. Other RTCP keeps aiortc's handling."""
    original = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if sender._ssrc in ssrcs:
                on_remb(bitrate)
            return
        await original(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


ReportHandler = Callable[[Optional[float], float], None]


def watch_receiver_reports(sender: RTCRtpSender, on_report: ReportHandler) -> None:
    """Each receiver report block about this sender's stream calls ``on_report(rtt_s,
    fraction_lost)``: the round trip of that report alone (``RTCRtpSender`` keeps only a
    smoothed one, which lags seconds behind a queue that drained; None when the report does
    not echo the sender's last Sender Report: its private ``__lsr`` / ``__lsr_time``) and the
    fraction lost (0-1) since the report before. aiortc handles the report as usual after."""
    original = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: Any) -> None:
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc != sender._ssrc:
                    continue
                lsr = getattr(sender, "_RTCRtpSender__lsr", None)
                lsr_time = getattr(sender, "_RTCRtpSender__lsr_time", None)
                rtt = None
                if lsr is not None and lsr_time is not None and report.lsr == lsr and report.dlsr:
                    rtt = max(0.0, time.time() - lsr_time - report.dlsr / 65536)
                on_report(rtt, report.fraction_lost / 256)
        await original(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


def sender_abs_send_time_id(sender: RTCRtpSender) -> Optional[int]:
    """The header extension id this sender writes abs-send-time with (None: not negotiated,
    or not started yet): ``RTCRtpSender.__rtp_header_extensions_map``'s private ids."""
    extensions = getattr(sender, "_RTCRtpSender__rtp_header_extensions_map", None)
    ids = getattr(extensions, "_HeaderExtensionsMap__ids", None)
    value = getattr(ids, "abs_send_time", None)
    return value if isinstance(value, int) and value > 0 else None


_TARGET_ATTRIBUTES = ((vpx.Vp8Encoder, "_Vp8Encoder__target_bitrate"),
                      (H264Encoder, "_H264Encoder__target_bitrate"))


def set_encoder_bitrate(sender: RTCRtpSender, bitrate: int) -> bool:
    """Set the target of the VP8 or H.264 encoder ``sender`` holds, to ``bitrate`` as is:
    aiortc's ``target_bitrate`` setter clamps to 250 kbit/s (VP8) or 500 kbit/s (H.264) at
    least, more than a thin uplink can give a device that is not being examined. The encoder
    applies it from its next frame (aiortc re-creates its codec on a change over 10 %).
    False when the sender holds no such encoder (not started yet, audio)."""
    encoder = sender_encoder(sender)
    for cls, attribute in _TARGET_ATTRIBUTES:
        if isinstance(encoder, cls) and hasattr(encoder, attribute):
            setattr(encoder, attribute, int(bitrate))
            return True
    return False


def set_sender_paused(sender: RTCRtpSender, paused: bool) -> None:
    """Paused, the sender still reads its track but drops each frame before encoding
    (``RTCRtpSender._enabled``, what an inactive direction sets), and sends no RTP; its
    RTCP goes on. Resumed, its next frame is a keyframe."""
    if not paused and not sender._enabled:
        sender._send_keyframe()
    sender._enabled = not paused


def pace_sent_rtp(transport: RTCDtlsTransport, sender: RTCRtpSender, enqueue: PacedEnqueue) -> None:
    """Each RTP packet ``transport`` sends on aiortc's own path (``RTCDtlsTransport._send_rtp``)
    goes to ``enqueue(packet, is_retransmission, send)`` instead, which sends it later with
    ``send`` (SRTP-protect and send). RTCP goes out at once. ``sender``'s retransmissions
    (``RTCRtpSender._retransmit``) are flagged: they call ``_send_rtp`` without suspending,
    so a flag set around them marks exactly their packets."""
    send = transport._send_rtp
    retransmitting = False

    async def paced(data: bytes) -> None:
        if is_rtcp(data):
            await send(data)
        else:
            enqueue(data, retransmitting, send)

    retransmit = sender._retransmit

    async def flagged_retransmit(sequence_number: int) -> None:
        nonlocal retransmitting
        retransmitting = True
        try:
            await retransmit(sequence_number)
        finally:
            retransmitting = False

    transport._send_rtp = paced  # type: ignore[method-assign]
    sender._retransmit = flagged_retransmit  # type: ignore[method-assign]


# -- watching and steering a client peer (tests) -------------------------------------------
def watch_received_rtp(transport: RTCDtlsTransport, on_rtp: Callable[[bytes], None]) -> None:
    """``on_rtp`` sees each decrypted RTP datagram ``transport`` receives on aiortc's own path
    (``RTCDtlsTransport._handle_rtp_data``), before aiortc routes it as usual. Not the
    datagrams a transport tapped by :func:`tap_transport` takes straight from aioice."""
    handle = transport._handle_rtp_data

    async def watched(data: bytes, arrival_time_ms: int) -> None:
        on_rtp(data)
        await handle(data, arrival_time_ms=arrival_time_ms)

    transport._handle_rtp_data = watched  # type: ignore[method-assign]


def watch_routed_rtp(receiver: RTCRtpReceiver, on_packet: Callable[[RtpPacket], None]) -> None:
    """``on_packet`` sees each RTP packet aiortc's router hands to ``receiver``
    (``RTCRtpReceiver._handle_rtp_packet``), before the receiver handles it as usual."""
    handle = receiver._handle_rtp_packet

    async def watched(packet: RtpPacket, arrival_time_ms: int) -> None:
        on_packet(packet)
        await handle(packet, arrival_time_ms=arrival_time_ms)

    receiver._handle_rtp_packet = watched  # type: ignore[method-assign]


def rewrite_sent_rtp(transport: RTCDtlsTransport, rewrite: Callable[[bytes], bytes]) -> None:
    """Each RTP and RTCP packet ``transport`` sends on aiortc's own path
    (``RTCDtlsTransport._send_rtp``: its senders, its receivers' RTCP, :func:`send_rtp`) goes
    out as ``rewrite(packet)``, SRTP-protected after. Not what :func:`send_rtp_now` and
    :class:`RtpWriter` send."""
    send = transport._send_rtp

    async def rewritten(data: bytes) -> None:
        await send(rewrite(data))

    transport._send_rtp = rewritten  # type: ignore[method-assign]


def watch_sent_rtp(transport: RTCDtlsTransport, on_packet: Callable[[bytes], None]) -> None:
    """``on_packet`` sees each RTP and RTCP packet :func:`rewrite_sent_rtp` would, before
    SRTP; it goes out unchanged."""

    def watched(data: bytes) -> bytes:
        on_packet(data)
        return data

    rewrite_sent_rtp(transport, watched)


def watch_sender_rtcp(sender: RTCRtpSender, on_packet: Callable[[Any], None]) -> None:
    """``on_packet`` sees each RTCP packet aiortc's router hands to ``sender`` (NACK, PLI, REMB,
    reports: ``RTCRtpSender._handle_rtcp_packet``), before the sender handles it as usual."""
    handle = sender._handle_rtcp_packet

    async def watched(packet: Any) -> None:
        on_packet(packet)
        await handle(packet)

    sender._handle_rtcp_packet = watched  # type: ignore[method-assign]


def remb_of(packet: Any) -> tuple[int, list[int]] | None:
    """(bitrate, ssrcs) of an RTCP REMB packet; None for any other packet."""
    if not (isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP):
        return None
    try:
        bitrate, ssrcs = unpack_remb_fci(packet.fci)
    except ValueError:
        return None
    return bitrate, list(ssrcs)


def sender_ssrc(sender: RTCRtpSender) -> int:
    """The SSRC of a sender's media stream (``RTCRtpSender._ssrc``; aiortc has no getter)."""
    return sender._ssrc


def route_rtcp_for_ssrc(transport: RTCDtlsTransport, sender: RTCRtpSender, ssrc: int) -> None:
    """RTCP feedback about ``ssrc`` received on ``transport`` (PLI, FIR, NACK) goes to
    ``sender`` too: for a sender whose packets are rewritten to carry ``ssrc``
    (``RtpRouter.register_sender``)."""
    transport._rtp_router.register_sender(sender, ssrc)


def request_keyframe(sender: RTCRtpSender) -> None:
    """Make the sender's next frame a keyframe, as a PLI received for it does
    (``RTCRtpSender._send_keyframe``, or what :func:`route_keyframe_requests` put there)."""
    sender._send_keyframe()


# -- negotiation -----------------------------------------------------------------------------
def codecs_compatible(a: object, b: object) -> bool:
    """aiortc's own rule for two codecs being the same (mime type, clock rate, and for
    H.264 packetization mode and profile)."""
    return bool(is_codec_compatible(a, b))  # type: ignore[arg-type]


# -- stand-ins for in-process benchmarks ---------------------------------------------------
def stand_in_dtls_transport(connection: Any, rx: pylibsrtp.Session | None = None,
                            tx: pylibsrtp.Session | None = None) -> Any:
    """What this module reads and writes of a connected ``RTCDtlsTransport``, with no DTLS
    handshake: SRTP sessions ``rx`` / ``tx``, over ``connection`` (a real or stand-in aioice
    connection, :func:`media.aioice_internals.stand_in_connection`)."""
    transport = SimpleNamespace(transport=SimpleNamespace(_connection=connection), _rx_srtp=rx, _tx_srtp=tx,
                                _state=_CONNECTED, state="connected")
    for name in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets"):
        setattr(transport, "_RTCDtlsTransport__" + name, 0)

    async def no_rtcp_route(data: bytes) -> None:
        """A stand-in has no receivers or senders to route RTCP to (``guard_rtcp`` wraps it)."""

    transport._handle_rtcp_data = no_rtcp_route
    return transport


class _StandInReceiver:

    def __init__(self) -> None:
        setattr(self, "_RTCRtpReceiver__remote_streams", {})
        setattr(self, "_RTCRtpReceiver__nack_generator", NackGenerator())

    async def _send_rtcp_pli(self, media_ssrc: int) -> None:
        return None

    async def _send_rtcp_nack(self, media_ssrc: int, lost: list[int]) -> None:
        return None


def stand_in_receiver() -> Any:
    """What this module reads of an ``RTCRtpReceiver`` (statistics, NACK generator, RTCP
    out, which goes nowhere)."""
    return _StandInReceiver()


def stand_in_sender() -> Any:
    """What this module reads and writes of a started ``RTCRtpSender`` (Sender Report
    counters)."""
    sender = _StandInSender()
    for name, value in (("started", True), ("rtp_timestamp", 0), ("ntp_timestamp", 0), ("octet_count", 0),
                        ("packet_count", 0)):
        setattr(sender, "_RTCRtpSender__" + name, value)
    return sender


# -- RED (RFC 2198) --------------------------------------------------------------------------
RED_MIME_TYPE = "audio/red"
RED_PAYLOAD_TYPE = 63
"""The payload type aiortc offers RED with: Chromium's. aiortc answers with the offer's own
type only within 96-127 and with this one otherwise, so an offer that puts RED at another
type below 96 cannot have it (:func:`red_payload_type_usable`)."""


def is_red(codec: object) -> bool:
    mime = getattr(codec, "mimeType", "")
    return isinstance(mime, str) and mime.lower() == RED_MIME_TYPE


def red_payload_type_usable(payload_type: int | None) -> bool:
    """Whether aiortc answers an offered RED of ``payload_type`` with that same type
    (``find_common_codecs`` keeps an offered dynamic type, 96-127, and its own otherwise)."""
    return payload_type is not None and (96 <= payload_type <= 127 or payload_type == RED_PAYLOAD_TYPE)


def red_capability() -> RTCRtpCodecCapability:
    """RED as aiortc lists it in its audio capabilities (for codec preferences)."""
    for capability in RTCRtpSender.getCapabilities("audio").codecs:
        if is_red(capability):
            return capability
    raise IncompatibleAiortcError("audio/red is not registered with aiortc")


class RedPrimaryDecoder:
    """An aiortc decoder for RED: the primary block of each payload to ``decoder`` (Opus);
    a malformed payload decodes to nothing."""

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder

    def decode(self, encoded_frame: JitterFrame) -> list[Any]:
        try:
            _, data = red_primary(encoded_frame.data)
        except RedError:
            return []
        if not data:
            return []
        result: list[Any] = self.decoder.decode(JitterFrame(data=data, timestamp=encoded_frame.timestamp))
        return result


_OPUS_FOR_RED = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)


def register_red_codec() -> None:
    """Make every aiortc peer of this process negotiate ``audio/red`` (after its other audio
    codecs, so that a peer without codec preferences still sends Opus) and decode its
    primary. Idempotent."""
    codecs = aiortc.codecs.CODECS.get("audio")
    lookup = getattr(aiortc.rtcrtpreceiver, "get_decoder", None)
    if not isinstance(codecs, list) or lookup is None:
        raise IncompatibleAiortcError("aiortc.codecs.CODECS['audio'] or aiortc.rtcrtpreceiver.get_decoder "
                                      "changed; update media/aiortc_internals.py for this aiortc version")
    if any(c.payloadType == RED_PAYLOAD_TYPE and not is_red(c) for c in codecs):
        raise IncompatibleAiortcError(f"aiortc uses payload type {RED_PAYLOAD_TYPE} for another audio codec")
    if not any(is_red(c) for c in codecs):
        codecs.append(RTCRtpCodecParameters(mimeType=RED_MIME_TYPE, clockRate=48000, channels=2,
                                            payloadType=RED_PAYLOAD_TYPE))
    if getattr(lookup, "_red_aware", False):
        return

    def get_decoder(codec: RTCRtpCodecParameters) -> Any:
        if is_red(codec):
            return RedPrimaryDecoder(lookup(_OPUS_FOR_RED))
        return lookup(codec)

    get_decoder._red_aware = True  # type: ignore[attr-defined]
    aiortc.rtcrtpreceiver.get_decoder = get_decoder  # type: ignore[assignment]


register_red_codec()
