"""A hostile publisher on its own session: RTP with SSRCs its offer never declared.

Issue 17, finding 1: each SSRC fed to aiortc's receiver grows its receiver report; past
about 57 of them libsrtp refuses the report ("packet is too long"), aiortc's RTCP task
dies, and closing the peer connection then waits for it forever. The SFU drops unknown
and excess SSRCs (counted) before aiortc sees them; the room still closes promptly.
"""

from __future__ import annotations

import asyncio
import logging
import struct

import aiohttp
import pylibsrtp
import pytest

from media import aiortc_internals
from media.teardown import RELEASE_STEP_S
from sfu.appkeys import SFU
from sfu.publication import NEW_SSRC_BURST
from tests.sfu.clients import FlatVideoTrack, play, publish, record_received
from tests.support import loopback_settings, wait_for

pytestmark = pytest.mark.timeout(60)

CLOSE_TIMEOUT_S = 1.0


@pytest.fixture
def settings(tmp_path):
    return loopback_settings(tmp_path / "data", media={"close_timeout_s": CLOSE_TIMEOUT_S},
                             sfu={"standalone_rooms": True})

HOSTILE_SSRCS = 80


def forged(template: bytes, ssrc: int, sequence_number: int) -> bytes:
    """``template`` (an RTP packet the client sent) as if from ``ssrc``, same payload type."""
    return template[:2] + struct.pack("!HII", sequence_number, 1000 * sequence_number, ssrc) + template[12:]


async def test_unknown_ssrcs_are_dropped_and_the_room_closes_promptly(server):
    sfu = server.app[SFU]
    tokens = server.tokens
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, server.url, "hostile", tokens.issue_room(
            "hostile", "cabin", role="nurse", publish=["camera"]), [FlatVideoTrack()])
        sub = await play(http, server.url, "hostile", tokens.issue_room(
            "hostile", "doc", role="physician", subscribe=True), ["video"])
        try:
            received = record_received(sub.pc)
            transport = pub.transceivers[0].sender.transport
            sent: list[bytes] = []
            aiortc_internals.watch_sent_rtp(transport, lambda data: sent.append(data)
                                            if len(data) > 12 and not 192 <= data[1] <= 223 else None)
            await wait_for(lambda: sent and len(received) > 10, what="media flowing through the SFU")
            template = sent[-1]
            # Each hostile SSRC a few times, spread over two receiver-report intervals.
            for round_ in range(4):
                for i in range(HOSTILE_SSRCS):
                    await aiortc_internals.send_rtp(transport, forged(template, 0x5EED0000 + i, 100 * round_ + i))
                await asyncio.sleep(0.6)
            (publication,) = sfu._rooms["hostile"].publications.values()
            streams = publication.receiver._RTCRtpReceiver__remote_streams
            assert len(streams) <= 2 + NEW_SSRC_BURST, f"{len(streams)} SSRCs reached aiortc's receiver"
            dropped = sfu.metrics.dropped["unknown_ssrc"]
            assert dropped >= 4 * (HOSTILE_SSRCS - NEW_SSRC_BURST), dropped
            scrape = await (await http.get(server.url + "/metrics")).text()
            assert 'teleconsult_sfu_packets_dropped_total{reason="unknown_ssrc"}' in scrape
            before = len(received)
            await wait_for(lambda: len(received) > before + 30, what="the call going on")
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(sfu.close_room("hostile"), 10)
            assert asyncio.get_running_loop().time() - started < 3
            assert "hostile" not in sfu.rooms()
        finally:
            await pub.close()
            await sub.close()


async def test_a_stuck_close_is_bounded_and_frees_what_it_holds(server, caplog):
    """Whatever wedges aiortc's close (here, as in finding 1, an exception sending a receiver
    report kills the receiver's RTCP task, and ``RTCPeerConnection.close`` waits for it for
    ever), the room closes within ``[media] close_timeout_s`` plus the release; the
    participant's sockets are closed, it is gone from the SFU, and both facts are logged
    with its ids."""
    sfu = server.app[SFU]
    tokens = server.tokens
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, server.url, "stuck", tokens.issue_room(
            "stuck", "cabin", role="nurse", publish=["camera"]), [FlatVideoTrack()])
        sub = await play(http, server.url, "stuck", tokens.issue_room(
            "stuck", "doc", role="physician", subscribe=True), ["video"])
        try:
            received = record_received(sub.pc)
            await wait_for(lambda: len(received) > 10, what="media flowing through the SFU")
            (participant,) = [p for p in sfu._rooms["stuck"].participants.values() if p.grant.identity == "cabin"]
            (transceiver,) = participant.pc.getTransceivers()
            receiver, dtls = transceiver.receiver, transceiver.receiver.transport

            def refuse_receiver_reports(data: bytes) -> bytes:
                if data[1] == 201:  # RTCP RR
                    raise pylibsrtp.Error("packet is too long")
                return data

            aiortc_internals.rewrite_sent_rtp(dtls, refuse_receiver_reports)
            rtcp_task = receiver._RTCRtpReceiver__rtcp_task
            await wait_for(rtcp_task.done, 5, what="the receiver's RTCP task to die")
            sockets = [p.transport for p in aiortc_internals.ice_connection(dtls.transport)._protocols]
            assert sockets and not any(s.is_closing() for s in sockets)

            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(sfu.close_room("stuck"), 15)
            took = asyncio.get_running_loop().time() - started
            assert took < CLOSE_TIMEOUT_S + 3 * RELEASE_STEP_S + 1, f"closing the room took {took:.1f} s"
            assert all(s.is_closing() for s in sockets), "sockets of the stuck peer connection left open"
            assert sfu.session(participant.id) is None and "stuck" not in sfu.rooms()
            assert sfu.metrics.gauges().participants == 0
            timed_out = [r for r in caplog.records if r.getMessage() == "peer connection close timed out"]
            assert [getattr(r, "session", None) for r in timed_out] == [participant.id]
            assert timed_out[0].room == "stuck"
            assert [r for r in caplog.records if r.getMessage() == "peer connection released"
                    and getattr(r, "session", None) == participant.id]
        finally:
            await pub.close()
            await sub.close()


def renumbered(template: bytes, sequence_number: int, payload_type: int | None = None) -> bytes:
    """``template`` (an RTP packet the client sent) with another sequence number (and payload type)."""
    second = template[1] if payload_type is None else (template[1] & 0x80) | payload_type
    return template[:1] + bytes([second]) + struct.pack("!H", sequence_number & 0xFFFF) + template[4:]


async def test_a_publishers_own_numbering_never_breaks_the_forwarding_path(server, caplog):
    """A publisher's own packets (its SSRC, its SRTP session) whose numbering jumps on packets
    the SFU does not forward (another payload type): its SRTP receiver takes them all, but a
    packet then comes out to the subscriber more than SRTP's replay window behind the last
    one sent, which libsrtp refuses to protect: ``pylibsrtp.Error: replay check failed (index
    too old)`` raised out of the forwarding path, an ERROR with a traceback per packet
    (bench.fuzz, udp). Such a packet is dropped; the subscriber's stream goes on."""
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, server.url, "jumps", server.tokens.issue_room(
            "jumps", "cabin", role="nurse", publish=["camera"]), [FlatVideoTrack()])
        sub = await play(http, server.url, "jumps", server.tokens.issue_room(
            "jumps", "doc", role="physician", subscribe=True), ["video"])
        try:
            received = record_received(sub.pc)
            transport = pub.transceivers[0].sender.transport
            sent: list[bytes] = []
            aiortc_internals.watch_sent_rtp(transport, lambda data: sent.append(data)
                                            if len(data) > 12 and not 192 <= data[1] <= 223 else None)
            await wait_for(lambda: sent and len(received) > 10, what="media flowing through the SFU")
            template = sent[-1]
            base = struct.unpack("!H", template[2:4])[0]
            other_pt = 127 if template[1] & 0x7F != 127 else 126
            # forwarded, 2000 ahead; then, not forwarded, 30000 and 60000 ahead: the receiver's
            # index goes round, so that base + 500 is new to it, but 1500 behind what went out.
            for seq, pt in ((base + 2000, None), (base + 32000, other_pt), (base + 62000, other_pt),
                            (base + 500, None), (base + 501, None)):
                aiortc_internals.send_rtp_now(transport, renumbered(template, seq, pt))
                await asyncio.sleep(0.05)
            before = len(received)
            for seq in range(base + 2001, base + 2021):  # what follows the last packet out arrives
                aiortc_internals.send_rtp_now(transport, renumbered(template, seq))
            await wait_for(lambda: len(received) >= before + 20, what="the stream going on")
        finally:
            await pub.close()
            await sub.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [(r.name, r.getMessage(), r.exc_text) for r in errors]
