"""The aiortc internals media/aiortc_internals.py relies on: an aiortc upgrade that changes any
of them fails here, loudly, before it silently breaks forwarding. Checked on real peers over
loopback (bytes in = bytes out) and by the source shape of what the shortcuts replace."""

from __future__ import annotations

import asyncio
import datetime
import fractions
import inspect
import logging
import struct
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import AsyncIterator, Callable

import aioice
import aiortc
import aiortc.codecs
import aiortc.rtcrtpreceiver
import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCSessionDescription, clock
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import h264, vpx
from aiortc.codecs.opus import OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcpeerconnection import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket, is_rtcp
from aiortc.rtcrtpsender import RTP_HISTORY_SIZE

from media import aioice_internals, aiortc_internals
from media.ice import ScopedPeerConnection
from sfu.rtp import SRTP_REPLAY_WINDOW

pytestmark = pytest.mark.timeout(60)


def test_pinned_version():
    assert aiortc.__version__.startswith("1.16."), "re-check media/aiortc_internals.py against this aiortc"



def test_the_datagram_path_goes_through_the_tapped_method():
    source = inspect.getsource(RTCDtlsTransport._recv_next)
    assert "await self._handle_rtp_data(data, arrival_time_ms=arrival_time_ms)" in source
    assert "self._rx_srtp.unprotect(data)" in source
    assert "self._tx_srtp.protect(data)" in inspect.getsource(RTCDtlsTransport._send_rtp)


def test_sender_internals():
    assert "self._send_keyframe()" in inspect.getsource(RTCRtpSender._handle_rtcp_packet)
    assert "self.__encoder = get_encoder(codec)" in inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert "await self._next_encoded_frame(codec)" in inspect.getsource(RTCRtpSender._run_rtp)
    sr = inspect.getsource(RTCRtpSender._run_rtcp)
    for name in ("__ntp_timestamp", "__rtp_timestamp", "__packet_count", "__octet_count"):
        assert f"self.{name}" in sr


def test_receiver_internals():
    source = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__remote_streams[packet.ssrc].add(packet)" in source
    assert "self.__nack_generator.add(packet)" in source
    assert "self.__decoder_queue.put((codec, encoded_frame))" in source
    assert "self.__decoder_queue" in inspect.getsource(RTCRtpReceiver.receive)
    assert "decoder = get_decoder(codec)" in inspect.getsource(aiortc.rtcrtpreceiver.decoder_worker)


def test_transceiver_matching_by_mid():
    source = inspect.getsource(RTCPeerConnection.setRemoteDescription)
    assert "t.mid in [None, media.rtp.muxId]" in source
    assert "transceiver._preferred_codecs" in source


async def test_objects_have_the_attributes_used():
    pc = ScopedPeerConnection()
    try:
        t = pc.addTransceiver("video", direction="sendonly")
        receiver, sender = t.receiver, t.sender
        codecs, rtx = aiortc_internals.receiver_tables(receiver)
        assert codecs == {} and rtx == {}
        assert aiortc_internals.feed_receiver(receiver, 1, 10, 0, 90000) is None
        assert aiortc_internals.feed_receiver(receiver, 1, 13, 0, 90000) == [11, 12]
        leg = SimpleNamespace(sr_packets=0, sr_octets=0, sr_timestamp=0, sr_ntp=0)
        aiortc_internals.report_from(sender, leg)  # the sender's reports are the leg's counts from now on
        leg.sr_packets, leg.sr_octets, leg.sr_timestamp, leg.sr_ntp = 1, 100, 1234, 5 << 32
        assert aiortc_internals.sender_report_counts(sender) == (1, 100, 1234)
        assert isinstance(sender, RTCRtpSender)
        assert sender._RTCRtpSender__ntp_timestamp == 5 << 32  # type: ignore[attr-defined]
        again = SimpleNamespace(sr_packets=0, sr_octets=0, sr_timestamp=0, sr_ntp=0)
        aiortc_internals.report_from(sender, again)  # a reused sender: its counts never go back
        assert aiortc_internals.sender_report_counts(sender) == (1, 100, 1234)
        assert aiortc_internals.sender_rtx_payload_type(sender) is None and not aiortc_internals.sender_started(sender)
        decodes = []
        aiortc_internals.count_decodes(receiver, lambda: decodes.append(1))
        receiver._RTCRtpReceiver__decoder_queue.put(("codec", "frame"))  # type: ignore[attr-defined]
        assert decodes == [1]
        aiortc_internals.bind_transceiver(t, "7", 3)
        assert t.mid == "7" and t._get_mline_index() == 3
        transport = receiver.transport

        async def ignore(data: bytes, arrival_time_ms: int) -> None:
            pass

        assert aiortc_internals.tap_transport(transport, ignore) and not aiortc_internals.tap_transport(
            transport, ignore)
        with pytest.raises(ConnectionError):
            await aiortc_internals.send_rtp(transport, b"\x80" * 12)
    finally:
        await pc.close()


def test_the_send_path_send_rtp_now_shortcuts():
    """send_rtp_now does what _send_rtp -> RTCIceTransport._send -> Connection.sendto ->
    StunProtocol.send_data do, synchronously: each of them must still be just that (aioice's
    half: tests/media/test_aioice_internals.py)."""
    assert "self._tx_srtp.protect(data)" in inspect.getsource(RTCDtlsTransport._send_rtp)
    assert "await self.transport._send(data)" in inspect.getsource(RTCDtlsTransport._send_rtp)
    assert "self.__tx_bytes += len(data)" in inspect.getsource(RTCDtlsTransport._send_rtp)
    assert "self._send = self._connection.send" in inspect.getsource(RTCIceTransport)


async def test_send_rtp_now_refuses_when_not_connected():
    pc = ScopedPeerConnection()
    try:
        t = pc.addTransceiver("video", direction="sendonly")
        with pytest.raises(ConnectionError):
            aiortc_internals.send_rtp_now(t.sender.transport, b"\x80" * 12)
        with pytest.raises(ConnectionError):
            aiortc_internals.RtpWriter(t.sender.transport)(b"\x80" * 12)
    finally:
        await pc.close()


def test_the_receive_path_tap_transport_shortcuts():
    """tap_transport takes connected SRTP datagrams at aioice's Connection.data_received
    (which otherwise only queues them for RTCDtlsTransport._recv_next; aioice's half:
    tests/media/test_aioice_internals.py)."""
    recv = inspect.getsource(RTCDtlsTransport._recv_next)
    assert "data = await self.transport._recv()" in recv
    assert "elif first_byte > 127 and first_byte < 192 and self._rx_srtp:" in recv
    assert "self.__rx_bytes += len(data)" in recv
    assert "self._connection = gatherer._connection" in inspect.getsource(RTCIceTransport)


def test_ntp_now_is_aiortcs_clock():
    for unix_ns in (0, 1_764_000_000_123_456_789, 1_764_000_000_999_999_999, 1_764_000_001_000_000_000):
        seconds, ns = divmod(unix_ns, 1_000_000_000)
        dt = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).replace(microsecond=ns // 1000)
        assert aiortc_internals.ntp_from_unix_ns(unix_ns) == clock.datetime_to_ntp(dt)
    before, now, after = clock.current_ntp_time(), aiortc_internals.ntp_now(), clock.current_ntp_time()
    assert before <= now <= after


async def test_rtp_writer_sends_what_send_rtp_now_sends():
    """RtpWriter: the same protected bytes to the nominated pair's address and the same transport
    counters as send_rtp_now, re-resolving the pair when it changes; refuses when not connected.
    On the stand-ins the in-process benchmark uses."""
    sent = []

    class Udp:
        def __init__(self, name):
            self.name = name

        def sendto(self, data, addr):
            sent.append((self.name, data, addr))

    def pair(name, addr):
        return SimpleNamespace(protocol=SimpleNamespace(transport=Udp(name)), remote_addr=addr)

    (tx, rx), = aiortc_internals.srtp_session_pairs()[:1]
    connection = aioice_internals.stand_in_connection(Udp("a"), ("127.0.0.1", 1))  # type: ignore[arg-type]
    nominated = aioice_internals.nominated_pairs(connection)
    transport = aiortc_internals.stand_in_dtls_transport(connection, tx=tx)
    write = aiortc_internals.RtpWriter(transport)
    packets = [b"\x80\x60" + bytes([0, i]) + b"\x00" * 8 + bytes([i]) * 100 for i in range(4)]
    write(packets[0])
    write(packets[1])
    nominated[1] = pair("b", ("127.0.0.1", 2))
    write(packets[2])
    assert [(n, a) for n, _, a in sent] == [("a", ("127.0.0.1", 1)), ("a", ("127.0.0.1", 1)), ("b", ("127.0.0.1", 2))]
    assert [rx.unprotect(d) for _, d, _ in sent] == packets[:3]
    assert transport._RTCDtlsTransport__tx_packets == 3
    assert transport._RTCDtlsTransport__tx_bytes == sum(len(d) for _, d, _ in sent)
    sent.clear()
    aiortc_internals.send_rtp_now(transport, packets[3])
    by_send_rtp_now = sent.pop()
    write(packets[3])  # allow_repeat_tx: the same bytes again
    assert sent.pop() == by_send_rtp_now
    nominated.clear()
    with pytest.raises(ConnectionError):
        write(packets[0])
    transport._state = None
    with pytest.raises(ConnectionError):
        write(packets[0])


# -- real peers ------------------------------------------------------------------------------
def rtp(seq: int, size: int, ssrc: int = 0x1234ABCD) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, ssrc) + bytes([seq % 256]) * size


@dataclass
class Pair:
    """A sends video (a track that never yields: only what a test writes), B receives it."""

    a: ScopedPeerConnection
    b: ScopedPeerConnection
    sender: RTCRtpSender
    receiver: RTCRtpReceiver
    sender_ssrc: int
    received: list[bytes] = field(default_factory=list)

    @property
    def a_transport(self) -> RTCDtlsTransport:
        return self.sender.transport

    @property
    def b_transport(self) -> RTCDtlsTransport:
        return self.receiver.transport

    async def on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        self.received.append(data)

    def on_rtp_now(self, data: bytes, arrival_time_ms: int) -> None:
        self.received.append(data)


def vp8_rtp(pair: Pair, seq: int, size: int) -> bytes:
    """A VP8 packet of A's stream, as negotiated, that B's receiver depacketizes: each its own
    frame (aiortc's router hands B's receiver its SSRC with its payload types only)."""
    codecs, _rtx = aiortc_internals.receiver_tables(pair.receiver)
    (payload_type,) = [pt for pt, codec in codecs.items() if codec.mimeType == "video/VP8"]
    return (struct.pack("!BBHII", 0x80, 0x80 | payload_type, seq, seq * 3000, pair.sender_ssrc)
            + b"\x10" + bytes([seq % 256]) * size)


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def peers(prepare: Callable[[Pair], object]) -> AsyncIterator[Pair]:
    """A connected pair; ``prepare`` runs once both have their transports, before they connect."""
    a, b = ScopedPeerConnection(), ScopedPeerConnection()
    try:
        sender = a.addTransceiver(aiortc_internals.SilentTrack("video", "camera"), direction="sendonly").sender
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        (media,) = aiortc_sdp.SessionDescription.parse(a.localDescription.sdp).media
        pair = Pair(a, b, sender, b.getTransceivers()[0].receiver, media.ssrc[0].ssrc)
        prepare(pair)
        await a.setRemoteDescription(RTCSessionDescription(sdp=b.localDescription.sdp, type="answer"))
        await wait_until(lambda: pair.a_transport.state == "connected" and pair.b_transport.state == "connected")
        yield pair
    finally:
        await a.close()
        await b.close()


async def test_a_tapped_transport_receives_exactly_the_rtp_the_peer_sent():
    """Bytes in = bytes out through both halves of the forwarding path: what A writes with
    RtpWriter, send_rtp_now and aiortc's own send_rtp arrives decrypted at B's tap, as sent."""
    async with peers(lambda p: aiortc_internals.tap_transport(p.b_transport, p.on_rtp, p.on_rtp_now)) as pair:
        write = aiortc_internals.RtpWriter(pair.a_transport)
        sent = [rtp(seq, 50 + seq * 9) for seq in range(1, 61)]
        for packet in sent[:40]:
            write(packet)
        for packet in sent[40:50]:
            aiortc_internals.send_rtp_now(pair.a_transport, packet)
        for packet in sent[50:]:
            await aiortc_internals.send_rtp(pair.a_transport, packet)
        await wait_until(lambda: len(pair.received) >= len(sent))
        assert pair.received == sent
        assert pair.b_transport._RTCDtlsTransport__rx_packets >= len(sent)  # type: ignore[attr-defined]
        connection = aiortc_internals.ice_connection(pair.b_transport.transport)
        assert getattr(connection.data_received, "__func__", None) is not aioice.Connection.data_received  # direct


async def test_hostile_datagrams_never_end_a_tapped_transports_receiving(caplog):
    """bench.fuzz, udp: the call's media stopped for good after (1) an RTCP-looking datagram
    longer than SRTP's buffer, from anyone (pylibsrtp's ValueError ended aiortc's receive
    task), (2) an RTP-looking one (the same ValueError, out of the direct path: a traceback),
    (3) the peer's own REMB that counts more SSRCs than it holds (aiortc's router: struct.error,
    the receive task ended). Each is dropped; RTP still arrives, nothing is logged as an error."""
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    async with peers(lambda p: aiortc_internals.tap_transport(p.b_transport, p.on_rtp, p.on_rtp_now)) as pair:
        aiortc_internals.send_rtp_now(pair.a_transport, rtp(1, 100))
        await wait_until(lambda: len(pair.received) == 1)
        pair_a = aioice_internals.nominated_pairs(aiortc_internals.ice_connection(pair.a_transport.transport))[1]
        sendto, addr = aioice_internals.pair_destination(pair_a)
        too_long = aioice_internals.MAX_MEDIA_DATAGRAM_BYTES + 1
        sendto(bytes([0x80, 200]) + bytes(too_long - 2), addr)  # SRTCP-looking
        sendto(bytes([0x80, 96]) + bytes(too_long - 2), addr)  # SRTP-looking
        remb = struct.pack("!BBHII", 0x8F, 206, 5, pair.sender_ssrc, 0) + b"REMB" + bytes([255, 1, 2, 3]) + \
            struct.pack("!I", pair.sender_ssrc)
        await aiortc_internals.send_rtp(pair.a_transport, remb)
        await asyncio.sleep(0.3)
        for seq in range(2, 12):
            aiortc_internals.send_rtp_now(pair.a_transport, rtp(seq, 100))
        await wait_until(lambda: len(pair.received) == 11)
        assert pair.b_transport.state == "connected"
        assert pair.b.network.datagrams.too_long == 2
        # The limits these rest on: pylibsrtp's buffer, aiortc's RTCP path, its replay window.
        assert len(pair.b_transport._rx_srtp._cdata) == aioice_internals.MAX_MEDIA_DATAGRAM_BYTES
    assert "await self._handle_rtcp_data(data)" in inspect.getsource(RTCDtlsTransport._recv_next)
    assert f"tx_policy.window_size = {SRTP_REPLAY_WINDOW}" in inspect.getsource(RTCDtlsTransport._setup_srtp)
    asyncio.get_running_loop().set_exception_handler(None)
    assert not errors, errors
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]


async def test_a_tap_without_a_plain_handler_runs_the_coroutine():
    async with peers(lambda p: aiortc_internals.tap_transport(p.b_transport, p.on_rtp)) as pair:
        sent = [rtp(seq, 300) for seq in range(1, 11)]
        for packet in sent:
            aiortc_internals.send_rtp_now(pair.a_transport, packet)
        await wait_until(lambda: len(pair.received) >= len(sent))
        assert pair.received == sent


async def test_aiortcs_own_receive_path_hands_over_exactly_the_rtp_sent():
    """handle_rtp_data: aiortc's queue and DTLS coroutine, then our handler, bytes unchanged."""
    async with peers(lambda p: aiortc_internals.handle_rtp_data(p.b_transport, p.on_rtp)) as pair:
        sent = [rtp(seq, 120) for seq in range(1, 21)]
        for packet in sent:
            await aiortc_internals.send_rtp(pair.a_transport, packet)
        await wait_until(lambda: len(pair.received) >= len(sent))
        assert pair.received == sent


async def test_watched_traffic_is_the_bytes_sent_and_aiortc_still_handles_it():
    """watch_sent_rtp (A) and watch_received_rtp (B) see exactly the RTP sent, and aiortc still
    handles it afterwards: its router hands each packet to B's receiver (watch_routed_rtp)."""
    sent_seen: list[bytes] = []
    received_seen: list[bytes] = []
    routed: list[int] = []

    def prepare(pair: Pair) -> None:
        aiortc_internals.watch_sent_rtp(pair.a_transport, sent_seen.append)
        aiortc_internals.watch_received_rtp(pair.b_transport, received_seen.append)
        aiortc_internals.watch_routed_rtp(pair.receiver, lambda packet: routed.append(packet.sequence_number))

    async with peers(prepare) as pair:
        sent = [vp8_rtp(pair, seq, 40 + seq * 7) for seq in range(1, 31)]
        for packet in sent:
            await aiortc_internals.send_rtp(pair.a_transport, packet)
        await wait_until(lambda: len(routed) >= len(sent))
        assert [d for d in sent_seen if not is_rtcp(d)] == sent  # A's Sender Reports go that way too
        assert received_seen == sent
        assert routed == list(range(1, 31))


async def test_rewritten_rtp_arrives_rewritten_and_rtcp_for_its_ssrc_reaches_the_sender():
    """rewrite_sent_rtp changes what A sends (here its SSRC); route_rtcp_for_ssrc sends the
    peer's PLI for the new SSRC to A's sender; request_keyframe sets the sender's keyframe flag."""
    new_ssrc = 0x5EED1234
    received: list[bytes] = []
    keyframes: list[str] = []

    def new_ssrc_of(data: bytes) -> bytes:
        return data if is_rtcp(data) else data[:8] + struct.pack("!I", new_ssrc) + data[12:]

    def prepare(pair: Pair) -> None:
        aiortc_internals.rewrite_sent_rtp(pair.a_transport, new_ssrc_of)
        aiortc_internals.watch_received_rtp(pair.b_transport, received.append)

    async with peers(prepare) as pair:
        assert aiortc_internals.sender_ssrc(pair.sender) == pair.sender_ssrc
        sent = [vp8_rtp(pair, seq, 100) for seq in range(1, 11)]
        for packet in sent:
            await aiortc_internals.send_rtp(pair.a_transport, packet)
        await wait_until(lambda: len(received) >= len(sent))
        assert received == [new_ssrc_of(packet) for packet in sent]

        assert not pair.sender._RTCRtpSender__force_keyframe  # type: ignore[attr-defined]
        aiortc_internals.request_keyframe(pair.sender)
        assert pair.sender._RTCRtpSender__force_keyframe  # type: ignore[attr-defined]

        aiortc_internals.route_keyframe_requests(pair.sender, lambda: keyframes.append("kf"))
        aiortc_internals.route_rtcp_for_ssrc(pair.a_transport, pair.sender, new_ssrc)
        await aiortc_internals.send_pli(pair.receiver, new_ssrc)
        await wait_until(lambda: bool(keyframes))
        assert keyframes == ["kf"]


async def test_an_intercepted_sender_gets_the_peers_nack_and_keyframe_requests():
    nacks: list[list[int]] = []
    keyframes: list[str] = []

    async def on_nack(lost: list[int]) -> None:
        nacks.append(lost)

    def prepare(pair: Pair) -> None:
        aiortc_internals.intercept_sender_rtcp(pair.sender, on_nack, keyframes.append)

    async with peers(prepare) as pair:
        await aiortc_internals.send_nack(pair.receiver, pair.sender_ssrc, [7, 9, 300])
        await aiortc_internals.send_pli(pair.receiver, pair.sender_ssrc)
        await wait_until(lambda: bool(nacks) and bool(keyframes))
        assert nacks == [[7, 9, 300]] and keyframes == ["pli"]


async def test_remb_goes_from_a_receiver_to_the_peers_sender_and_to_the_sfu_handler():
    """``send_remb`` (the SFU's REMB to a publisher) reaches the peer's sender, where
    ``watch_sender_rtcp`` sees it; an intercepted sender hands it to ``on_remb`` instead of
    an encoder."""
    seen: list[tuple[int, list[int]]] = []
    rembs: list[int] = []

    async def on_nack(lost: list[int]) -> None:
        return None

    def watch(packet: object) -> None:
        remb = aiortc_internals.remb_of(packet)
        if remb is not None:
            seen.append(remb)

    def prepare(pair: Pair) -> None:
        aiortc_internals.intercept_sender_rtcp(pair.sender, on_nack, lambda kind: None, rembs.append)
        aiortc_internals.watch_sender_rtcp(pair.sender, watch)  # the outer wrapper: sees it first

    async with peers(prepare) as pair:
        await aiortc_internals.send_remb(pair.receiver, 123_456, [pair.sender_ssrc])
        await wait_until(lambda: bool(rembs))
        assert rembs[0] == pytest.approx(123_456, rel=1e-3)
        assert seen and seen[0][1] == [pair.sender_ssrc]


async def test_the_receiver_fed_by_hand_nacks_what_went_missing():
    async with peers(lambda p: None) as pair:
        receiver = pair.receiver
        assert aiortc_internals.feed_receiver(receiver, 5, 100, 0, 90000) is None
        assert aiortc_internals.feed_receiver(receiver, 5, 104, 3000, 90000) == [101, 102, 103]
        aiortc_internals.reset_nack_generator(receiver)
        assert aiortc_internals.feed_receiver(receiver, 6, 9000, 0, 90000) is None
        aiortc_internals.feed_receiver_rtx(receiver, 8, 1, 0, 90000)
        assert aiortc_internals.sender_started(pair.sender)
        codecs, _rtx = aiortc_internals.receiver_tables(receiver)
        assert "video/VP8" in [c.mimeType for c in codecs.values()]


async def test_a_receiver_reports_on_a_bounded_number_of_ssrcs():
    """Each SSRC fed is a block of the receiver's next report; past about 57, libsrtp refused
    the report and aiortc's RTCP task died (issue 17). The oldest are forgotten."""
    async with peers(lambda p: None) as pair:
        receiver = pair.receiver
        streams = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        for ssrc in range(1000, 1080):
            aiortc_internals.feed_receiver(receiver, ssrc, 1, 0, 90000)
            aiortc_internals.feed_receiver_rtx(receiver, ssrc + 5000, 1, 0, 90000)
        assert len(streams) == aiortc_internals.MAX_RECEIVER_STREAMS
        assert 1079 in streams and 6079 in streams
        aiortc_internals.forget_receiver_stream(receiver, 1079)
        assert 1079 not in streams
        assert "for ssrc, stream in self.__remote_streams.items():" in inspect.getsource(RTCRtpReceiver._run_rtcp)


def test_the_close_release_replaces():
    """release_peer_connection does what RTCPeerConnection.close does when one of its awaits
    never ends: a receiver's stop waits for its RTCP task, which an exception other than
    ConnectionError ends without saying so."""
    close = inspect.getsource(RTCPeerConnection.close)
    for step in ("await self.__isClosed", "await transceiver.stop()", "await self.__sctp.stop()",
                 "await transceiver.receiver.transport.stop()", "await transceiver.receiver.transport.transport.stop()",
                 "self.remove_all_listeners()"):
        assert step in close, step
    assert "await self.__rtcp_exited.wait()" in inspect.getsource(RTCRtpReceiver.stop)
    assert "except ConnectionError:" in inspect.getsource(RTCRtpReceiver._send_rtcp)


async def a_receiver_whose_rtcp_task_died(pair: Pair) -> None:
    """As in issue 17: sending a receiver report raises (libsrtp: "packet is too long"), which
    ends the receiver's RTCP task without setting what its stop() waits for."""
    receiver = pair.receiver
    send = receiver.transport._send_rtp

    async def refuse_reports(data: bytes) -> None:
        if data[1] == 201:
            raise RuntimeError("packet is too long")
        await send(data)

    receiver.transport._send_rtp = refuse_reports  # type: ignore[method-assign]
    aiortc_internals.feed_receiver(receiver, pair.sender_ssrc, 1, 0, 90000)  # something to report on
    await wait_until(receiver._RTCRtpReceiver__rtcp_task.done, timeout=5)  # type: ignore[attr-defined]


async def test_release_frees_a_peer_connection_whose_close_hangs():
    async with peers(lambda p: None) as pair:
        pc, dtls = pair.b, pair.receiver.transport
        await a_receiver_whose_rtcp_task_died(pair)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pc.close(), 2)
        sockets = [p.transport for p in aiortc_internals.ice_connection(dtls.transport)._protocols]
        await asyncio.wait_for(aiortc_internals.release_peer_connection(pc, 0.5), 3)
        assert sockets and all(s.is_closing() for s in sockets)
        assert dtls.state == "closed" and dtls.transport.state == "closed"
        await asyncio.wait_for(pc.close(), 1)  # settled: a later close returns at once


async def test_the_hooked_peer_connection_hands_over_each_ice_connection():
    created: list[aioice.Connection] = []

    class Recording(aiortc_internals.IceHookedPeerConnection):
        def ice_connection_created(self, connection: aioice.Connection) -> None:
            created.append(connection)

    pc = Recording()
    try:
        pc.createDataChannel("x")
        assert created == [aiortc_internals.ice_connection(pc.sctp.transport.transport)]  # type: ignore[union-attr]
        assert created[0] is pc.sctp.transport.transport.iceGatherer._connection  # type: ignore[union-attr]
    finally:
        await pc.close()


def test_aiortc_still_creates_transports_through_the_hooked_method() -> None:
    # IceHookedPeerConnection overrides this name-mangled method; if aiortc renames it, fail loudly.
    assert hasattr(RTCPeerConnection, "_RTCPeerConnection__createDtlsTransport")


async def test_a_replaced_encoder_is_the_senders():
    pc = ScopedPeerConnection()
    try:
        sender = pc.addTransceiver("audio", direction="sendonly").sender
        assert aiortc_internals.sender_encoder(sender) is None
        aiortc_internals.check_encoder_replaceable(sender)
        encoder = OpusEncoder()
        aiortc_internals.replace_sender_encoder(sender, encoder)
        assert aiortc_internals.sender_encoder(sender) is encoder
        with pytest.raises(RuntimeError, match="already has an encoder"):
            aiortc_internals.replace_sender_encoder(sender, encoder)
    finally:
        await pc.close()


def test_null_decoders_decode_nothing():
    original = aiortc.rtcrtpreceiver.get_decoder
    try:
        aiortc_internals.use_null_decoders()
        codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
        assert aiortc.rtcrtpreceiver.get_decoder(codec).decode(JitterFrame(data=b"\x10" * 10, timestamp=0)) == []
    finally:
        aiortc.rtcrtpreceiver.get_decoder = original
    assert aiortc.rtcrtpreceiver.get_decoder is original


def test_red_is_registered_once_after_aiortcs_audio_codecs():
    aiortc_internals.register_red_codec()  # again: idempotent
    audio = aiortc.codecs.CODECS["audio"]
    reds = [c for c in audio if aiortc_internals.is_red(c)]
    assert len(reds) == 1 and audio[-1] is reds[0] and audio[0].mimeType == "audio/opus"
    assert reds[0].payloadType == aiortc_internals.RED_PAYLOAD_TYPE
    assert aiortc_internals.red_capability() in RTCRtpSender.getCapabilities("audio").codecs
    assert aiortc_internals.red_payload_type_usable(63) and aiortc_internals.red_payload_type_usable(120)
    assert not aiortc_internals.red_payload_type_usable(35)


def test_an_aiortc_receiver_decodes_reds_primary_with_opus():
    from av import AudioFrame
    from media import red

    frame = AudioFrame(format="s16", layout="stereo", samples=960)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate = 48000
    frame.pts = 0
    frame.time_base = fractions.Fraction(1, 48000)
    (opus_frame,), _ = OpusEncoder().encode(frame)
    codec = RTCRtpCodecParameters(mimeType="audio/red", clockRate=48000, channels=2, payloadType=63)
    decoder = aiortc.rtcrtpreceiver.get_decoder(codec)
    payload = red.build([red.RedBlock(111, 960, b"old"), red.RedBlock(111, 0, opus_frame)])
    decoded = decoder.decode(JitterFrame(data=payload, timestamp=960))
    assert len(decoded) == 1 and isinstance(decoded[0], AudioFrame) and decoded[0].samples == 960
    assert decoder.decode(JitterFrame(data=b"\xff\x00", timestamp=1920)) == []  # malformed: nothing


def test_codecs_compatible_is_aiortcs_rule():
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    assert aiortc_internals.codecs_compatible(vp8, RTCRtpCodecParameters(mimeType="video/vp8", clockRate=90000,
                                                                         payloadType=120))
    assert not aiortc_internals.codecs_compatible(vp8, RTCRtpCodecParameters(mimeType="video/H264",
                                                                             clockRate=90000, payloadType=96))


async def test_routed_keyframe_requests_reach_the_callback():
    """route_keyframe_requests: the peer's PLI and FIR reach the callback, not the encoder flag."""
    requests: list[str] = []
    async with peers(lambda p: aiortc_internals.route_keyframe_requests(p.sender, lambda: requests.append("kf"))
                     ) as pair:
        await aiortc_internals.send_pli(pair.receiver, pair.sender_ssrc)
        await wait_until(lambda: bool(requests))
        assert requests == ["kf"]
        assert not pair.sender._RTCRtpSender__force_keyframe  # type: ignore[attr-defined]


async def test_track_and_stream_ids_are_the_msid():
    pc = ScopedPeerConnection()
    try:
        track = aiortc_internals.SilentTrack("audio", "stethoscope")
        assert track.id == "stethoscope"
        sender = pc.addTransceiver(track, direction="sendonly").sender
        aiortc_internals.set_stream_id(sender, "cabin-12")
        other = aiortc_internals.SilentTrack("video", "x")
        aiortc_internals.set_track_id(other, "otoscope")
        pc.addTransceiver(other, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        msids = [m.msid for m in aiortc_sdp.SessionDescription.parse(pc.localDescription.sdp).media]
        assert msids[0] == "cabin-12 stethoscope" and msids[1] is not None and msids[1].endswith(" otoscope")
    finally:
        await pc.close()


def test_h264_nal_units_are_split_as_aiortcs_packetizer_splits_them():
    sps, pps, idr = b"\x67\x42\xe0\x1f\xaa", b"\x68\xce\x3c\x80", b"\x65\x88" + bytes(range(1, 200))
    access_unit = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x01" + pps + b"\x00\x00\x00\x01" + idr
    assert aiortc_internals.split_h264_nal_units(access_unit) == [sps, pps, idr]
    assert aiortc_internals.split_h264_nal_units(b"no start code") == []


def test_default_video_bitrate_is_what_new_encoders_start_at():
    saved = vpx.DEFAULT_BITRATE, h264.DEFAULT_BITRATE
    try:
        aiortc_internals.set_default_video_bitrate(1_200_000)
        assert (vpx.DEFAULT_BITRATE, h264.DEFAULT_BITRATE) == (1_200_000, 1_200_000)
        assert vpx.Vp8Encoder().target_bitrate == 1_200_000
        aiortc_internals.set_default_video_bitrate(10_000_000)
        assert (vpx.DEFAULT_BITRATE, h264.DEFAULT_BITRATE) == (vpx.MAX_BITRATE, h264.MAX_BITRATE)
    finally:
        vpx.DEFAULT_BITRATE, h264.DEFAULT_BITRATE = saved


# -- the device agent's uplink (devices/agent_uplink.py) ------------------------------------
def test_the_agents_uplink_internals():
    assert "if not self._enabled:" in inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert "await self.transport._send_rtp(packet_bytes)" in inspect.getsource(RTCRtpSender._retransmit)
    assert "await self._retransmit(seq)" in inspect.getsource(RTCRtpSender._handle_rtcp_packet)
    for encoder in (vpx.Vp8Encoder(), h264.H264Encoder()):
        assert any(hasattr(encoder, name) for name in ("_Vp8Encoder__target_bitrate", "_H264Encoder__target_bitrate"))


async def test_the_agents_encoder_targets_go_below_aiortcs_clamp_and_senders_pause():
    pc = ScopedPeerConnection()
    try:
        sender = pc.addTransceiver("video", direction="sendonly").sender
        assert not aiortc_internals.set_encoder_bitrate(sender, 100_000)  # no encoder yet
        encoder = vpx.Vp8Encoder()
        aiortc_internals.replace_sender_encoder(sender, encoder)
        assert aiortc_internals.set_encoder_bitrate(sender, 100_000)
        assert encoder.target_bitrate == 100_000 < vpx.MIN_BITRATE
        aiortc_internals.set_sender_paused(sender, True)
        assert sender._enabled is False
        aiortc_internals.set_sender_paused(sender, False)
        assert sender._enabled is True and sender._RTCRtpSender__force_keyframe is True
    finally:
        await pc.close()


async def test_an_agent_sender_gets_remb_paces_its_rtp_and_flags_its_retransmissions():
    rembs: list[int] = []
    paced: list[tuple[bytes, bool]] = []

    def prepare(pair: Pair) -> None:
        aiortc_internals.intercept_remb(pair.sender, rembs.append)

        def enqueue(data: bytes, retransmission: bool, send: aiortc_internals.PacedSend) -> None:
            paced.append((data, retransmission))
            asyncio.ensure_future(send(data))

        aiortc_internals.pace_sent_rtp(pair.a_transport, pair.sender, enqueue)

    async with peers(prepare) as pair:
        await aiortc_internals.send_remb(pair.receiver, 77_000, [pair.sender_ssrc])
        await wait_until(lambda: bool(rembs))
        assert rembs[0] == pytest.approx(77_000, rel=1e-3)
        assert isinstance(aiortc_internals.sender_abs_send_time_id(pair.sender), int)
        # What the sender sends goes through the pacer; a NACK's resend is flagged.
        history = pair.sender._RTCRtpSender__rtp_history  # type: ignore[attr-defined]
        history[100 % RTP_HISTORY_SIZE] = RtpPacket.parse(rtp(100, 200, ssrc=pair.sender_ssrc))
        await pair.sender._retransmit(100)
        assert paced and paced[-1][1] is True
        # RTCP (its sender reports) is not paced.
        assert not any(is_rtcp(data) for data, _ in paced)
