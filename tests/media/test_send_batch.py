"""media/send_batch.py and its C half media/_rtpsend.c: a turn's packets to one socket are
SRTP-protected and sent together, the same bytes as pylibsrtp and sendto, in order; both ways,
on real UDP sockets over loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from types import SimpleNamespace
from typing import Any

import pylibsrtp
import pytest

from media import aioice_internals, aiortc_internals
from media.pylibsrtp_internals import native_session, srtp_protector
from media.send_batch import NATIVE, NativeRoute, SendBatch, Sink


def test_the_extension_is_built():
    """The test command builds it (scripts/install.sh); without it forwarding silently costs
    one system call per packet, so the suite fails loudly."""
    assert NATIVE is not None, "media._rtpsend was not built: are gcc and the Python headers installed?"


def sessions() -> tuple[pylibsrtp.Session, pylibsrtp.Session, pylibsrtp.Session]:
    """Two outbound sessions with one key (they protect alike) and the inbound one."""
    key = os.urandom(16 + 14)
    made = []
    for ssrc_type in (pylibsrtp.Policy.SSRC_ANY_OUTBOUND, pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                      pylibsrtp.Policy.SSRC_ANY_INBOUND):
        policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type,
                                  srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
        policy.window_size = 1024
        made.append(pylibsrtp.Session(policy))
    return made[0], made[1], made[2]


def rtp(seq: int, size: int = 1100, ssrc: int = 0x01020304) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 3000, ssrc) + bytes([seq % 251]) * size


class Receiver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)
        self.address = self.sock.getsockname()

    def take(self, n: int) -> list[bytes]:
        return [self.sock.recv(2048) for _ in range(n)]

    def close(self) -> None:
        self.sock.close()


async def udp() -> Any:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    return transport


def sink_for(transport: Any, session: pylibsrtp.Session, address: Any, sent: list[tuple[int, int]]) -> Sink:
    pair = SimpleNamespace(protocol=SimpleNamespace(transport=transport), remote_addr=address)
    fd = aioice_internals.pair_socket(pair)
    assert fd is not None
    assert NATIVE is not None
    protect, srtp = native_session(session)
    route = NativeRoute(fd=fd, protect=protect, session=srtp, address=NATIVE.pack_address(*address))
    return Sink(protect=srtp_protector(session), sendto=transport.sendto, address=address, transport=transport,
                on_sent=lambda n, b: sent.append((n, b)), native=route, session=session)


# Sizes that all differ: 150 datagrams, more than one sendmmsg (64 each). A video frame (one
# size, the last shorter), an audio packet, another frame: each run of one size is one
# UDP_SEGMENT message, and the receiver still gets every datagram.
VARIED = [200 + 5 * i for i in range(150)]
FRAMES = [1100] * 5 + [300] + [1100] * 3 + [160] + [1200, 1250]


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("sizes, native_calls", [(VARIED, 3), (FRAMES, 1)], ids=["varied", "frames"])
async def test_one_turns_packets_leave_together_in_order_as_pylibsrtp_protects_them(native, sizes, native_calls):
    out, reference, inbound = sessions()
    receiver = Receiver()
    transport = await udp()
    sent: list[tuple[int, int]] = []
    batch = SendBatch(native=native)
    try:
        sink = sink_for(transport, out, receiver.address, sent)
        packets = [rtp(i, size) for i, size in enumerate(sizes)]
        for packet in packets:
            batch.add(sink, packet)
        assert sent == []  # nothing before the end of the turn
        await asyncio.sleep(0)
        got = receiver.take(len(packets))
        assert got == [reference.protect(p) for p in packets]  # the same bytes, in order
        assert [inbound.unprotect(d) for d in got] == packets
        assert sent == [(len(packets), sum(map(len, got)))]
        assert batch.counts.datagrams == len(packets) and sink.gso
        assert batch.counts.syscalls == (native_calls if native else len(packets))
    finally:
        transport.close()
        receiver.close()


@pytest.mark.parametrize("native", [True, False])
async def test_sinks_of_one_turn_each_get_theirs_and_later_turns_go_again(native):
    out_a, ref_a, in_a = sessions()
    out_b, ref_b, in_b = sessions()
    ra, rb = Receiver(), Receiver()
    ta, tb = await udp(), await udp()
    batch = SendBatch(native=native)
    try:
        a = sink_for(ta, out_a, ra.address, [])
        b = sink_for(tb, out_b, rb.address, [])
        for i in range(10):
            batch.add(a if i % 2 else b, rtp(i))
        await asyncio.sleep(0)
        batch.add(a, rtp(100))
        await asyncio.sleep(0)
        assert [in_a.unprotect(d) for d in ra.take(6)] == [rtp(i) for i in (1, 3, 5, 7, 9, 100)]
        assert [in_b.unprotect(d) for d in rb.take(5)] == [rtp(i) for i in (0, 2, 4, 6, 8)]
        assert batch.counts.flushes == 2
    finally:
        ta.close()
        tb.close()
        ra.close()
        rb.close()


@pytest.mark.parametrize("native", [True, False])
async def test_a_packet_libsrtp_refuses_is_dropped_and_counted_and_the_rest_go(native):
    out, reference, inbound = sessions()
    receiver = Receiver()
    transport = await udp()
    batch = SendBatch(native=native)
    try:
        sink = sink_for(transport, out, receiver.address, [])
        too_long = rtp(1, 1400)  # past pylibsrtp's 1500-byte buffer with its trailer
        with pytest.raises(ValueError):
            reference.protect(too_long)
        for packet in (rtp(0), too_long, rtp(2)):
            batch.add(sink, packet)
        batch.flush()
        assert [inbound.unprotect(d) for d in receiver.take(2)] == [rtp(0), rtp(2)]
        assert batch.counts.failed == 1
    finally:
        transport.close()
        receiver.close()


async def test_a_transport_closed_in_the_turn_drops_its_packets():
    out, _, _ = sessions()
    receiver = Receiver()
    transport = await udp()
    batch = SendBatch(native=True)
    try:
        sink = sink_for(transport, out, receiver.address, [])
        batch.add(sink, rtp(0))
        transport.close()
        batch.flush()  # nothing written to a descriptor that may be another socket's by now
        assert batch.counts.datagrams == 0
        receiver.sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            receiver.sock.recv(2048)
    finally:
        receiver.close()


async def test_a_hooked_or_relayed_socket_is_never_written_directly():
    """A datagram hook (fault injection) or a TURN relay wraps the transport: the native path
    would bypass it, so such pairs have no socket for it."""
    transport = await udp()
    try:
        assert aioice_internals.pair_socket(SimpleNamespace(protocol=SimpleNamespace(transport=transport))) is not None
        hooked = aioice_internals._HookedTransport(transport, lambda data, addr: True)
        assert aioice_internals.pair_socket(SimpleNamespace(protocol=SimpleNamespace(transport=hooked))) is None
    finally:
        transport.close()
    assert aioice_internals.pair_socket(SimpleNamespace(protocol=SimpleNamespace(transport=transport))) is None


def test_pack_address_takes_numeric_ipv4_and_ipv6_only():
    assert NATIVE is not None
    v4 = NATIVE.pack_address("127.0.0.1", 5004)
    assert socket.AF_INET == struct.unpack_from("=H", v4)[0] and v4[2:4] == struct.pack("!H", 5004)
    v6 = NATIVE.pack_address("::1", 5004)
    assert socket.AF_INET6 == struct.unpack_from("=H", v6)[0] and v6[2:4] == struct.pack("!H", 5004)
    for bad in (("localhost", 1), ("999.1.1.1", 1), ("127.0.0.1", 70000)):
        with pytest.raises(ValueError):
            NATIVE.pack_address(*bad)


async def test_an_rtp_writer_as_a_batchs_outbox_sends_what_it_sends_at_once():
    """An RtpWriter as a batch's outbox: the bytes RtpWriter sends at once, at the end of the turn, with the
    transport's counters; when the transport is no longer connected at the end of the turn, the
    queued packets are dropped, counted, and the writer's subscriptions told (on_lost); a direct
    write refuses at once."""
    (tx, rx), = aiortc_internals.srtp_session_pairs()[-1:]
    receiver = Receiver()
    udp_transport = await udp()
    batch = SendBatch(native=True)
    try:
        connection = aioice_internals.stand_in_connection(udp_transport, receiver.address)
        transport = aiortc_internals.stand_in_dtls_transport(connection, tx=tx)
        write = aiortc_internals.RtpWriter(transport)
        packets = [rtp(i) for i in range(5)]
        for packet in packets:
            batch.add(write, packet)
        await asyncio.sleep(0)
        got = receiver.take(5)
        assert [rx.unprotect(d) for d in got] == packets
        assert batch.counts.syscalls == 1
        assert transport._RTCDtlsTransport__tx_packets == 5
        assert transport._RTCDtlsTransport__tx_bytes == sum(map(len, got))
        transport._state = None
        lost: list[bool] = []
        write.on_lost.append(lambda: lost.append(True))
        batch.add(write, packets[0])
        await asyncio.sleep(0)
        assert lost == [True] and batch.counts.failed == 1 and write.pending == []
        assert transport._RTCDtlsTransport__tx_packets == 5
        receiver.sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            receiver.sock.recv(2048)
        with pytest.raises(ConnectionError):
            write(packets[0])
    finally:
        udp_transport.close()
        receiver.close()


def _gso_refused() -> None:
    """In a network namespace of its own whose loopback's MTU is under the packets' size: the
    kernel refuses a segmented message (EINVAL), and the same datagrams go one by one (IP
    fragments them)."""
    import subprocess

    subprocess.run(["ip", "link", "set", "lo", "mtu", "1200", "up"], check=True)

    async def main() -> None:
        out, reference, inbound = sessions()
        receiver = Receiver()
        transport = await udp()
        ip_mtu_discover, ip_pmtudisc_dont = 10, 0  # <linux/in.h>; not in Python 3.11's socket
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_IP, ip_mtu_discover, ip_pmtudisc_dont)
        batch = SendBatch(native=True)
        sink = sink_for(transport, out, receiver.address, [])
        for turn in range(2):
            packets = [rtp(10 * turn + i, 1250) for i in range(4)] + [rtp(10 * turn + 4, 100)]
            for packet in packets:
                batch.add(sink, packet)
            batch.flush()
            got = receiver.take(len(packets))
            assert [inbound.unprotect(d) for d in got] == packets
            assert not sink.gso  # learnt in the first turn: the second does not try again
        assert batch.counts.failed == 0 and batch.counts.datagrams == 10
        print("ok")

    asyncio.run(main())


def test_a_segmented_message_the_kernel_refuses_goes_datagram_by_datagram():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(["unshare", "--net", "--", sys.executable, __file__, "gso-refused"], cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["gso-refused"]:
        _gso_refused()
