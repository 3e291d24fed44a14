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
