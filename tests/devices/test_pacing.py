"""The pacer's leaky bucket: a keyframe's burst spread at the pacing rate, audio never held,
retransmissions first and within their share, the queue's delay bounded."""

from __future__ import annotations

from devices.pacing import PacketQueue, Priority


def drain(queue: PacketQueue[str], start: float, until: float, step: float = 0.001) -> list[tuple[float, str]]:
    sent = []
    now = start
    while now <= until:
        sent += [(round(now, 3), p) for p in queue.pop_due(now)]
        now += step
    return sent


def test_a_burst_leaves_at_the_pacing_rate() -> None:
    q: PacketQueue[str] = PacketQueue(rate_bytes_per_s=100_000, max_queue_s=1.0)
    # 20 packets of 1000 bytes at once (a keyframe): 200 ms at 100 kB/s.
    first: list[str] = []
    for i in range(20):
        first += q.push(f"v{i}", 1000, Priority.VIDEO, 0.0)
    assert len(first) <= 2  # the idle credit lets a packet or so through at once
    sent = [(0.0, p) for p in first] + drain(q, 0.001, 0.5)
    assert [p for _, p in sent] == [f"v{i}" for i in range(20)]
    last = sent[-1][0]
    assert 0.17 <= last <= 0.21, last
    assert q.next_due(0.5) is None and q.queued_bytes == 0


def test_audio_goes_at_once_and_spends_the_credit() -> None:
    q: PacketQueue[str] = PacketQueue(rate_bytes_per_s=100_000, max_queue_s=1.0)
    for i in range(5):
        q.push(f"v{i}", 1000, Priority.VIDEO, 0.0)
    assert q.push("a0", 300, Priority.AUDIO, 0.0) == ["a0"]
    due = q.next_due(0.0)
    assert due is not None and due > 0


def test_retransmissions_go_first_within_their_share() -> None:
    q: PacketQueue[str] = PacketQueue(rate_bytes_per_s=100_000, max_queue_s=1.0, retransmit_share=0.25)
    for i in range(5):
        q.push(f"v{i}", 1000, Priority.VIDEO, 0.0)
    q.push("r0", 1000, Priority.RETRANSMISSION, 0.0)
    sent = [p for _, p in drain(q, 0.001, 0.2)]
    assert sent.index("r0") < sent.index("v2")
    # A storm: 25 kB/s of retransmission budget (1 s burst); 60 packets of 1000 bytes at once.
    q2: PacketQueue[str] = PacketQueue(rate_bytes_per_s=100_000, max_queue_s=1.0, retransmit_share=0.25)
    for i in range(60):
        q2.push(f"r{i}", 1000, Priority.RETRANSMISSION, 0.0)
    assert q2.dropped_retransmissions == 35


def test_the_queue_never_holds_more_than_its_limit() -> None:
    q: PacketQueue[str] = PacketQueue(rate_bytes_per_s=10_000, max_queue_s=0.25)
    sent: list[tuple[float, str]] = []
    for i in range(50):  # 50 kB at 10 kB/s would be 5 s
        sent += [(0.0, p) for p in q.push(f"v{i}", 1000, Priority.VIDEO, 0.0)]
    sent += drain(q, 0.001, 2.0)
    assert len(sent) == 50
    assert sent[-1][0] <= 0.3, sent[-1]


def test_abs_send_time_is_stamped_again_at_the_real_send() -> None:
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket

    from devices.pacing import restamp_abs_send_time

    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]))
    packet = RtpPacket(payload_type=96, sequence_number=7, timestamp=1234)
    packet.extensions.mid = "1"
    packet.extensions.abs_send_time = 0x123456
    packet.payload = b"\x10" * 100
    data = packet.serialize(extensions)
    again = RtpPacket.parse(restamp_abs_send_time(data, 3, 0xABCDEF), extensions)
    assert again.extensions.abs_send_time == 0xABCDEF
    assert (again.extensions.mid, again.payload, again.sequence_number) == ("1", packet.payload, 7)
    # No such extension, or none at all: unchanged.
    assert restamp_abs_send_time(data, 5, 0xABCDEF) == data
    bare = RtpPacket(payload_type=96, sequence_number=8, timestamp=1).serialize(HeaderExtensionsMap())
    assert restamp_abs_send_time(bare, 3, 1) == bare
