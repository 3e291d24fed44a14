"""The device agent: runs on the cabin computer and brings the site's devices into consultations.

::

    teleconsult [--config FILE] agent --server URL (--token ROOM_TOKEN | --site-token ACCESS_TOKEN)
        --devices stethoscope,dermatoscope,otoscope[,vitals] [--simulate]

* **Room token** (one consultation): joins the room the token names, until stopped.
* **Site token** (an access token of role ``agent``): keeps a signalling socket
  (``/ws``, docs/protocol.md) open; joins each consultation of its site when
  ``consultation.started`` brings its room token, leaves on ``consultation.ended``;
  after a dropped socket it reconnects with ``hello.resume`` and reconciles with the
  open consultations ``hello.ok`` lists (asking ``room.token`` for those it must join).
  It publishes at the room's media node (``sfu_url``); on ``room.moved`` (the node died,
  the room was re-placed) it deletes its WHIP sessions and publishes every device again
  at the new ``sfu_url`` with the new room token (:meth:`devices.agent_room.RoomLink.move`).
  On ``auth.expiring`` it renews its site token (``auth.renew``), which the server grants
  until ``signalling.max_session_s`` after the first token was issued.

Each join is a :class:`devices.agent_room.RoomLink`: fresh adapters (a real device is
opened only while a consultation uses it), one WHIP session per track, the room data
channel. One consultation at a time: the devices are physically in one cabin; a second
one that starts meanwhile waits until the first ends.

Lifecycle of :class:`DeviceAgent`: new → running (``run()``) → stopping (``stop()``,
SIGINT/SIGTERM: WHIP sessions deleted, socket closed) → stopped. ``stop()`` is idempotent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import itertools
import json
import logging
import signal
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

import aiohttp
import jwt
from aiortc import RTCIceServer

from config.settings import Settings, media_address_of
from core import logs
from core.backoff import retry_delay
from media.ice import MediaNetwork

from .adapter import DeviceAdapter
from .agent_room import RoomLink
from .agent_sources import StethoscopeSignal, check_device_names, make_adapters

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
SOCKET_BACKOFF_MAX_S = 10.0
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class AgentConfig:
    server: str
    """Base URL of the teleconsult server (``http(s)://host:port``)."""
    devices: tuple[str, ...]
    simulate: bool = False
    room_token: Optional[str] = None
    site_token: Optional[str] = None
    seed: int = 0
    stethoscope_signal: StethoscopeSignal = StethoscopeSignal.HEART
    """Simulated stethoscope only: what it plays (a multitone for fidelity measurements)."""

    def __post_init__(self) -> None:
        if (self.room_token is None) == (self.site_token is None):
            raise ValueError("give exactly one of a room token or a site token")
        if not self.server.startswith(("http://", "https://")):
            raise ValueError("--server must be an http:// or https:// URL")
        object.__setattr__(self, "server", self.server.rstrip("/"))
        object.__setattr__(self, "devices", check_device_names(self.devices))


def room_of(room_token: str) -> str:
    """The room a room token names (read, not verified: the server verifies it)."""
    try:
        claims = jwt.decode(room_token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise ValueError("the room token is not a JWT") from None
    room = claims.get("room")
    if claims.get("typ") != "room" or not isinstance(room, str) or not room:
        raise ValueError("not a room token (no room claim)")
    return room


def client_network(settings: Settings, server: str, ice_servers: tuple[RTCIceServer, ...] = ()) -> MediaNetwork:
    """The agent's media addresses: settings.media's address and networks, ephemeral ports
    (a client needs no port range), nothing announced. Unset, they follow the ``server`` it
    talks to (the agent serves no HTTP whose address media could take): loopback for a
    loopback server, else every address and network."""
    host = media_address_of(urlsplit(server).hostname or "")
    near = host is not None and ipaddress.ip_address(host).is_loopback
    media = settings.media.bound_to(host if near and host is not None else "0.0.0.0")
    base = MediaNetwork.from_settings(media, settings.ice, ice_servers)
    return dataclasses.replace(base, announced_ip="", port_min=0, port_max=0)


def media_node_url(raw: Any) -> Optional[str]:
    """The ``sfu_url`` signalling gave, when the agent can publish there; None: publish at
    ``--server``. A URL with port 0 is a server that advertises its configured port 0 instead
    of the bound one (``teleconsult serve`` advertises the bound one; an app started
    otherwise may not): unusable, so ignored."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        parsed = urlsplit(raw)
        port = parsed.port
    except ValueError:
        port = 0
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname or port == 0:
        logger.warning("unusable sfu_url %r: publishing at the server's URL", raw)
        return None
    return raw.rstrip("/")


def _ice_servers(raw: Any) -> tuple[RTCIceServer, ...]:
    out = []
    for server in raw if isinstance(raw, list) else []:
        if isinstance(server, dict) and server.get("urls"):
            out.append(RTCIceServer(urls=server["urls"], username=server.get("username"),
                                    credential=server.get("credential")))
    return tuple(out)


@dataclass
class _Pending:
    room: str
    token: str
    sfu_url: Optional[str] = None


@dataclass
class DeviceAgent:
    settings: Settings
    config: AgentConfig
    http: Optional[aiohttp.ClientSession] = None
    links: dict[str, RoomLink] = field(default_factory=dict)
    """consultation id -> its room link (at most one at a time)."""
    session_id: Optional[str] = None
    """The signalling session (site mode), kept to resume after a dropped socket."""
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    """Site mode: set while the socket is open and greeted."""
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _ws: Optional[aiohttp.ClientWebSocketResponse] = None
    _requests: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _network: Optional[MediaNetwork] = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    sockets_opened: int = 0

    # -- life ------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until :meth:`stop`."""
        own_http = self.http is None
        if self.http is None:
            self.http = aiohttp.ClientSession()
        self._network = client_network(self.settings, self.config.server)
        try:
            if self.config.room_token is not None:
                room = room_of(self.config.room_token)
                await self._join(room, room, self.config.room_token)
                await self._stopping.wait()
            else:
                await self._socket_loop()
        finally:
            await self._leave_all()
            for task in list(self._tasks):
                task.cancel()
            if own_http and self.http is not None:
                await self.http.close()
            logger.info("agent stopped")

    def stop(self) -> None:
        if not self._stopping.is_set():
            logger.info("agent stopping")
            self._stopping.set()
            if self._ws is not None and not self._ws.closed:
                task = asyncio.ensure_future(self._ws.close())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- rooms -----------------------------------------------------------------------
    async def _join(self, consultation_id: str, room: str, token: str, sfu_url: Optional[str] = None) -> None:
        async with self._lock:
            if self._stopping.is_set() or consultation_id in self.links:
                return
            if self.links:
                logger.info("devices busy in another consultation; this one waits",
                            extra={"consultation": consultation_id})
                self._pending[consultation_id] = _Pending(room, token, sfu_url)
                return
            assert self.http is not None and self._network is not None
            adapters: dict[str, DeviceAdapter] = await asyncio.to_thread(
                make_adapters, self.config.devices, self.settings.devices, self.config.simulate,
                seed=self.config.seed, stethoscope_signal=self.config.stethoscope_signal)
            link = RoomLink(http=self.http, base_url=self.config.server, consultation_id=consultation_id, room=room,
                            token=token, adapters=adapters, network=self._network, sfu_url=sfu_url,
                            on_refused=self._refused, dscp=self.settings.media.dscp)
            self.links[consultation_id] = link
            await link.start()

    async def _leave(self, consultation_id: str) -> None:
        async with self._lock:
            self._pending.pop(consultation_id, None)
            link = self.links.pop(consultation_id, None)
            if link is not None:
                await link.close()
            waiting = next(iter(self._pending.items()), None)
        if waiting is not None and not self._stopping.is_set():
            cid, pending = waiting
            self._pending.pop(cid, None)
            await self._join(cid, pending.room, pending.token, pending.sfu_url)

    async def _move(self, consultation_id: str, room: str, token: str, sfu_url: Optional[str]) -> None:
        """``room.moved``: follow the room to its new node (a waiting one just keeps the new token)."""
        async with self._lock:
            pending = self._pending.get(consultation_id)
            if pending is not None:
                self._pending[consultation_id] = _Pending(room, token, sfu_url)
                return
            link = self.links.get(consultation_id)
            if link is None or self._stopping.is_set():
                return
            await link.move(room, token, sfu_url)

    async def _leave_all(self) -> None:
        self._pending.clear()
        for cid in list(self.links):
            await self._leave(cid)

    def _refused(self, link: RoomLink, status: int) -> None:
        """The SFU refused a WHIP post (token expired, room gone)."""
        if self.config.site_token is None:
            logger.error("the room token was refused (%d): stopping", status, extra={"room": link.room})
            self.stop()
            return
        self._spawn(self._refresh_room_token(link))

    async def _refresh_room_token(self, link: RoomLink) -> None:
        try:
            reply = await self._request("room.token", consultation_id=link.consultation_id)
        except (ConnectionError, asyncio.TimeoutError):
            return  # the socket is down: the reconciliation after resume handles it
        if reply.get("type") == "room.token.ok":
            link.republish(reply["room_token"], media_node_url(reply.get("sfu_url")))
        else:
            await self._leave(link.consultation_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("agent task failed", exc_info=task.exception())

    # -- site mode: the signalling socket ------------------------------------------------
    async def _socket_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                await self._socket_session()
                failures = 0
            except _HelloRefused as exc:
                logger.error("signalling refused the site token: %s", exc)
                self.stop()
                return
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
                failures += 1
                logger.warning("signalling socket failed (%s), attempt %d", type(exc).__name__, failures)
            self.connected.clear()
            if self._stopping.is_set():
                return
            delay = retry_delay(failures, SOCKET_BACKOFF_MAX_S)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _socket_session(self) -> None:
        assert self.http is not None
        url = self.config.server.replace("http", "ws", 1) + "/ws"
        async with self.http.ws_connect(url, heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
            self._ws = ws
            self.sockets_opened += 1
            hello: dict[str, Any] = {"type": "hello", "id": 0, "version": PROTOCOL_VERSION,
                                     "token": self.config.site_token}
            if self.session_id:
                hello["resume"] = self.session_id
            await ws.send_str(json.dumps(hello))
            first = await ws.receive(timeout=REQUEST_TIMEOUT_S)
            if first.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError("socket closed before hello.ok")
            reply = json.loads(first.data)
            if reply.get("type") != "hello.ok":
                if reply.get("code") in ("auth_failed", "unsupported_version", "forbidden"):
                    raise _HelloRefused(reply.get("code", "?"))
                raise ConnectionError(f"hello refused: {reply.get('code')}")
            self.session_id = reply["session"]
            self._network = client_network(self.settings, self.config.server, _ice_servers(reply.get("ice_servers")))
            logger.info("signalling connected", extra={"session": self.session_id, "resumed": reply.get("resumed")})
            self.connected.set()
            self._spawn(self._reconcile(reply.get("state") or {}))
            try:
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
                    try:
                        data = json.loads(msg.data)
                    except ValueError:
                        continue
                    if isinstance(data, dict):
                        self._on_socket_message(data)
            finally:
                self._ws = None
                self.connected.clear()
                for future in self._requests.values():
                    if not future.done():
                        future.set_exception(ConnectionError("socket closed"))
                self._requests.clear()
        if not self._stopping.is_set():
            logger.warning("signalling socket closed", extra={"session": self.session_id})

    async def _request(self, type_: str, **fields: Any) -> dict[str, Any]:
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionError("no signalling socket")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        try:
            await ws.send_str(json.dumps({"type": type_, "id": request_id, **fields}))
            return await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        finally:
            self._requests.pop(request_id, None)

    def _on_socket_message(self, data: dict[str, Any]) -> None:
        request_id = data.get("id")
        if request_id is not None:
            future = self._requests.get(request_id)
            if future is not None and not future.done():
                future.set_result(data)
            return
        kind = data.get("type")
        if kind == "consultation.started":
            consultation = data.get("consultation") or {}
            cid = consultation.get("id")
            if isinstance(cid, str) and isinstance(data.get("room_token"), str):
                logger.info("consultation started", extra={"consultation": cid})
                self._spawn(self._join(cid, data.get("room") or cid, data["room_token"],
                                       media_node_url(data.get("sfu_url"))))
        elif kind == "room.moved":
            cid = (data.get("consultation") or {}).get("id")
            if isinstance(cid, str) and isinstance(data.get("room_token"), str):
                logger.info("room moved", extra={"consultation": cid, "sfu_url": data.get("sfu_url")})
                self._spawn(self._move(cid, data.get("room") or cid, data["room_token"],
                                       media_node_url(data.get("sfu_url"))))
        elif kind == "consultation.ended":
            cid = (data.get("consultation") or {}).get("id")
            if isinstance(cid, str):
                logger.info("consultation ended", extra={"consultation": cid})
                self._spawn(self._leave(cid))
        elif kind == "room.event":
            link = self.links.get(str(data.get("consultation_id")))
            if link is not None and data.get("event") == "participant.joined":
                # Someone came in after the join announcement: tell them the devices' state.
                self._spawn(self._announce_soon(link))
        elif kind == "auth.expiring":
            self._spawn(self._renew(data.get("in_s")))

    async def _renew(self, in_s: Any) -> None:
        """Site mode: a fresh site token from the server (``auth.renew``) before this one expires;
        when refused (the session's maximum age, an OpenID provider's token), a fresh one is needed."""
        try:
            reply = await self._request("auth.renew")
        except (ConnectionError, asyncio.TimeoutError) as exc:
            logger.warning("site token renewal failed (%s)", type(exc).__name__)
            return
        if reply.get("type") == "auth.renew.ok" and isinstance(reply.get("token"), str):
            self.config = dataclasses.replace(self.config, site_token=reply["token"])
            logger.info("site token renewed", extra={"expires_at": reply.get("token_expires_at")})
        else:
            logger.warning("the site token expires in %s s and was not renewed (%s): restart the agent "
                           "with a fresh one", in_s, reply.get("code"))

    async def _announce_soon(self, link: RoomLink) -> None:
        # The newcomer's channel opens just after it joins; give it a moment, bounded.
        for _ in range(3):
            await asyncio.sleep(1.0)
            if link.closed:
                return
            link.announce()

    async def _reconcile(self, state: dict[str, Any]) -> None:
        """After (re)connecting: join the site's active consultations, leave the others."""
        active = {c["id"] for c in state.get("consultations") or []
                  if isinstance(c, dict) and c.get("state") == "active" and isinstance(c.get("id"), str)}
        for cid in [c for c in self.links if c not in active]:
            await self._leave(cid)
        raw_rooms = state.get("rooms")
        rooms: dict[str, Any] = raw_rooms if isinstance(raw_rooms, dict) else {}
        for cid, link in list(self.links.items()):
            seat = rooms.get(cid)
            if not isinstance(seat, dict) or not isinstance(seat.get("room_token"), str):
                continue
            node = media_node_url(seat.get("sfu_url"))
            # A room.moved missed while the socket was down: the room is on another node.
            if node is not None and node != link.sfu_url:
                await self._move(cid, seat.get("room") or cid, seat["room_token"], node)
        for cid in active:
            if cid in self.links or cid in self._pending:
                continue
            try:
                reply = await self._request("room.token", consultation_id=cid)
            except (ConnectionError, asyncio.TimeoutError):
                return
            if reply.get("type") == "room.token.ok":
                await self._join(cid, reply["room"], reply["room_token"], media_node_url(reply.get("sfu_url")))


class _HelloRefused(Exception):
    pass


# -- the command line -------------------------------------------------------------------
def add_agent_command(sub: Any) -> None:
    """``teleconsult agent``: registered in teleconsult.cli._EXTENSIONS."""
    agent = sub.add_parser("agent", help="run the device agent of a site (cabin computer)")
    agent.add_argument("--server", required=True, help="server base URL, e.g. https://teleconsult.example.org")
    who = agent.add_mutually_exclusive_group(required=True)
    who.add_argument("--token", help="a room token: join that one consultation")
    who.add_argument("--site-token", help="an access token of role agent: join each consultation of the site")
    agent.add_argument("--devices", required=True,
                       help="comma-separated: stethoscope,dermatoscope,otoscope[,vitals]")
    agent.add_argument("--simulate", action="store_true", help="simulated devices (demos, tests)")
    agent.add_argument("--seed", type=int, default=0, help="seed of the simulated devices")
    agent.set_defaults(func=cmd_agent)


def cmd_agent(args: Any, settings: Settings) -> int:
    config = AgentConfig(server=args.server, devices=tuple(d.strip() for d in args.devices.split(",") if d.strip()),
                         simulate=args.simulate, room_token=args.token, site_token=args.site_token, seed=args.seed)
    logs.configure(settings.server.log_format, settings.server.log_level)
    return asyncio.run(run_until_signalled(DeviceAgent(settings, config)))


async def run_until_signalled(agent: DeviceAgent) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    logger.info("agent starting", extra={"devices": ",".join(agent.config.devices),
                                         "mode": "room" if agent.config.room_token else "site"})
    try:
        await agent.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
