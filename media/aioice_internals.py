"""Every aioice internal we touch, and nothing else.

aioice has no hooks for what a server needs, so we reach inside one ``Connection`` at a time
(per instance, never by patching classes or modules):

* host gathering, remote candidates and incoming checks (:func:`scope_connection`): the
  connection's ``get_component_candidates``, ``add_remote_candidate`` and
  ``request_received`` are replaced; the sockets it binds are ``StunProtocol``s (a subclass
  that drops datagrams shorter than :data:`MIN_DATAGRAM_BYTES`) appended to its private
  ``_protocols``; its ``data_received`` drops them too (a TURN relay's datagrams);
  ``_transport_policy`` is read; ``get_host_addresses`` (:func:`host_addresses`) lists the
  interfaces;
* a datagram hook on each host socket (:func:`hook_datagrams`): ``StunProtocol.transport``
  and ``datagram_received``;
* the receive path (:func:`take_datagrams`): the connection's ``data_received`` (which
  otherwise only queues a datagram for ``Connection.recv``) is wrapped, and media datagrams
  skip ``StunProtocol.datagram_received``'s STUN parse;
* the send path (:func:`nominated_pairs`, :func:`pair_destination`, :func:`pair_socket`,
  :func:`pair_transport`): the private ``_nominated`` pairs, and each pair's
  ``protocol.transport`` (and, when it is a plain UDP transport, its socket's descriptor) and
  ``remote_addr``.
* closing what a stuck close left open (:func:`close_sockets`): ``_query_consent_task``,
  ``_nominated``, each of ``_protocols``' transport.

Loads only on the aioice versions ``tests/media/test_aioice_internals.py`` checked.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, cast

import aioice
import aioice.ice
import aioice.turn
import uvloop.loop
from aioice.candidate import Candidate, candidate_foundation, candidate_priority

from media.library_versions import VersionRange

logger = logging.getLogger(__name__)

TESTED = VersionRange("aioice", at_least="0.13", below="0.14", module=__name__)
TESTED.check_installed()

MIN_DATAGRAM_BYTES = 12
"""Nothing WebRTC sends on a media socket is shorter (an RTP header is 12 bytes and SRTP adds
a tag, a DTLS record header is 13, a STUN header 20). Shorter ones are dropped before aioice
or aiortc parse them: an empty one raised IndexError, logged with a traceback (issue 17)."""
MAX_MEDIA_DATAGRAM_BYTES = 1500
"""RTP and RTCP datagrams (first byte 128-191) longer than this cannot be SRTP-unprotected
(pylibsrtp's buffer): pylibsrtp raises ValueError, which on aiortc's receive path (SRTCP) ended
the DTLS transport's receive task, so that one hostile datagram from anywhere stopped a call's
media (bench.fuzz, udp). They are dropped at the connection and counted, never parsed."""

Address = tuple[Any, ...]
DatagramHook = Callable[[bytes, Address], bool]
"""Called with each datagram a connection is about to send or has received (and the
remote address); returning False drops it (fault injection in tests: loss, blackholing).
Host candidates only (not a TURN relay's)."""
DataReceived = Callable[[bytes, int], None]
"""A connection's datagram callback: (datagram, ICE component)."""
Binder = Callable[[str, Callable[[], asyncio.DatagramProtocol]],
                  Awaitable[tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]]]
"""Binds a UDP socket on an address for a protocol factory (a port range, or ephemeral)."""
SendTo = Callable[[bytes, Any], None]


def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """The interface addresses aioice would gather host candidates on (loopback excluded)."""
    return aioice.ice.get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)


# -- gathering and admission -------------------------------------------------------------
class _GuardedStunProtocol(aioice.ice.StunProtocol):
    """A host socket that drops (and counts, ``on_short``) datagrams too short to be anything
    WebRTC sends, before aioice parses them, and (``on_malformed``) STUN headers whose
    attributes are shorter than their types: aioice's parser lets ``struct.error`` out for
    those (only ``ValueError`` means "not STUN" to it), a traceback per datagram."""

    def __init__(self, receiver: Any, on_short: Callable[[], None],
                 on_malformed: Callable[[], None]) -> None:
        super().__init__(receiver)
        self._on_short = on_short
        self._on_malformed = on_malformed

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        if len(data) < MIN_DATAGRAM_BYTES:
            self._on_short()
            return
        try:
            super().datagram_received(data, addr)
        except struct.error:
            self._on_malformed()


def _ignore() -> None:
    pass


def set_tos(sock: socket.socket, tos: int) -> None:
    """Mark what ``sock`` sends with ``tos`` (IPv4 TOS, IPv6 traffic class); a system that
    refuses leaves the default (marking is a hint to the networks on the way, never required)."""
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    except OSError as exc:
        logger.warning("cannot set the media socket's DSCP: %s", exc)


def scope_connection(connection: aioice.Connection, *, bind_addresses: Callable[[], list[str]],
                     announced_ip: str, allows: Callable[[str], bool], bind: Binder,
                     hook: DatagramHook | None = None, on_short: Callable[[], None] = _ignore,
                     on_too_long: Callable[[], None] = _ignore, on_malformed: Callable[[], None] = _ignore,
                     tos: int = 0) -> None:
    """Replace host gathering and remote-candidate intake of one aioice connection: host
    candidates on ``bind_addresses()`` only, bound by ``bind`` and announced as ``announced_ip``
    (when set); remote candidates and incoming checks from hosts that ``allows`` refuses are
    ignored. ``hook`` sees every datagram of the host sockets. Datagrams shorter than
    :data:`MIN_DATAGRAM_BYTES` are dropped, each calling ``on_short``; RTP/RTCP ones longer
    than :data:`MAX_MEDIA_DATAGRAM_BYTES`, ``on_too_long``; STUN ones aioice cannot parse,
    ``on_malformed``. ``tos`` (not 0): the IP TOS / traffic class byte of the host sockets
    (DSCP << 2)."""
    original_component = connection.get_component_candidates
    original_add_remote = connection.add_remote_candidate
    original_data_received = connection.data_received

    def data_received(data: bytes, component: int) -> None:
        n = len(data)
        if n < MIN_DATAGRAM_BYTES:
            on_short()
            return
        if n > MAX_MEDIA_DATAGRAM_BYTES and 127 < data[0] < 192:
            on_too_long()
            return
        original_data_received(data, component)

    async def get_component_candidates(component: int, addresses: list[str], timeout: int = 5
                                       ) -> list[Candidate]:
        candidates: list[Candidate] = []
        # The relay transport policy gathers no host candidates (RFC 9429 section 3.5.3), as aioice's own.
        relay_only = connection._transport_policy == aioice.ice.TransportPolicy.RELAY
        for address in ([] if relay_only else bind_addresses()):
            try:
                transport, bound = await bind(
                    address, lambda: _GuardedStunProtocol(connection, on_short, on_malformed))
            except OSError as exc:
                logger.warning("cannot bind media socket: %s", exc)
                continue
            protocol = cast(aioice.ice.StunProtocol, bound)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
                if tos:
                    set_tos(sock, tos)
            host, port = transport.get_extra_info("sockname")[:2]
            announced = announced_ip or host
            candidate = Candidate(
                foundation=candidate_foundation("host", "udp", announced),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=announced,
                port=port,
                type="host",
            )
            protocol.local_candidate = candidate
            if hook is not None:
                hook_datagrams(protocol, hook)
            connection._protocols.append(protocol)
            candidates.append(candidate)
        if connection.turn_server is not None:
            # aioice's own gathering with no host addresses yields the relayed candidate only.
            candidates += await original_component(component=component, addresses=[], timeout=timeout)
        return candidates

    async def add_remote_candidate(remote: Candidate | None) -> None:
        if remote is not None and not allows(remote.host):
            logger.info("ignored remote candidate outside the allowed networks",
                        extra={"candidate_type": remote.type})
            return
        await original_add_remote(remote)

    original_request_received = connection.request_received

    def request_received(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        # A connectivity check from an address we were not told about makes a
        # peer-reflexive candidate: without this, the allowed networks could be
        # bypassed by simply sending checks. Dropped silently: no answer leaves.
        if not allows(addr[0]):
            return
        original_request_received(message, addr, protocol)

    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
    connection.data_received = data_received  # type: ignore[method-assign]
    connection.add_remote_candidate = add_remote_candidate  # type: ignore[method-assign,assignment]
    connection.request_received = request_received  # type: ignore[method-assign]


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


def hook_datagrams(protocol: aioice.ice.StunProtocol, hook: DatagramHook) -> None:
    """``hook`` sees every datagram ``protocol`` (a host socket of a connection) sends or
    receives, and may drop it."""
    protocol.transport = _HookedTransport(protocol.transport, hook)  # type: ignore[assignment]
    received = protocol.datagram_received

    def datagram_received(data: bytes, addr: Address) -> None:
        if hook(data, addr):
            received(data, addr)

    protocol.datagram_received = datagram_received  # type: ignore[method-assign,assignment]


# -- the media paths ---------------------------------------------------------------------
def take_datagrams(connection: aioice.Connection, wrap: Callable[[DataReceived], DataReceived]) -> None:
    """Replace the connection's datagram callback ``data_received`` (which queues each
    datagram for ``Connection.recv``) with ``wrap(data_received)``; ``wrap`` decides what it
    handles itself and passes the rest on. Media datagrams (first byte 128-191: RTP/RTCP,
    never STUN, whose first two bits are 0) of the connection's host sockets then skip
    aioice's STUN parse, which raises an exception per media packet."""
    data_received = wrap(connection.data_received)
    connection.data_received = data_received  # type: ignore[method-assign,assignment]
    for protocol in list(connection._protocols):
        _skip_stun_parse(protocol, data_received)


_PARSING = (aioice.ice.StunProtocol.datagram_received, _GuardedStunProtocol.datagram_received)


def _skip_stun_parse(protocol: Any, data_received: DataReceived) -> None:
    parse_first = protocol.datagram_received
    if getattr(parse_first, "__func__", None) not in _PARSING:
        return  # already wrapped (a datagram hook): every datagram keeps going through it
    component = protocol.local_candidate.component

    def datagram_received(data: bytes, addr: Address) -> None:
        if len(data) >= MIN_DATAGRAM_BYTES and 127 < data[0] < 192:
            data_received(data, component)
        else:
            parse_first(data, addr)  # the guard drops what is too short

    protocol.datagram_received = datagram_received


def close_sockets(connection: aioice.Connection) -> None:
    """Close the connection's sockets now and stop its consent checks: what
    ``Connection.close`` ends with, for a connection whose close did not finish."""
    consent = connection._query_consent_task
    if consent is not None and not consent.done():
        consent.cancel()
    connection._nominated.clear()
    for protocol in connection._protocols:
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.close()


def nominated_pairs(connection: aioice.Connection) -> dict[int, Any]:
    """The connection's nominated candidate pair per ICE component: the live dict, which
    aioice fills when ICE completes and clears when it closes (read it per packet)."""
    return connection._nominated


def pair_destination(pair: Any) -> tuple[SendTo, Any]:
    """(``sendto`` of the pair's local socket, the remote address): what
    ``Connection.sendto`` -> ``StunProtocol.send_data`` do for a datagram, without their
    coroutines (neither waits for anything)."""
    return pair.protocol.transport.sendto, pair.remote_addr


_PLAIN_UDP = (uvloop.loop.UDPTransport, asyncio.selector_events._SelectorDatagramTransport)  # type: ignore[attr-defined]


def pair_socket(pair: Any) -> int | None:
    """The file descriptor of the pair's local socket when what ``pair_destination`` sends
    through is a plain UDP transport (uvloop's or asyncio's), so that writing the socket
    directly sends the same datagrams; None for anything in between (a TURN relay's
    ``TurnTransport``, a datagram hook's wrapper) or a closed socket."""
    transport = pair.protocol.transport
    if type(transport) not in _PLAIN_UDP or transport.is_closing():
        return None
    sock = transport.get_extra_info("socket")
    fd = sock.fileno() if sock is not None else -1
    return fd if fd >= 0 else None


def pair_transport(pair: Any) -> Any:
    """What the pair sends through (``protocol.transport``)."""
    return pair.protocol.transport


# -- stand-ins for in-process benchmarks ---------------------------------------------------
def stand_in_connection(send_on: asyncio.DatagramTransport | None = None, remote_addr: Any = None) -> Any:
    """What this module reads of a ``Connection``, with no ICE behind it (a benchmark feeds
    datagrams to its ``data_received`` itself): no host sockets, a datagram callback that
    drops, and, with ``send_on``, one nominated pair that sends on that socket to
    ``remote_addr``."""
    nominated: dict[int, Any] = {}
    if send_on is not None:
        nominated[1] = SimpleNamespace(protocol=SimpleNamespace(transport=send_on), remote_addr=remote_addr)
    return SimpleNamespace(_protocols=[], _nominated=nominated, data_received=lambda data, component: None)
