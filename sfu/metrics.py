"""The SFU's Prometheus metrics: cheap counters on the packet path, exported at scrape time.

The forwarding path adds to plain integers in a :class:`TrackCounts` shared by
every track of one (kind, source); a collector registered on the application's
registry turns them into counters when ``/metrics`` is read. Labels are
room-free and bounded: kind (audio, video) x source (:data:`core.vocabulary.MEDIA_SOURCES`).

Exported (all ``teleconsult_sfu_``):

* ``packets_total`` / ``bytes_total`` {kind, source, direction=in|out}: RTP
  received from publishers / sent to subscribers (bytes before SRTP);
* ``frames_total`` {kind, source}, ``keyframes_total`` {kind, source};
* ``pli_total`` {kind, source, direction=received|sent}: keyframe requests from
  subscribers / sent upstream to publishers;
* ``nack_total`` {kind, source, direction=received|sent}, ``retransmits_total``;
* ``retransmits_refused_total`` {kind, source}: NACKed packets not resent, beyond the
  subscriber's retransmission budget (``[media] retransmit_*_per_s``, ``retransmit_share``
  of its estimate) or resent ``nack_max_retries`` times already;
* ``packets_dropped_total`` {reason}: RTP the SFU would not take from a publisher
  (``unknown_ssrc``: an SSRC its offer did not declare, beyond the budget for new ones;
  ``malformed_red``: a RED payload that does not parse or carries another codec);
* ``packets_lost_total`` {kind, source}: gaps in what publishers sent;
* ``retransmit_bytes_total`` {kind, source, direction=received|sent}: RTX bytes from
  publishers / bytes resent to subscribers;
* ``nack_given_up_total`` {kind, source}: packets lost from publishers that the SFU stopped
  asking for (``[media] nack_max_retries``, ``nack_max_age_ms``: ``sfu/nack.py``);
* ``uplink_estimate_bps`` / ``remb_bps`` {kind, source} (gauges): the publishers' own uplink
  estimates and the REMB last sent to them, summed over the live publications of that source
  (``sfu/congestion.py``);
* ``send_syscalls_total``, ``send_datagrams_total``, ``send_failed_total``: what the batched
  writes (``media/send_batch.py``) did: system calls (one ``sendmmsg`` carries a turn's packets
  to one subscriber), datagrams they sent, packets dropped (refused by libsrtp or the socket);
* ``media_transcode_total`` {op=decode|encode}: frames aiortc decoded or
  encoded in SFU peer connections: 0 by design;
* ``rooms``, ``participants``, ``publications``, ``subscriptions`` (gauges).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "teleconsult_sfu_"


@dataclass(slots=True)
class TrackCounts:
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    frames: int = 0
    keyframes: int = 0
    pli_received: int = 0
    pli_sent: int = 0
    nack_received: int = 0
    nack_sent: int = 0
    retransmits: int = 0
    retransmits_refused: int = 0
    lost: int = 0
    retransmit_bytes: int = 0
    """Bytes the SFU resent to subscribers."""
    rtx_bytes_in: int = 0
    """Bytes of retransmissions (RTX) received from publishers."""
    nack_given_up: int = 0
    """Packets lost from a publisher that the SFU stopped asking for (retries or age, ``sfu/nack.py``)."""


@dataclass(frozen=True)
class Gauges:
    rooms: int
    participants: int
    publications: int
    subscriptions: int


@dataclass(frozen=True)
class UplinkFigures:
    """The bandwidth feedback of one live publication (``sfu/congestion.py``), bit/s."""

    kind: str
    source: str
    uplink_bps: int | None
    remb_bps: int | None


@dataclass
class SfuMetrics:
    """Counters of one SFU service."""

    tracks: dict[tuple[str, str], TrackCounts] = field(default_factory=dict)
    transcodes: dict[str, int] = field(default_factory=lambda: {"decode": 0, "encode": 0})
    dropped: dict[str, int] = field(default_factory=lambda: {"unknown_ssrc": 0})
    """Packets dropped on the receive path, by reason."""
    gauges: Callable[[], Gauges] = lambda: Gauges(0, 0, 0, 0)
    uplinks: Callable[[], list[UplinkFigures]] = lambda: []
    """The live publications' estimates (the service sets it), read at scrape time."""
    sends: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)
    """(system calls, datagrams, failed) of the batched writes (the service sets it)."""

    def track(self, kind: str, source: str) -> TrackCounts:
        key = (kind, source)
        counts = self.tracks.get(key)
        if counts is None:
            counts = self.tracks[key] = TrackCounts()
        return counts

    def decoded(self) -> None:
        self.transcodes["decode"] += 1

    def encoded(self) -> None:
        self.transcodes["encode"] += 1

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(_Collector(self))

    def totals(self) -> TrackCounts:
        total = TrackCounts()
        for counts in self.tracks.values():
            for f in fields(TrackCounts):
                setattr(total, f.name, getattr(total, f.name) + getattr(counts, f.name))
        return total


class _Collector(Collector):
    def __init__(self, metrics: SfuMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        m = self.metrics
        packets = CounterMetricFamily(PREFIX + "packets", "RTP packets forwarded", labels=["kind", "source", "direction"])
        octets = CounterMetricFamily(PREFIX + "bytes", "RTP bytes (before SRTP)", labels=["kind", "source", "direction"])
        frames = CounterMetricFamily(PREFIX + "frames", "Frames received from publishers", labels=["kind", "source"])
        keyframes = CounterMetricFamily(PREFIX + "keyframes", "Keyframes received from publishers",
                                        labels=["kind", "source"])
        pli = CounterMetricFamily(PREFIX + "pli", "Keyframe requests", labels=["kind", "source", "direction"])
        nack = CounterMetricFamily(PREFIX + "nack", "NACK packets", labels=["kind", "source", "direction"])
        retransmits = CounterMetricFamily(PREFIX + "retransmits", "Packets retransmitted to subscribers",
                                          labels=["kind", "source"])
        refused = CounterMetricFamily(PREFIX + "retransmits_refused", "NACKed packets not resent (budget)",
                                      labels=["kind", "source"])
        lost = CounterMetricFamily(PREFIX + "packets_lost", "Packets missing from publishers",
                                   labels=["kind", "source"])
        rtx_bytes = CounterMetricFamily(PREFIX + "retransmit_bytes", "Retransmitted RTP bytes (before SRTP)",
                                        labels=["kind", "source", "direction"])
        given_up = CounterMetricFamily(PREFIX + "nack_given_up", "Lost packets no longer asked for (bounded NACK)",
                                       labels=["kind", "source"])
        for (kind, source), c in sorted(m.tracks.items()):
            packets.add_metric([kind, source, "in"], c.packets_in)
            packets.add_metric([kind, source, "out"], c.packets_out)
            octets.add_metric([kind, source, "in"], c.bytes_in)
            octets.add_metric([kind, source, "out"], c.bytes_out)
            frames.add_metric([kind, source], c.frames)
            keyframes.add_metric([kind, source], c.keyframes)
            pli.add_metric([kind, source, "received"], c.pli_received)
            pli.add_metric([kind, source, "sent"], c.pli_sent)
            nack.add_metric([kind, source, "received"], c.nack_received)
            nack.add_metric([kind, source, "sent"], c.nack_sent)
            retransmits.add_metric([kind, source], c.retransmits)
            refused.add_metric([kind, source], c.retransmits_refused)
            lost.add_metric([kind, source], max(0, c.lost))
            rtx_bytes.add_metric([kind, source, "received"], c.rtx_bytes_in)
            rtx_bytes.add_metric([kind, source, "sent"], c.retransmit_bytes)
            given_up.add_metric([kind, source], c.nack_given_up)
        transcode = CounterMetricFamily(PREFIX + "media_transcode", "Frames decoded or encoded by the SFU (0 by design)",
                                        labels=["op"])
        for op, value in sorted(m.transcodes.items()):
            transcode.add_metric([op], value)
        dropped = CounterMetricFamily(PREFIX + "packets_dropped", "RTP dropped on the receive path",
                                      labels=["reason"])
        for reason, value in sorted(m.dropped.items()):
            dropped.add_metric([reason], value)
        yield from (packets, octets, frames, keyframes, pli, nack, retransmits, refused, lost, rtx_bytes, given_up,
                    transcode, dropped)
        for name, value, what in zip(("send_syscalls", "send_datagrams", "send_failed"), m.sends(),
                                     ("System calls that sent forwarded packets", "Forwarded datagrams sent",
                                      "Forwarded packets dropped (SRTP or socket refused)")):
            counter = CounterMetricFamily(PREFIX + name, what)
            counter.add_metric([], value)
            yield counter
        uplink = GaugeMetricFamily(PREFIX + "uplink_estimate_bps", "Publishers' uplink estimates, summed per source",
                                   labels=["kind", "source"])
        remb = GaugeMetricFamily(PREFIX + "remb_bps", "REMB last sent to publishers, summed per source",
                                 labels=["kind", "source"])
        sums: dict[tuple[str, str], list[int]] = {}
        for figures in m.uplinks():
            entry = sums.setdefault((figures.kind, figures.source), [0, 0])
            entry[0] += figures.uplink_bps or 0
            entry[1] += figures.remb_bps or 0
        for (kind, source), (uplink_bps, remb_bps) in sorted(sums.items()):
            uplink.add_metric([kind, source], uplink_bps)
            remb.add_metric([kind, source], remb_bps)
        yield from (uplink, remb)
        g = m.gauges()
        for name, value in (("rooms", g.rooms), ("participants", g.participants),
                            ("publications", g.publications), ("subscriptions", g.subscriptions)):
            gauge = GaugeMetricFamily(PREFIX + name, f"Live SFU {name}")
            gauge.add_metric([], value)
            yield gauge
