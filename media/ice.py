"""Where WebRTC media may flow: bound and announced addresses, ports, remote networks.

aioice gathers a host candidate on every interface address but 127.0.0.1, on
an ephemeral port, and checks every remote candidate it is given. A server
needs the opposite: bind one configured address (127.0.0.1 in tests and
benches), within a port range, announce a public address behind NAT, and never
send a connectivity check outside the networks it serves.

:class:`ScopedPeerConnection` is an ``RTCPeerConnection`` whose ICE transports
follow a :class:`MediaNetwork`. The library internals this takes (a hook on each
new aioice connection; that connection's candidate gathering, remote candidates
and incoming checks) live in :mod:`media.aiortc_internals` and
:mod:`media.aioice_internals`. Datagrams too short to be anything WebRTC sends
(an empty one raised IndexError deep in aiortc), RTP/RTCP too long for SRTP (one ended
aiortc's receive task: the call's media stopped) and STUN aioice cannot parse are
dropped on arrival and counted per network (:class:`DatagramCounts`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import aioice
from aiortc import RTCConfiguration, RTCIceServer
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from config.settings import IceSettings, MediaSettings
from media.aioice_internals import DatagramHook, host_addresses, scope_connection
from media.aiortc_internals import IceHookedPeerConnection

__all__ = ["DatagramCounts", "DatagramHook", "MediaNetwork", "PortAllocator", "RandomLoss", "ScopedPeerConnection"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class RandomLoss:
    """A :data:`DatagramHook` that drops SRTP/SRTCP datagrams (first byte 128-191, RFC 7983)
    with ``probability``, either way; ICE and DTLS go through, so the connection sets up.
    Seeded: the same drops in every run."""

    probability: float
    seed: int = 0
    seen: int = 0
    dropped: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        self._rng = random.Random(self.seed)

    def __call__(self, data: bytes, addr: tuple[Any, ...]) -> bool:
        if not data or not 128 <= data[0] <= 191:
            return True
        self.seen += 1
        if self._rng.random() < self.probability:
            self.dropped += 1
            return False
        return True


@dataclass
class DatagramCounts:
    """Datagrams the media sockets of one :class:`MediaNetwork` dropped before any parsing."""

    short: int = 0
    """Empty, or shorter than anything WebRTC sends (``aioice_internals.MIN_DATAGRAM_BYTES``)."""
    too_long: int = 0
    """RTP/RTCP longer than SRTP can unprotect (``aioice_internals.MAX_MEDIA_DATAGRAM_BYTES``)."""
    malformed: int = 0
    """STUN headers with attributes aioice cannot parse."""

    def dropped_short(self) -> None:
        self.short += 1

    def dropped_too_long(self) -> None:
        self.too_long += 1

    def dropped_malformed(self) -> None:
        self.malformed += 1

    def register(self, registry: CollectorRegistry, component: str) -> None:
        """Export as ``teleconsult_media_datagrams_dropped_total{component, reason}``."""
        registry.register(_DatagramCollector(self, component))


class _DatagramCollector(Collector):
    def __init__(self, counts: DatagramCounts, component: str) -> None:
        self.counts = counts
        self.component = component

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("teleconsult_media_datagrams_dropped",
                                     "Datagrams dropped on media sockets before parsing",
                                     labels=["component", "reason"])
        family.add_metric([self.component, "short"], self.counts.short)
        family.add_metric([self.component, "too_long"], self.counts.too_long)
        family.add_metric([self.component, "malformed"], self.counts.malformed)
        yield family


@dataclass(frozen=True)
class MediaNetwork:
    """Addresses a peer connection binds, announces and accepts."""

    listen_ip: str = "127.0.0.1"
    announced_ip: str = ""
    port_min: int = 0
    """0: an ephemeral port (clients); a range for servers behind firewalls."""
    port_max: int = 0
    allowed_remote: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),)
    ice_servers: tuple[RTCIceServer, ...] = ()
    datagrams: DatagramCounts = field(default_factory=DatagramCounts, compare=False, repr=False)
    """What the sockets of every peer connection on this network dropped."""
    tos: int = 0
    """IP TOS byte (DSCP << 2) of the media sockets; 0: the system's default. The agent marks
    each device's session by its kind (``media.dscp``): audio EF, video AF41."""

    @classmethod
    def from_settings(cls, media: MediaSettings, ice: IceSettings | None = None,
                      ice_servers: tuple[RTCIceServer, ...] = ()) -> "MediaNetwork":
        """``media`` resolved (``Settings.effective_media``): an empty listen_ip or network
        list means "derived from server.host", which only the whole settings know."""
        if not media.listen_ip or not media.allowed_remote_networks:
            raise ValueError("media settings not resolved: pass Settings.effective_media")
        return cls(
            listen_ip=media.listen_ip,
            announced_ip=media.announced_ip,
            port_min=media.port_min,
            port_max=media.port_max,
            allowed_remote=tuple(ipaddress.ip_network(n, strict=False) for n in media.allowed_remote_networks),
            ice_servers=ice_servers,
        )

    @classmethod
    def loopback(cls) -> "MediaNetwork":
        """Clients and peers in tests and benches: 127.0.0.1 only, ephemeral ports."""
        return cls()

    def allows(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # mDNS names and the like: unresolvable here, never checked
        return any(address in net for net in self.allowed_remote if net.version == address.version)

    def bind_addresses(self) -> list[str]:
        if self.listen_ip in ("0.0.0.0", "::"):
            addresses = host_addresses(use_ipv4=self.listen_ip == "0.0.0.0", use_ipv6=self.listen_ip == "::")
            # aioice leaves loopback out; a server on every address serves it too.
            loopback = ["127.0.0.1"] if self.listen_ip == "0.0.0.0" else ["::1"]
            return [a for a in loopback + addresses if self.allows(a) or self.announced_ip]
        return [self.listen_ip]


@dataclass
class PortAllocator:
    """Binds UDP sockets within [port_min, port_max]; 0/0 means ephemeral."""

    port_min: int
    port_max: int
    _rng: random.Random = field(default_factory=random.Random)

    async def bind(self, address: str, factory: Callable[[], asyncio.DatagramProtocol]
                   ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        loop = asyncio.get_running_loop()
        if not self.port_min:
            transport, protocol = await loop.create_datagram_endpoint(factory, local_addr=(address, 0))
            return transport, protocol
        ports = list(range(self.port_min, self.port_max + 1))
        # Random order: several processes sharing a range rarely collide.
        start = self._rng.randrange(len(ports))
        for port in ports[start:] + ports[:start]:
            try:
                transport, protocol = await loop.create_datagram_endpoint(factory, local_addr=(address, port))
                return transport, protocol
            except OSError:
                continue
        raise OSError(f"no free UDP port on {address} in {self.port_min}-{self.port_max}")


class ScopedPeerConnection(IceHookedPeerConnection):
    """An RTCPeerConnection whose ICE follows a :class:`MediaNetwork`.

    Never uses aiortc's default ICE servers (a public STUN server): only those
    of the network, none by default. ``datagram_hook`` (tests) may drop any datagram
    it sends or receives, e.g. :class:`RandomLoss`.
    """

    def __init__(self, network: MediaNetwork | None = None,
                 configuration: RTCConfiguration | None = None, *,
                 datagram_hook: DatagramHook | None = None) -> None:
        self.network = network or MediaNetwork.loopback()
        self.datagram_hook = datagram_hook
        """Sees every datagram of this connection's host candidates (tests: loss injection)."""
        if configuration is None:
            configuration = RTCConfiguration(iceServers=list(self.network.ice_servers))
        elif configuration.iceServers is None:
            configuration.iceServers = list(self.network.ice_servers)
        self._allocator = PortAllocator(self.network.port_min, self.network.port_max)
        super().__init__(configuration)

    def ice_connection_created(self, connection: aioice.Connection) -> None:
        network = self.network
        scope_connection(connection, bind_addresses=network.bind_addresses, announced_ip=network.announced_ip,
                         allows=network.allows, bind=self._allocator.bind, hook=self.datagram_hook,
                         on_short=network.datagrams.dropped_short, on_too_long=network.datagrams.dropped_too_long,
                         on_malformed=network.datagrams.dropped_malformed, tos=network.tos)
