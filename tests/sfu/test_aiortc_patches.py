"""The aiortc internals sfu/aiortc_patches.py relies on: an aiortc upgrade that changes any
of them fails here, loudly, before it silently breaks forwarding."""

from __future__ import annotations

import inspect

import aiortc
import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcpeerconnection import RTCPeerConnection

from media.ice import ScopedPeerConnection
from sfu import aiortc_patches as patches


def test_pinned_version():
    assert aiortc.__version__.startswith("1.16."), "re-check sfu/aiortc_patches.py against this aiortc"


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


def test_transceiver_matching_by_mid():
    source = inspect.getsource(RTCPeerConnection.setRemoteDescription)
    assert "t.mid in [None, media.rtp.muxId]" in source
    assert "transceiver._preferred_codecs" in source


async def test_objects_have_the_attributes_used():
    pc = ScopedPeerConnection()
    try:
        t = pc.addTransceiver("video", direction="sendonly")
        receiver, sender = t.receiver, t.sender
        codecs, rtx = patches.receiver_tables(receiver)
        assert codecs == {} and rtx == {}
        assert patches.feed_receiver(receiver, 1, 10, 0, 90000) is None
        assert patches.feed_receiver(receiver, 1, 13, 0, 90000) == [11, 12]
        patches.note_sent(sender, 1234, 100)
        assert patches.sender_report_counts(sender) == (1, 100, 1234)
        assert patches.sender_rtx_payload_type(sender) is None and not patches.sender_started(sender)
        decodes = []
        patches.count_decodes(receiver, lambda: decodes.append(1))
        receiver._RTCRtpReceiver__decoder_queue.put(("codec", "frame"))
        assert decodes == [1]
        patches.bind_transceiver(t, "7", 3)
        assert t.mid == "7" and t._get_mline_index() == 3
        transport = receiver.transport
        assert patches.tap_transport(transport, patches.send_rtp) and not patches.tap_transport(
            transport, patches.send_rtp)
        with pytest.raises(ConnectionError):
            await patches.send_rtp(transport, b"\x80" * 12)
    finally:
        await pc.close()


def test_the_send_path_send_rtp_now_shortcuts():
    """send_rtp_now does what _send_rtp -> RTCIceTransport._send -> Connection.sendto ->
    StunProtocol.send_data do, synchronously: each of them must still be just that."""
    import aioice.ice
    from aiortc.rtcicetransport import RTCIceTransport

    assert "self._tx_srtp.protect(data)" in inspect.getsource(RTCDtlsTransport._send_rtp)
    assert "await self.transport._send(data)" in inspect.getsource(RTCDtlsTransport._send_rtp)
    assert "self.__tx_bytes += len(data)" in inspect.getsource(RTCDtlsTransport._send_rtp)
    assert "self._send = self._connection.send" in inspect.getsource(RTCIceTransport)
    assert "await self.sendto(data, 1)" in inspect.getsource(aioice.ice.Connection.send)
    sendto = inspect.getsource(aioice.ice.Connection.sendto)
    assert "active_pair = self._nominated.get(component)" in sendto
    assert "await active_pair.protocol.send_data(data, active_pair.remote_addr)" in sendto
    assert "self.transport.sendto(data, addr)" in inspect.getsource(aioice.ice.StunProtocol.send_data)


async def test_send_rtp_now_refuses_when_not_connected():
    pc = ScopedPeerConnection()
    try:
        t = pc.addTransceiver("video", direction="sendonly")
        with pytest.raises(ConnectionError):
            patches.send_rtp_now(t.sender.transport, b"\x80" * 12)
    finally:
        await pc.close()


def test_the_receive_path_tap_transport_shortcuts():
    """tap_transport takes connected SRTP datagrams at aioice's Connection.data_received
    (which otherwise only queues them for RTCDtlsTransport._recv_next)."""
    import aioice.ice

    assert "self._queue.put_nowait((data, component))" in inspect.getsource(aioice.ice.Connection.data_received)
    datagram = inspect.getsource(aioice.ice.StunProtocol.datagram_received)
    assert "message = stun.parse_message(data)" in datagram
    assert "self.receiver.data_received(data, self.local_candidate.component)" in datagram
    recv = inspect.getsource(RTCDtlsTransport._recv_next)
    assert "data = await self.transport._recv()" in recv
    assert "elif first_byte > 127 and first_byte < 192 and self._rx_srtp:" in recv
    assert "self.__rx_bytes += len(data)" in recv


async def test_run_now_finishes_what_suspends():
    import asyncio

    done = []

    async def quick() -> None:
        done.append("quick")

    async def slow() -> None:
        await asyncio.sleep(0.01)
        done.append("slow")

    async def broken() -> None:
        raise ValueError("boom")

    pending: set = set()
    patches.run_now(quick(), pending)
    assert done == ["quick"] and not pending
    patches.run_now(slow(), pending)
    assert done == ["quick"] and len(pending) == 1
    patches.run_now(broken(), pending)  # logged, not raised
    for _ in range(100):
        if not pending:
            break
        await asyncio.sleep(0.01)
    assert done == ["quick", "slow"] and not pending


def _srtp_sessions():
    import os

    from aiortc.rtcdtlstransport import SRTP_PROFILES
    from pylibsrtp import Policy, Session

    out = []
    for profile in SRTP_PROFILES:
        key = os.urandom(profile.key_length + profile.salt_length)
        pair = []
        for ssrc_type in (Policy.SSRC_ANY_OUTBOUND, Policy.SSRC_ANY_INBOUND):
            policy = Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile.libsrtp_profile)
            policy.allow_repeat_tx = True
            policy.window_size = 1024
            pair.append(Session(policy))
        out.append(pair)
    return out


def test_srtp_protector_and_unprotector_are_the_sessions_own():
    """The direct libsrtp calls give the bytes Session.protect / unprotect give (and the same
    refusals), on every profile aiortc negotiates; pylibsrtp's internals they use are still there."""
    import struct

    import pylibsrtp

    source = inspect.getsource(pylibsrtp.Session)
    assert "self._buffer[0 : len(data)] = data" in source and "func(self._srtp[0], self._cdata, len_p)" in source
    for tx, rx in _srtp_sessions():
        tx2, rx2 = _srtp_sessions()[0]  # unrelated keys
        protect, unprotect = patches.srtp_protector(tx), patches.srtp_unprotector(rx)
        for seq in range(1, 40):
            plain = struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 4242) + bytes([seq]) * (seq * 30)
            protected = protect(plain)
            assert protected == tx.protect(plain)  # allow_repeat_tx: the same packet again, same bytes
            assert unprotect(protected) == plain
            assert unprotect(protected) is None  # replay: refused, as rx.unprotect raises
            with pytest.raises(pylibsrtp.Error):
                rx.unprotect(protected)
        assert patches.srtp_unprotector(rx2)(protected) is None  # authentication fails
        with pytest.raises(ValueError):
            protect(b"\x80" * 1500)
        with pytest.raises(ValueError):
            unprotect(b"\x80" * 1501)


def test_ntp_now_is_aiortcs_clock():
    import datetime

    from aiortc import clock

    for unix_ns in (0, 1_764_000_000_123_456_789, 1_764_000_000_999_999_999, 1_764_000_001_000_000_000):
        seconds, ns = divmod(unix_ns, 1_000_000_000)
        dt = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).replace(microsecond=ns // 1000)
        assert patches.ntp_from_unix_ns(unix_ns) == clock.datetime_to_ntp(dt)
    before, now, after = clock.current_ntp_time(), patches.ntp_now(), clock.current_ntp_time()
    assert before <= now <= after


async def test_rtp_writer_sends_what_send_rtp_now_sends():
    """RtpWriter: the same protected bytes to the nominated pair's address and the same transport
    counters as send_rtp_now, re-resolving the pair when it changes; refuses when not connected."""
    from types import SimpleNamespace

    sent = []

    class Udp:
        def __init__(self, name):
            self.name = name

        def sendto(self, data, addr):
            sent.append((self.name, data, addr))

    def pair(name, addr):
        return SimpleNamespace(protocol=SimpleNamespace(transport=Udp(name)), remote_addr=addr)

    (tx, rx), = _srtp_sessions()[:1]
    nominated = {1: pair("a", ("127.0.0.1", 1))}
    transport = SimpleNamespace(_state=patches._CONNECTED, _tx_srtp=tx,
                                transport=SimpleNamespace(_connection=SimpleNamespace(_nominated=nominated)),
                                _RTCDtlsTransport__tx_bytes=0, _RTCDtlsTransport__tx_packets=0)
    write = patches.RtpWriter(transport)  # type: ignore[arg-type]
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
    patches.send_rtp_now(transport, packets[3])  # type: ignore[arg-type]
    by_send_rtp_now = sent.pop()
    write(packets[3])  # allow_repeat_tx: the same bytes again
    assert sent.pop() == by_send_rtp_now
    nominated.clear()
    with pytest.raises(ConnectionError):
        write(packets[0])
    transport._state = None
    with pytest.raises(ConnectionError):
        write(packets[0])
