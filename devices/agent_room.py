"""One consultation's room, seen from the device agent: a WHIP session per device track,
the room data channel, commands, measurements and stills.

:class:`WhipPublisher` lifecycle::

    new ──start()──▶ publishing ──(connected)──▶ published
                        ▲                          │ connection failed/closed by the far end
                        └────── backoff ◀──────────┘
    any ──close()──▶ closed (DELETE of the WHIP session, peer connection closed; idempotent)

A refused POST (401/403/404: token expired, room gone) stops republishing: the owner
learns it through ``on_refused`` and may give a fresh token (site mode) or leave.

WHIP goes to the room's media node (``sfu_url`` of ``consultation.started``,
``room.token.ok``, ``room.moved``), or to the server's base URL when there is none
(room-token mode); the session's DELETE goes to the node that made it.

:class:`RoomLink` lifecycle: new → started (publishers run, channel messages handled)
→ [moved (``room.moved``: every WHIP session deleted, every device published again with
the new token at the new node; adapters and their tracks kept)]* → closed (publishers
closed, adapters closed; idempotent).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Callable, Optional
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCConfiguration, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy

from core.backoff import retry_delay
from media.ice import MediaNetwork, ScopedPeerConnection
from media.red import set_red_fmtp

from .adapter import DeviceAdapter, MediaKind
from .agent_messages import (Command, CommandRefused, device_status_message, dumps, make_preview,
                             measurement_message, parse_command, parse_envelope, parse_site_share, parse_viewing,
                             result_error, result_ok)
from .agent_uplink import SiteUplink, tos_for
from .errors import DeviceCommandError
from .measurements import Measurement
from .opus_encoder import OpusConfig, stethoscope_codecs, use_stethoscope_encoder
from .sdp import set_opus_fmtp, stethoscope_opus_params

logger = logging.getLogger(__name__)

DATA_LABEL = "room"
CONNECT_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 15.0
MAX_BACKOFF_S = 10.0
MAX_CONSECUTIVE_FAILURES = 30
"""About five minutes of retries at the capped backoff, then the publisher gives up."""
MAX_PENDING_COMMANDS = 8
STATUS_CHANGING_ACTIONS = frozenset({"power", "set_mode", "set_gain", "calibrate"})


class WhipRefused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"WHIP {status}")
        self.status = status
        self.body = body[:200]


class SessionTrack(MediaStreamTrack):
    """One WHIP session's view of a device track. aiortc stops a sender's track when the
    sender stops (any ``pc.close()``): publishing the device track itself would end it with
    the first session, and every later session (a reconnection, a fresh token, ``room.moved``)
    would send nothing. This proxy ends instead; the device track lives on until its adapter
    closes. One session reads the device track at a time (the previous one is torn down first)."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        return await self._source.recv()


class WhipPublisher:
    """Publishes one track over WHIP and keeps it published across network drops."""

    def __init__(self, link: "RoomLink", source: str, track: MediaStreamTrack, *, data_channel: bool) -> None:
        self.link = link
        self.source = source
        self.track = track
        self.data_channel = data_channel
        self.pc: Optional[ScopedPeerConnection] = None
        self.channel: Any = None
        self.location: Optional[str] = None
        self.session_url: Optional[str] = None
        """The WHIP session's absolute URL (on the node that made it), for its DELETE."""
        self.publishes = 0
        """How many times a session was made (1 + reconnections)."""
        self.connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = False
        self._task: Optional[asyncio.Task[None]] = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"whip-{self.source}")

    async def _run(self) -> None:
        failures = 0
        while not self._closing and failures < MAX_CONSECUTIVE_FAILURES:
            try:
                await self._publish()
                failures = 0
                await self._lost.wait()
                if not self._closing:
                    logger.warning("whip %s: connection lost; publishing again", self.source,
                                   extra={"room": self.link.room})
            except WhipRefused as exc:
                logger.warning("whip %s: refused (%d)", self.source, exc.status, extra={"room": self.link.room})
                if exc.status in (401, 403, 404):
                    await self._teardown(delete=False)
                    self.link.publisher_refused(self, exc.status)
                    return
                failures += 1
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
                failures += 1
                logger.warning("whip %s: publish failed (%s), attempt %d", self.source, type(exc).__name__,
                               failures, extra={"room": self.link.room})
            if self._closing:
                break
            await self._teardown(delete=True)
            await asyncio.sleep(retry_delay(failures, MAX_BACKOFF_S))
        if not self._closing:
            logger.error("whip %s: giving up after %d failures", self.source, failures,
                         extra={"room": self.link.room})

    async def _publish(self) -> None:
        self._lost.clear()
        self.connected.clear()
        network = self.link.network
        if self.link.dscp:
            network = dataclasses.replace(network, tos=tos_for(self.track.kind))
        pc = ScopedPeerConnection(network, RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.pc = pc
        transceiver = pc.addTransceiver(SessionTrack(self.track), direction="sendonly")
        stethoscope = self.source == "stethoscope"
        if stethoscope:
            # RED first, then Opus (devices/opus_encoder.py).
            transceiver.setCodecPreferences(stethoscope_codecs(OpusConfig()))
            # Not VOIP: see devices/opus_encoder.py (the VOIP high-pass eats S1/S2).
            encoder = use_stethoscope_encoder(transceiver.sender, OpusConfig())
        if self.data_channel:
            channel = pc.createDataChannel(DATA_LABEL)
            self.channel = channel
            channel.on("open", self.link.channel_open)
            channel.on("message", self.link.channel_message)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                self.connected.set()
            elif state in ("failed", "closed") and pc is self.pc:
                self._lost.set()

        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        if stethoscope:
            # Tell the far end what the encoder sends: stereo, FEC, no DTX, >= 64 kbit/s.
            assert transceiver.mid is not None  # set by setLocalDescription
            offer = set_opus_fmtp(offer, transceiver.mid, stethoscope_opus_params(OpusConfig().bitrate))
            offer = set_red_fmtp(offer, levels=OpusConfig().red_distance + 1)
        whip_base = self.link.whip_base
        url = f"{whip_base}/whip/{self.link.room}?source={self.source}"
        headers = {"Authorization": f"Bearer {self.link.token}", "Content-Type": "application/sdp"}
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with self.link.http.post(url, data=offer, headers=headers, timeout=timeout) as response:
            body = await response.text()
            if response.status != 201:
                raise WhipRefused(response.status, body)
            self.location = response.headers.get("Location")
            self.session_url = urljoin(whip_base + "/", self.location) if self.location else None
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        if stethoscope:
            assert transceiver.mid is not None
            encoder.answered(body, transceiver.mid)  # RED when the SFU accepted it
        # Its REMB, encoder target and pacing join the site's uplink (devices/agent_uplink.py).
        self.link.uplink.attach(self.source, transceiver.sender)
        await asyncio.wait_for(self.connected.wait(), CONNECT_TIMEOUT_S)
        self.publishes += 1
        logger.info("whip %s: published", self.source,
                    extra={"room": self.link.room, "session": (self.location or "").rsplit("/", 1)[-1]})

    async def _teardown(self, *, delete: bool) -> None:
        pc, self.pc = self.pc, None
        if pc is not None:
            for transceiver in pc.getTransceivers():
                self.link.uplink.detach(self.source, transceiver.sender)
        location = self.session_url
        self.location = self.session_url = None
        self.channel = None if self.data_channel else self.channel
        if delete and location:
            try:
                timeout = aiohttp.ClientTimeout(total=5)
                async with self.link.http.delete(location, timeout=timeout,
                                                 headers={"Authorization": f"Bearer {self.link.token}"}):
                    pass
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                pass  # the server may be gone: the session dies with it
        if pc is not None:
            await pc.close()

    @property
    def stopped(self) -> bool:
        """The publishing loop ended (refused, or gave up) without close()."""
        return self._task is not None and self._task.done() and not self._closing

    def drop(self) -> None:
        """Act as if the network dropped this session (tests, diagnostics)."""
        self._lost.set()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._lost.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._teardown(delete=True)


class RoomLink:
    """The agent's presence in one consultation's room."""

    def __init__(self, *, http: aiohttp.ClientSession, base_url: str, consultation_id: str, room: str, token: str,
                 adapters: dict[str, DeviceAdapter], network: MediaNetwork, sfu_url: Optional[str] = None,
                 on_refused: Optional[Callable[["RoomLink", int], None]] = None, dscp: bool = True) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        """The teleconsult server: REST (stills), and WHIP when there is no ``sfu_url``."""
        self.consultation_id = consultation_id
        self.room = room
        self.token = token
        self.sfu_url = sfu_url.rstrip("/") if sfu_url else None
        """The room's media node (WHIP), when signalling gave one."""
        self.moves = 0
        """How many ``room.moved`` were followed."""
        self.adapters = adapters
        self.network = network
        self.dscp = dscp
        """Mark each session's packets by its kind (``media.dscp``)."""
        self.publishers: dict[str, WhipPublisher] = {}
        self.uplink = SiteUplink([name for name, a in adapters.items() if a.kind is not MediaKind.DATA],
                                 self._uplink_changed)
        self.closed = False
        self._on_refused = on_refused
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listeners: list[tuple[DeviceAdapter, Callable[[Measurement], None]]] = []
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}
        """This consultation's last measurement of each device and quantity: a cuff reads once in 30 s
        and a thermometer once in 10 s, so a physician who joins (or reloads) after a reading still sees
        it, with its own time. Per room: one patient's readings never reach the next consultation."""

    # -- life ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for adapter in self.adapters.values():
            await adapter.start()

            def listener(measurement: Measurement) -> None:
                # Video chains run in executor threads: hop back to the loop to send.
                loop.call_soon_threadsafe(self._measurement, measurement)

            adapter.add_measurement_listener(listener)
            self._listeners.append((adapter, listener))
        self.uplink.start()
        first = True
        for name, adapter in self.adapters.items():
            if adapter.kind is MediaKind.DATA:
                continue
            track = adapter.track
            assert track is not None
            publisher = WhipPublisher(self, name, track, data_channel=first)
            first = False
            self.publishers[name] = publisher
            publisher.start()
        logger.info("joined room with %d tracks", len(self.publishers),
                    extra={"consultation": self.consultation_id, "room": self.room})

    async def wait_published(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.gather(*(p.connected.wait() for p in self.publishers.values())), timeout)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for adapter, listener in self._listeners:
            adapter.remove_measurement_listener(listener)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(p.close() for p in self.publishers.values()), return_exceptions=True)
        await self.uplink.close()
        for adapter in self.adapters.values():
            await adapter.close()
        logger.info("left room", extra={"consultation": self.consultation_id, "room": self.room})

    def publisher_refused(self, publisher: WhipPublisher, status: int) -> None:
        if self._on_refused is not None and not self.closed:
            self._on_refused(self, status)

    @property
    def whip_base(self) -> str:
        return self.sfu_url or self.base_url

    def republish(self, token: str, sfu_url: Optional[str] = None) -> None:
        """A fresh room token after a refusal (site mode): restart stopped publishers."""
        self.token = token
        if sfu_url:
            self.sfu_url = sfu_url.rstrip("/")
        for name, publisher in list(self.publishers.items()):
            if publisher.stopped and not self.closed:
                fresh = WhipPublisher(self, name, publisher.track, data_channel=publisher.data_channel)
                self.publishers[name] = fresh
                fresh.start()

    async def move(self, room: str, token: str, sfu_url: Optional[str]) -> None:
        """``room.moved``: the room was re-placed (its node died). Delete every WHIP session
        (on the old node, with the old token; a dead node just fails the DELETE), then
        publish every device again at ``sfu_url`` with the new token. Adapters and tracks
        stay; the data channel comes back with the first publisher (a new SCTP channel:
        commands in flight while it is down get no reply)."""
        if self.closed:
            return
        old = dict(self.publishers)
        await asyncio.gather(*(p.close() for p in old.values()), return_exceptions=True)
        if self.closed:
            return
        self.room = room
        self.token = token
        self.sfu_url = sfu_url.rstrip("/") if sfu_url else None
        self.moves += 1
        for name, publisher in old.items():
            fresh = WhipPublisher(self, name, publisher.track, data_channel=publisher.data_channel)
            self.publishers[name] = fresh
            fresh.start()
        logger.info("room moved: publishing %d tracks again", len(self.publishers),
                    extra={"consultation": self.consultation_id, "room": self.room, "sfu_url": self.whip_base})

    # -- the data channel -----------------------------------------------------------------
    @property
    def channel(self) -> Any:
        for publisher in self.publishers.values():
            if publisher.data_channel:
                return publisher.channel
        return None

    def send(self, message: dict[str, Any]) -> bool:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return False
        channel.send(dumps(message))
        return True

    def announce(self) -> None:
        """Every device's status and its last measurements (at join, and when someone joins later)."""
        for adapter in self.adapters.values():
            self.send(device_status_message(adapter))
        for message in list(self._latest.values()):
            self.send(message)
        uplink = self.uplink.message()
        if uplink is not None:
            self.send(uplink)

    def _uplink_changed(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self.send(message)

    def channel_open(self) -> None:
        self.announce()

    def channel_message(self, text: Any) -> None:
        envelope = parse_envelope(text)
        if envelope is None:
            return
        if envelope.get("from") == "sfu":
            data = envelope.get("data")
            share = parse_site_share(data)
            if share is not None:
                self.uplink.site_share(share)
                return
            logger.info("sfu notice on the room channel: %s", data.get("type") if isinstance(data, dict) else "?",
                        extra={"room": self.room})
            return
        data = envelope.get("data")
        if isinstance(data, dict) and data.get("type") == "status_request":
            self.announce()
            return
        viewing = parse_viewing(envelope, set(self.adapters))
        if viewing is not None:
            self.uplink.view(viewing)
            return
        try:
            command = parse_command(envelope, set(self.adapters))
        except CommandRefused as exc:
            logger.info("command refused: %s", exc.reason if exc.device else "bad command",
                        extra={"room": self.room, "command": exc.id, "sender_role": envelope.get("role")})
            self.send(result_error(exc.id, exc.device, exc.reason))
            return
        if command is None:
            return
        if len(self._tasks) >= MAX_PENDING_COMMANDS:
            self.send(result_error(command.id, command.device, "busy: too many commands in progress",
                                   command.action))
            return
        task = asyncio.create_task(self._run_command(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_command(self, command: Command) -> None:
        adapter = self.adapters[command.device]
        try:
            reply = await adapter.handle_command(command.fields)
        except DeviceCommandError as exc:
            logger.info("command %s on %s refused", command.action, command.device,
                        extra={"room": self.room, "command": command.id})
            self.send(result_error(command.id, command.device, str(exc), command.action))
            return
        logger.info("command %s on %s done", command.action, command.device,
                    extra={"room": self.room, "command": command.id})
        if command.action == "still":
            await self._deliver_still(command, adapter, reply)
            return
        self.send(result_ok(command, adapter, reply))
        if command.action in STATUS_CHANGING_ACTIONS:
            self.send(device_status_message(adapter))

    async def _deliver_still(self, command: Command, adapter: DeviceAdapter, reply: dict[str, Any]) -> None:
        still = adapter.take_still(reply["still_id"])
        url = f"{self.base_url}/api/consultations/{self.consultation_id}/stills"
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": still.mime, "X-Device": adapter.name}
        try:
            async with self.http.post(url, data=still.data, headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=60)) as response:
                body = await response.json(content_type=None) if response.status == 201 else None
                status = response.status
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            logger.warning("still upload failed (%s)", type(exc).__name__, extra={"room": self.room})
            self.send(result_error(command.id, command.device, "still upload failed", command.action))
            return
        if body is None:
            logger.warning("still upload refused (%d)", status, extra={"room": self.room})
            self.send(result_error(command.id, command.device, f"still upload refused ({status})", command.action))
            return
        preview = await asyncio.get_running_loop().run_in_executor(None, make_preview, still.data)
        logger.info("still %s uploaded", body["still_id"], extra={"room": self.room, "command": command.id})
        self.send(result_ok(command, adapter, {"still_id": body["still_id"], "width": body["width"],
                                               "height": body["height"], "mime": body["mime"]}))
        self.send({"type": "still_ready", "id": command.id, "device": adapter.name, "still_id": body["still_id"],
                   "width": body["width"], "height": body["height"], "mime": body["mime"], "url": body["url"],
                   "preview": preview})

    # -- measurements ------------------------------------------------------------------------
    def _measurement(self, measurement: Measurement) -> None:
        if self.closed:
            return
        message = measurement_message(measurement)
        if message is not None:
            self._latest[(message["device"], message["name"])] = message
            self.send(message)
