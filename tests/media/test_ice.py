"""ICE scoping: bound/announced addresses, port range, remote networks. The library internals it
relies on: tests/media/test_aiortc_internals.py and tests/media/test_aioice_internals.py."""

import asyncio
import ipaddress
import logging
import socket

import aiohttp
import aioice
import pytest
from aioice.candidate import Candidate
from aiortc import RTCPeerConnection, RTCSessionDescription

from media.aiortc_internals import ice_connection
from media.ice import MediaNetwork, ScopedPeerConnection
from sfu.appkeys import SFU
from tests.sfu.clients import FlatVideoTrack, play, publish, record_received
from tests.support import loopback_settings, wait_for


def candidates(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


def connection_of(pc: RTCPeerConnection) -> aioice.Connection:
    """The aioice connection of a peer connection with only a data channel."""
    assert pc.sctp is not None
    return ice_connection(pc.sctp.transport.transport)


async def test_host_candidate_is_the_configured_address_and_port_range() -> None:
    network = MediaNetwork(listen_ip="127.0.0.1", announced_ip="203.0.113.7", port_min=42000, port_max=42003)
    pc = ScopedPeerConnection(network)
    pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())
    lines = candidates(pc.localDescription.sdp)
    await pc.close()
    assert len(lines) == 1
    parts = lines[0].split()
    assert parts[4] == "203.0.113.7" and 42000 <= int(parts[5]) <= 42003 and parts[7] == "host"


async def test_port_range_exhaustion_is_reported() -> None:
    network = MediaNetwork(listen_ip="127.0.0.1", port_min=42010, port_max=42010)
    first = ScopedPeerConnection(network)
    first.createDataChannel("x")
    await first.setLocalDescription(await first.createOffer())
    second = ScopedPeerConnection(network)
    second.createDataChannel("x")
    await second.setLocalDescription(await second.createOffer())
    assert candidates(second.localDescription.sdp) == []  # no port left: no candidate, no crash
    await first.close()
    await second.close()


async def test_never_uses_default_public_stun_server() -> None:
    pc = ScopedPeerConnection()
    pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())
    connection = connection_of(pc)
    assert connection.stun_server is None and connection.turn_server is None
    await pc.close()


async def test_remote_candidates_outside_allowed_networks_are_ignored() -> None:
    network = MediaNetwork(allowed_remote=(ipaddress.ip_network("127.0.0.0/8"),))
    assert network.allows("127.0.0.5") and not network.allows("10.1.2.3")
    assert not network.allows("abcd.local") and not network.allows("::1")
    pc = ScopedPeerConnection(network)
    pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())
    connection = connection_of(pc)
    for host in ("10.1.2.3", "192.168.1.20", "127.0.0.1"):
        await connection.add_remote_candidate(Candidate(
            foundation="1", component=1, transport="udp", priority=1, host=host, port=9, type="host"))
    assert [c.host for c in connection.remote_candidates] == ["127.0.0.1"]
    await pc.close()


async def test_scoped_peers_connect_on_loopback() -> None:
    a = ScopedPeerConnection(MediaNetwork(port_min=42100, port_max=42199))
    b = ScopedPeerConnection()
    channel = a.createDataChannel("x")
    received: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    b.on("datachannel", lambda dc: dc.on("message", received.set_result))
    channel.on("open", lambda: channel.send("hello"))
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(RTCSessionDescription(sdp=b.localDescription.sdp, type="answer"))
    assert await asyncio.wait_for(received, 10) == "hello"
    await a.close()
    await b.close()


async def test_checks_from_outside_the_allowed_networks_are_ignored() -> None:
    # B knows A's candidate and sends checks from 127.0.0.1, which A does not allow:
    # no peer-reflexive candidate may appear at A, and the connection must not come up.
    a = ScopedPeerConnection(MediaNetwork(allowed_remote=(ipaddress.ip_network("192.0.2.0/24"),)))
    b = ScopedPeerConnection()
    a.createDataChannel("x")
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(RTCSessionDescription(sdp=b.localDescription.sdp, type="answer"))
    await asyncio.sleep(2.0)  # a window in which a check would have succeeded many times over
    connection = connection_of(a)
    assert connection.remote_candidates == []
    assert a.connectionState != "connected"
    await a.close()
    await b.close()


@pytest.fixture
def settings(tmp_path):
    """The room below has hand-made tokens and no consultation: a standalone room."""
    return loopback_settings(tmp_path / "data", sfu={"standalone_rooms": True})


async def test_empty_and_short_datagrams_are_dropped_and_counted_never_traced(server, caplog) -> None:
    """Issue 17, finding 6: an empty UDP datagram on a media port raised IndexError with a
    1.3 KB traceback (20k of them wrote 26 MB of log). Empty and short datagrams, before the
    peer connects and while media flows, are dropped and counted; the call goes on."""
    sfu = server.app[SFU]
    tokens = server.tokens
    junk = [b""] * 200 + [bytes([0x80] * n) for n in range(1, 12)] + [b"\x16\xfe", b"\x00\x01", b"\x90"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    caplog.set_level(logging.INFO)

    def spray(sdp: str) -> None:
        for line in candidates(sdp):
            port = int(line.split()[5])
            for datagram in junk:
                sock.sendto(datagram, ("127.0.0.1", port))

    async with aiohttp.ClientSession() as http:
        pub = await publish(http, server.url, "junk", tokens.issue_room("junk", "cabin", role="nurse",
                                                                        publish=["camera"]), [FlatVideoTrack()])
        sub = None
        try:
            spray(pub.answer)  # before ICE completes: the datagrams go to aiortc's own queue
            await wait_for(lambda: sfu.metrics.totals().packets_in > 30, what="media at the SFU")
            sub = await play(http, server.url, "junk", tokens.issue_room("junk", "doc", role="physician",
                                                                          subscribe=True), ["video"])
            received = record_received(sub.pc)
            await wait_for(lambda: len(received) > 10, what="media to the subscriber")
            spray(pub.answer)  # connected: SRTP goes straight from the socket to the SFU
            spray(sub.answer)
            await asyncio.sleep(0.5)
            before = len(received)
            await wait_for(lambda: len(received) > before + 30, what="the call going on")
            assert sfu.network.datagrams.short >= 3 * len(junk)
            async with http.get(server.url + "/metrics") as r:
                scrape = await r.text()
            assert 'teleconsult_media_datagrams_dropped_total{component="sfu",reason="short"}' in scrape
        finally:
            sock.close()
            await pub.close()
            if sub is not None:
                await sub.close()
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not problems, [r.getMessage() for r in problems][:3]
