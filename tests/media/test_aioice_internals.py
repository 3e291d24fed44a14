"""The aioice internals media/aioice_internals.py relies on: checked on real connections over
loopback (bytes in = bytes out), and their source shape, so that an aioice upgrade that
changes them fails here, loudly."""

from __future__ import annotations

import asyncio
import inspect
import socket
import struct
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import aioice
import aioice.ice
import pytest
from aioice.candidate import Candidate

from media import aioice_internals
from media.aioice_internals import nominated_pairs, pair_destination, scope_connection, take_datagrams

pytestmark = pytest.mark.timeout(30)

MEDIA = [bytes([0x80, 96]) + i.to_bytes(2, "big") + bytes(8) + bytes([i]) * (20 + i) for i in range(20)]
"""RTP-looking datagrams (first byte 128-191)."""


class Seen(list):
    """A datagram hook that keeps every datagram and lets it through."""

    def __call__(self, data: bytes, addr: Any) -> bool:
        self.append(data)
        return True


async def bind_ephemeral(address: str, factory: Callable[[], asyncio.DatagramProtocol]) -> Any:
    return await asyncio.get_running_loop().create_datagram_endpoint(factory, local_addr=(address, 0))


def loopback_only(host: str) -> bool:
    return host.startswith("127.")


def scoped(controlling: bool, hook: aioice_internals.DatagramHook | None = None,
           announced_ip: str = "") -> aioice.Connection:
    connection = aioice.Connection(ice_controlling=controlling)
    scope_connection(connection, bind_addresses=lambda: ["127.0.0.1"], announced_ip=announced_ip,
                     allows=loopback_only, bind=bind_ephemeral, hook=hook)
    return connection


@asynccontextmanager
async def connected(a: aioice.Connection, b: aioice.Connection) -> AsyncIterator[None]:
    await asyncio.gather(a.gather_candidates(), b.gather_candidates())
    for here, there in ((a, b), (b, a)):
        for candidate in there.local_candidates:
            await here.add_remote_candidate(candidate)
        await here.add_remote_candidate(None)
        here.remote_username, here.remote_password = there.local_username, there.local_password
    try:
        await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)
        yield
    finally:
        await a.close()
        await b.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)



async def test_scoped_gathering_binds_announces_and_filters() -> None:
    connection = scoped(True, announced_ip="203.0.113.7")
    try:
        await connection.gather_candidates()
        (candidate,) = connection.local_candidates
        assert candidate.host == "203.0.113.7" and candidate.type == "host" and candidate.component == 1
        (protocol,) = connection._protocols
        assert protocol.transport.get_extra_info("sockname")[0] == "127.0.0.1"
        for host in ("10.1.2.3", "127.0.0.1"):
            await connection.add_remote_candidate(Candidate(
                foundation="1", component=1, transport="udp", priority=1, host=host, port=9, type="host"))
        assert [c.host for c in connection.remote_candidates] == ["127.0.0.1"]
    finally:
        await connection.close()


async def test_the_datagram_hook_sees_the_bytes_sent_and_received() -> None:
    seen_a, seen_b = Seen(), Seen()
    a = scoped(True, hook=seen_a)
    b = scoped(False, hook=seen_b)
    async with connected(a, b):
        seen_a.clear()
        seen_b.clear()
        for data in MEDIA:
            await a.send(data)
        got = [await asyncio.wait_for(b.recv(), 5) for _ in MEDIA]
        assert got == MEDIA
        assert [d for d in seen_a if d in MEDIA] == MEDIA  # what a sent, as it left
        assert [d for d in seen_b if d in MEDIA] == MEDIA  # what b received, as it arrived


async def test_a_hook_that_refuses_drops_the_datagram() -> None:
    a = scoped(True, hook=lambda data, addr: data != MEDIA[1])  # not sent
    b = scoped(False, hook=lambda data, addr: data != MEDIA[0])  # not received
    async with connected(a, b):
        for data in MEDIA[:3]:
            await a.send(data)
        assert await asyncio.wait_for(b.recv(), 5) == MEDIA[2]


async def test_taken_datagrams_are_the_bytes_sent_and_the_rest_is_queued() -> None:
    a, b = scoped(True), scoped(False)
    async with connected(a, b):
        taken: list[tuple[bytes, int]] = []

        def wrap(queued: aioice_internals.DataReceived) -> aioice_internals.DataReceived:
            def data_received(data: bytes, component: int) -> None:
                if 127 < data[0] < 192:
                    taken.append((data, component))
                else:
                    queued(data, component)
            return data_received

        take_datagrams(b, wrap)
        for data in MEDIA:
            await a.send(data)
        await a.send(b"not media, not STUN")  # first byte < 128: aioice's STUN parse, then its queue
        assert await asyncio.wait_for(b.recv(), 5) == b"not media, not STUN"
        await wait_until(lambda: len(taken) == len(MEDIA))
        assert taken == [(data, 1) for data in MEDIA]
        (protocol,) = b._protocols  # media skipped the STUN parse: a wrapped datagram_received
        assert getattr(protocol.datagram_received, "__func__", None) is not aioice.ice.StunProtocol.datagram_received


async def test_the_nominated_pair_sends_what_connection_send_sends() -> None:
    seen = Seen()
    a = scoped(True, hook=seen)
    b = scoped(False)
    async with connected(a, b):
        pairs = nominated_pairs(a)
        assert set(pairs) == {1} and pairs is a._nominated  # the live dict
        sendto, addr = pair_destination(pairs[1])
        sendto(MEDIA[0], addr)
        await a.send(MEDIA[1])
        assert [await asyncio.wait_for(b.recv(), 5) for _ in range(2)] == MEDIA[:2]
        assert [d for d in seen if d in MEDIA] == MEDIA[:2]
    assert nominated_pairs(a) == {}  # cleared on close: the writer's "not connected"


async def test_datagrams_too_short_for_webrtc_are_dropped_before_aioice_parses_them() -> None:
    """An empty datagram raised IndexError in the media path (issue 17): shorter than
    MIN_DATAGRAM_BYTES, a datagram is dropped and counted at the socket, on the media fast
    path too, and at the connection (a TURN relay's datagrams)."""
    dropped: list[int] = []
    a = scoped(True)
    b = aioice.Connection(ice_controlling=False)
    scope_connection(b, bind_addresses=lambda: ["127.0.0.1"], announced_ip="", allows=loopback_only,
                     bind=bind_ephemeral, on_short=lambda: dropped.append(1))
    async with connected(a, b):
        taken: list[bytes] = []
        take_datagrams(b, lambda queued: lambda data, component: taken.append(data) if data[:1] == b"\x80"
                       else queued(data, component))
        short = [b"", b"\x80", b"\x80" * 11, b"\x16\xfe", b"\x00" * 11]
        (candidate,) = b.local_candidates
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:  # asyncio sends no empty datagram
            for data in short:
                raw.sendto(data, (candidate.host, candidate.port))
        for data in [MEDIA[0], b"not media, not STUN"]:
            await a.send(data)
        assert await asyncio.wait_for(b.recv(), 5) == b"not media, not STUN"
        await wait_until(lambda: taken == [MEDIA[0]])
        assert len(dropped) == len(short)
        b.data_received(b"", 1)  # as a relayed datagram arrives
        assert len(dropped) == len(short) + 1
        assert b._queue.empty()


def broken_stun() -> bytes:
    """A Binding request whose ICE-CONTROLLED attribute holds 4 bytes instead of 8."""
    attribute = struct.pack("!HH", 0x8029, 4) + bytes(4)
    return struct.pack("!HHI", 0x0001, len(attribute), 0x2112A442) + bytes(range(12)) + attribute


async def test_stun_aioice_cannot_parse_and_media_too_long_for_srtp_are_dropped() -> None:
    """bench.fuzz, udp: a STUN header whose attribute is shorter than its type made aioice's
    parser raise struct.error (a traceback per datagram, from anyone who knows the port); an
    RTP/RTCP datagram longer than SRTP's buffer made pylibsrtp raise ValueError, which ended
    aiortc's receive task. Both are dropped at the socket or the connection, and counted."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    malformed: list[int] = []
    too_long: list[int] = []
    a = scoped(True)
    b = aioice.Connection(ice_controlling=False)
    scope_connection(b, bind_addresses=lambda: ["127.0.0.1"], announced_ip="", allows=loopback_only,
                     bind=bind_ephemeral, on_malformed=lambda: malformed.append(1),
                     on_too_long=lambda: too_long.append(1))
    async with connected(a, b):
        long_rtcp = bytes([0x80, 200]) + bytes(aioice_internals.MAX_MEDIA_DATAGRAM_BYTES)
        long_rtp = bytes([0x80, 96]) + bytes(aioice_internals.MAX_MEDIA_DATAGRAM_BYTES)
        (candidate,) = b.local_candidates
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            for data in (broken_stun(), long_rtcp, long_rtp):
                stranger.sendto(data, (candidate.host, candidate.port))
        await a.send(long_rtcp)  # from the peer's own 5-tuple
        biggest_dtls = bytes([23]) + bytes(aioice_internals.MAX_MEDIA_DATAGRAM_BYTES + 100)
        for data in (biggest_dtls, MEDIA[0]):  # what is neither still arrives, in order
            await a.send(data)
            assert await asyncio.wait_for(b.recv(), 5) == data
        assert (malformed, len(too_long)) == ([1], 3)
        taken: list[bytes] = []  # the media fast path drops them too
        take_datagrams(b, lambda queued: lambda data, component: taken.append(data) if len(data) < 1000
                       else queued(data, component))
        await a.send(long_rtp)
        await a.send(MEDIA[1])
        await wait_until(lambda: taken == [MEDIA[1]])
        assert len(too_long) == 4 and b._queue.empty()
    asyncio.get_running_loop().set_exception_handler(None)
    assert not errors, errors


async def test_close_sockets_closes_what_a_stuck_close_left_open() -> None:
    a, b = scoped(True), scoped(False)
    async with connected(a, b):
        sockets = [p.transport for p in a._protocols]
        assert a._query_consent_task is not None and not a._query_consent_task.done()
        aioice_internals.close_sockets(a)
        assert sockets and all(s.is_closing() for s in sockets)
        assert nominated_pairs(a) == {}
        await asyncio.sleep(0)
        assert a._query_consent_task.done()


def test_the_send_path_send_rtp_now_shortcuts():
    """send_rtp_now / RtpWriter do what Connection.sendto -> StunProtocol.send_data do,
    synchronously: each of them must still be just that."""
    assert "await self.sendto(data, 1)" in inspect.getsource(aioice.ice.Connection.send)
    sendto = inspect.getsource(aioice.ice.Connection.sendto)
    assert "active_pair = self._nominated.get(component)" in sendto
    assert "await active_pair.protocol.send_data(data, active_pair.remote_addr)" in sendto
    assert "self.transport.sendto(data, addr)" in inspect.getsource(aioice.ice.StunProtocol.send_data)


def test_the_receive_path_take_datagrams_shortcuts():
    """take_datagrams takes datagrams at Connection.data_received (which otherwise only queues
    them for RTCDtlsTransport._recv_next)."""
    assert "self._queue.put_nowait((data, component))" in inspect.getsource(aioice.ice.Connection.data_received)
    datagram = inspect.getsource(aioice.ice.StunProtocol.datagram_received)
    assert "message = stun.parse_message(data)" in datagram
    assert "self.receiver.data_received(data, self.local_candidate.component)" in datagram


def test_the_connection_still_has_what_scope_connection_replaces() -> None:
    for name in ("get_component_candidates", "add_remote_candidate", "request_received"):
        assert callable(getattr(aioice.Connection, name)), name
    connection = aioice.Connection(ice_controlling=True)
    assert isinstance(connection._protocols, list)
    assert connection._transport_policy == aioice.TransportPolicy.ALL
    assert "self.get_component_candidates(" in inspect.getsource(aioice.Connection.gather_candidates)
    assert "self.receiver.request_received(message, addr, self)" in inspect.getsource(
        aioice.ice.StunProtocol.datagram_received)
