"""Where WebRTC media may flow: bound and announced addresses, ports, remote networks.

aioice gathers a host candidate on every interface address but 127.0.0.1, on
an ephemeral port, and checks every remote candidate it is given. A server
needs the opposite: bind one configured address (127.0.0.1 in tests and
benches), within a port range, announce a public address behind NAT, and never
send a connectivity check outside the networks it serves.

:class:`ScopedPeerConnection` is an ``RTCPeerConnection`` whose ICE transports
follow a :class:`MediaNetwork`. It is the one place that touches aiortc's and
aioice's internals for this (``RTCPeerConnection.__createDtlsTransport`` and
``aioice.Connection``'s candidate gathering, remote candidates and incoming
checks); ``tests/media/test_ice.py`` checks
them so that an upgrade that changes them fails loudly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

import aioice
import aioice.ice
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport

from config.settings import IceSettings, MediaSettings

logger = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DatagramHook = Callable[[bytes, tuple[Any, ...]], bool]
"""Called with each datagram a peer connection is about to send or has received (and the
remote address); returning False drops it (fault injection in tests: loss, blackholing).
Host candidates only (not a TURN relay's)."""


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


class _HookedTransport:
    """A datagram transport whose ``sendto`` asks a :data:`DatagramHook` first (every send path,
    aioice's and the SFU's direct one, goes through ``protocol.transport.sendto``)."""

    def __init__(self, transport: asyncio.DatagramTransport, hook: DatagramHook) -> None:
        self._transport = transport
        self._hook = hook

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if self._hook(data, addr):
            self._transport.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _hook_protocol(protocol: Any, hook: DatagramHook) -> None:
    protocol.transport = _HookedTransport(protocol.transport, hook)
    received = protocol.datagram_received

    def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
        if hook(data, addr):
            received(data, addr)

    protocol.datagram_received = datagram_received


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

    @classmethod
    def from_settings(cls, media: MediaSettings, ice: IceSettings | None = None,
                      ice_servers: tuple[RTCIceServer, ...] = ()) -> "MediaNetwork":
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
            addresses = aioice.ice.get_host_addresses(use_ipv4=self.listen_ip == "0.0.0.0",
                                                      use_ipv6=self.listen_ip == "::")
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


def _scope_connection(connection: aioice.Connection, network: MediaNetwork,
                      allocator: PortAllocator, hook: DatagramHook | None = None) -> None:
    """Replace host gathering and remote-candidate intake of one aioice connection."""
    original_component = connection.get_component_candidates
    original_add_remote = connection.add_remote_candidate

    async def get_component_candidates(component: int, addresses: list[str], timeout: int = 5
                                       ) -> list[Candidate]:
        candidates: list[Candidate] = []
        # The relay transport policy gathers no host candidates (RFC 9429 section 3.5.3), as aioice's own.
        relay_only = connection._transport_policy == aioice.ice.TransportPolicy.RELAY
        for address in ([] if relay_only else network.bind_addresses()):
            try:
                transport, protocol = await allocator.bind(address, lambda: aioice.ice.StunProtocol(connection))
            except OSError as exc:
                logger.warning("cannot bind media socket: %s", exc)
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
            host, port = transport.get_extra_info("sockname")[:2]
            announced = network.announced_ip or host
            candidate = Candidate(
                foundation=candidate_foundation("host", "udp", announced),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=announced,
                port=port,
                type="host",
            )
            protocol.local_candidate = candidate  # type: ignore[attr-defined]
            if hook is not None:
                _hook_protocol(protocol, hook)
            connection._protocols.append(protocol)
            candidates.append(candidate)
        if connection.turn_server is not None:
            # aioice's own gathering with no host addresses yields the relayed candidate only.
            candidates += await original_component(component=component, addresses=[], timeout=timeout)
        return candidates

    async def add_remote_candidate(remote: Candidate | None) -> None:
        if remote is not None and not network.allows(remote.host):
            logger.info("ignored remote candidate outside the allowed networks",
                        extra={"candidate_type": remote.type})
            return
        await original_add_remote(remote)

    original_request_received = connection.request_received

    def request_received(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        # A connectivity check from an address we were not told about makes a
        # peer-reflexive candidate: without this, the allowed networks could be
        # bypassed by simply sending checks. Dropped silently: no answer leaves.
        if not network.allows(addr[0]):
            return
        original_request_received(message, addr, protocol)

    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
    connection.add_remote_candidate = add_remote_candidate  # type: ignore[method-assign]
    connection.request_received = request_received  # type: ignore[method-assign]


class ScopedPeerConnection(RTCPeerConnection):
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

    def _RTCPeerConnection__createDtlsTransport(self) -> RTCDtlsTransport:  # noqa: N802
        dtls: RTCDtlsTransport = RTCPeerConnection._RTCPeerConnection__createDtlsTransport(self)  # type: ignore[attr-defined]
        _scope_connection(dtls.transport.iceGatherer._connection, self.network, self._allocator,
                          self.datagram_hook)
        return dtls
