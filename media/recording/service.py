"""Recording of consultations, following the SFU's rooms and answering to signalling.

:class:`RecordingService` (one per process, under :data:`media.recording.appkeys.RECORDING`)
sees the SFU and signalling only through :mod:`media.recording.ports`. It records every
publication of a consultation's room while the consultation's physician wants it and
the patient consented at check-in:

* ``start(consultation_id, principal)``: refused unless the caller is the
  consultation's physician, the consultation is active and ``consent_recording`` is
  true. Every publication present is tapped (``ports.Publication.add_packet_listener``),
  later ones are added on ``publication_added``, ended ones closed on
  ``publication_removed``. A tap only queues the datagram with the SFU's parsed
  header and its arrival time; one timer of the service records every tap's queue in
  one go ``BATCH_S`` after the first queued packet (and a queue is drained before its
  track or the recording closes). Video tracks start at their
  first keyframe: a keyframe is asked for (``ports.Publication.request_keyframe``) at
  start and again (rate-limited) whenever the recorder says it waits for one (after a
  loss broke the chain).
* ``stop(consultation_id, actor, reason)``: the physician, the room closing (the
  consultation ended), or the server shutting down.
* ``resume(room)``: a room opened on this node whose consultation is being recorded (the
  store's ``recording`` state says so: its node was lost and the room moved here) is recorded
  again, in a new segment of the same recording (``RecordingSession.resume``; journaled
  ``recording.resume``). Signalling calls it for each room this node opens (``on_room_opened``).
* A write error (disk full) fails the recording (``recording.failed`` to the
  parties, journaled); forwarding goes on untouched: the taps never raise.
* Background work (``cleanup_ctx``): recover recordings a crash left open at
  startup, flush every ``recording.flush_interval_s`` the tracks that did not flush
  themselves (the fsyncs run on one background thread, off the event loop),
  crypto-shred expired recordings and stills daily, stop everything at shutdown.

Events to the consultation's nurses and physician (signalling socket):
``recording.started`` / ``recording.stopped`` / ``recording.failed``. Journal acts:
``recording.start``, ``recording.stop``, ``recording.fail``, ``recording.recover``,
``recording.shred``, ``still.shred`` (:class:`core.vocabulary.Act`; the accesses are
journaled by :mod:`media.recording.http`).

Lifecycle of one consultation's recording: recording -> stopped | failed (one
recording per consultation: the files are named after it), in one or more segments.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Mapping

from config.settings import Settings
from core.tasks import Tasks
from core.vocabulary import Act, ConsultationId, MediaKind
from media.recording import ports
from media.recording.depacketizer import RtpHeaderLike
from media.recording.manifest import Manifest
from media.recording.recovery import recover
from media.recording.session import NotResumable, RecordingBusy, RecordingSession
from media.recording.stills import StillStore
from media.recording.store import RecordingStore
from media.recording.vault import Vault

logger = logging.getLogger(__name__)

DAY_S = 86400.0
CLOSE_LOST_AFTER_S = 5.0
"""A resumed recording closes the tracks its lost node left open (remuxing them: CPU) this long
after it resumed, once the parties are back on this node, not while they reconnect."""
RESUME_TRIES = 40
RESUME_PAUSE_S = 0.25
"""A recording's directory held by another process when a room moves here is being recovered
(the lost node's restart, a moment) or still written (a node that lost the store but not its
life: it keeps it); resuming tries again for RESUME_TRIES x RESUME_PAUSE_S, then gives up."""
BATCH_S = 0.25
"""How long taps queue packets before they are recorded, all in one batch (0: at once).

Recording code run between two packets of the network path runs cold (its code and data
evicted from the CPU's caches): the same work costs 2-3 times what it costs in a tight
loop (bench.recording's media replayed in real time, in batches: 0.37 %/Mbit/s of 50 ms,
0.29 of 100 ms, 0.23 of 250 ms, 0.20 of 500 ms; 0.14 in a tight loop).
A batch adds its length to what a crash loses (the files are flushed every
``recording.flush_interval_s``) and to the delay of a keyframe request after a loss."""


class RecordingRefused(Exception):
    """A start or stop that may not happen; ``status`` and ``error`` for HTTP."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


@dataclass
class _Active:
    """One consultation being recorded."""

    consultation_id: str
    room: str
    site: str
    physician: str
    session: RecordingSession
    taps: dict[str, Callable[[], None]] = field(default_factory=dict)
    """publication id -> remover of its packet listener."""
    last_pli: dict[str, float] = field(default_factory=dict)
    unlisten: Callable[[], None] | None = None


class RecordingService:
    def __init__(self, settings: Settings, store: RecordingStore, vault: Vault, *,
                 sfu: ports.MediaServerAccess, signalling: ports.SignallingAccess,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 stills: StillStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self.stills = stills
        """Stills past ``recording.retention_days`` are shredded by the daily purge too."""
        self.vault = vault
        self._sfu = sfu
        self._signalling = signalling
        self._clock = clock
        self._wall_clock = wall_clock
        self._pli_interval = settings.media.pli_interval_s
        self._active: dict[str, _Active] = {}
        self._tasks = Tasks()
        self._closing = False
        self._sync_executor: ThreadPoolExecutor | None = None
        self._batch_s = BATCH_S
        self._due: list[Callable[[], None]] = []
        """Drains of the taps that queued packets since the last batch."""
        self._batch_timer: asyncio.TimerHandle | None = None
        self._resuming: set[str] = set()
        """Consultations whose recording this process is taking over now."""

    def _executor(self) -> ThreadPoolExecutor:
        """One thread for the media files' fsyncs: off the event loop, in order."""
        if self._sync_executor is None:
            self._sync_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording-sync")
        return self._sync_executor

    # -- queries ---------------------------------------------------------------
    def recording(self, consultation_id: str) -> bool:
        return consultation_id in self._active

    def session(self, consultation_id: str) -> RecordingSession | None:
        active = self._active.get(consultation_id)
        return active.session if active else None

    # -- start / stop ------------------------------------------------------------
    async def start(self, consultation_id: str, physician: str) -> Manifest:
        """Start recording for ``physician`` (checked against the consultation)."""
        sig = self._signalling()
        sfu = self._sfu()
        if sig is None or sfu is None:
            raise RecordingRefused(503, "unavailable", "no signalling or media server in this process")
        c = await sig.get_any(ConsultationId(consultation_id))
        # Someone else's consultation looks like no consultation (no existence oracle).
        if c is None or c.physician != physician:
            raise RecordingRefused(404, "not_found", "no such consultation")
        if c.state != "active":
            raise RecordingRefused(409, "conflict", "only an active consultation can be recorded")
        if not c.consent_recording:
            raise RecordingRefused(403, "no_consent", "the patient did not consent to recording at check-in")
        if self._closing:
            raise RecordingRefused(503, "unavailable", "the server is shutting down")
        if consultation_id in self._active:
            raise RecordingRefused(409, "conflict", "already recording")
        room_name = c.room or c.id
        try:
            session = self.store.start_session(
                consultation_id, started_by=physician, flush_interval_s=self.settings.recording.flush_interval_s,
                on_error=self._on_error, clock=self._clock, sync_executor=self._executor(), node=sig.node_id)
        except FileExistsError:
            raise RecordingRefused(409, "conflict", "this consultation was already recorded") from None
        except OSError as exc:
            logger.error("recording %s could not start: %s", consultation_id, exc)
            raise RecordingRefused(507 if exc.errno == errno.ENOSPC else 500, "storage",
                                   "the recording could not be created") from None
        active = _Active(consultation_id, room_name, c.site, physician, session)
        self._active[consultation_id] = active
        try:
            await sig.journal.append(Act.RECORDING_START, actor=physician,
                                     consultation_id=ConsultationId(consultation_id), room=room_name,
                                     encrypted=self.vault.encrypted)
        except Exception:
            # No recording without its journal entry.
            self._active.pop(consultation_id, None)
            session.stop("system", "journal_failed")
            raise RecordingRefused(503, "unavailable", "the journal could not be written") from None
        if self._active.get(consultation_id) is not active:
            raise RecordingRefused(409, "conflict", "the consultation ended meanwhile")
        self._follow(active, sfu)
        await self._announce(active, {"type": "recording.started", "consultation_id": consultation_id,
                                      "by": physician, "at": session.manifest.started_at,
                                      "encrypted": self.vault.encrypted})
        return session.manifest

    def _follow(self, active: _Active, sfu: ports.MediaServer) -> None:
        """Tap every publication of the room, now and as they come and go."""
        room = sfu.create_room(active.room)
        active.unlisten = room.listen(lambda event: self._on_room_event(active, event))
        for publication in list(room.publications.values()):
            self._tap(active, publication)

    async def resume(self, room: str) -> Manifest | None:
        """A room opened on this node: when its consultation's recording is on (the store says
        so: the node that recorded it was lost, and the room moved here), record it again, in a
        new segment of the same recording. None: nothing to resume (or it could not be). Never
        raises (signalling calls it for every room it opens here)."""
        try:
            return await self._resume(room)
        except Exception:
            logger.exception("recording not resumed", extra={"room": room})
            return None

    async def _resume(self, room: str) -> Manifest | None:
        sig = self._signalling()
        sfu = self._sfu()
        if sig is None or sfu is None or self._closing:
            return None
        c = await sig.get_any(ConsultationId(room))  # a room is named after its consultation
        state = c.recording if c is not None else None
        if (c is None or (c.room or c.id) != room or not state or not state.get("active")
                or c.state != "active" or not c.consent_recording or c.physician is None
                or c.id in self._active or c.id in self._resuming):
            return None
        self._resuming.add(c.id)
        try:
            session = await self._take_over(c, state, sig.node_id)
        finally:
            self._resuming.discard(c.id)
        if session is None:
            return None
        # The consultation may have ended (or its recording stopped) while the directory was taken.
        try:
            now = await sig.get_any(ConsultationId(c.id))
        except Exception:  # the store does not answer now: as it said a moment ago
            now = c
        still = now is not None and now.state == "active" and bool((now.recording or {}).get("active"))
        if self._closing or not still:
            session.stop("system", "shutdown" if self._closing else "consultation_ended")
            return None
        active = _Active(c.id, room, c.site, c.physician, session)
        self._active[c.id] = active
        self._follow(active, sfu)
        try:
            await sig.journal.append(Act.RECORDING_RESUME, actor="system", consultation_id=ConsultationId(c.id),
                                     room=room, node=sig.node_id, segment=session.segment)
        except Exception:  # the recording goes on: the consent and the request stand
            logger.exception("recording %s: journal entry for resume failed", c.id)
        logger.info("recording %s resumed in segment %d", c.id, session.segment)
        return session.manifest

    async def _take_over(self, c: ports.Consultation, state: Mapping[str, Any], node: str) -> RecordingSession | None:
        """The session of the recording's next segment; None when someone stopped it, or its
        directory stays held by another live process."""
        started_at = state.get("started_at")
        for _ in range(RESUME_TRIES):
            try:
                session, closed = await asyncio.to_thread(
                    self.store.resume_session, c.id, node=node,
                    started_at=float(started_at) if isinstance(started_at, (int, float)) else self._wall_clock(),
                    started_by=str(state.get("started_by") or c.physician),
                    flush_interval_s=self.settings.recording.flush_interval_s, on_error=self._on_error,
                    clock=self._clock, sync_executor=self._executor())
            except RecordingBusy:
                await asyncio.sleep(RESUME_PAUSE_S)
                continue
            except NotResumable as exc:
                logger.warning("recording not resumed: %s", exc, extra={"consultation": c.id})
                return None
            if closed:
                self._spawn(self._close_lost(session))
            return session
        logger.warning("recording not resumed: its directory stays held by another process",
                       extra={"consultation": c.id})
        return None

    async def _close_lost(self, session: RecordingSession) -> None:
        """Close the tracks a lost node left open, a while after resuming (the remux off the event
        loop; the manifest then says where the lost segment ends). A stop before does it itself."""
        await asyncio.sleep(CLOSE_LOST_AFTER_S)
        if session.state != "recording":
            return
        try:
            await asyncio.to_thread(session.remux_lost_tracks)
        except Exception:
            logger.exception("recording %s: tracks of the lost segment not closed", session.consultation_id)
            return
        closed = session.close_lost_tracks()  # into the manifest (nothing left to remux)
        logger.info("recording %s: %d tracks of the lost segment closed", session.consultation_id, closed)

    async def stop(self, consultation_id: str, actor: str, reason: str = "stopped") -> Manifest:
        """Stop (``actor`` checked by the caller); raises RecordingRefused when not recording."""
        active = self._active.get(consultation_id)
        if active is None:
            raise RecordingRefused(409, "conflict", "not recording")
        manifest = self._stop_now(active, actor, reason)
        await self._announce_stop(active, manifest, actor, reason)
        return manifest

    async def stop_for(self, consultation_id: str, physician: str) -> Manifest:
        """The physician's stop: same answer as start for someone else's consultation."""
        active = self._active.get(consultation_id)
        if active is None or active.physician != physician:
            sig = self._signalling()
            c = await sig.get_any(ConsultationId(consultation_id)) if sig is not None else None
            if c is None or c.physician != physician:
                raise RecordingRefused(404, "not_found", "no such consultation")
            raise RecordingRefused(409, "conflict", "not recording")
        return await self.stop(consultation_id, physician, "stopped")

    def _stop_now(self, active: _Active, actor: str, reason: str) -> Manifest:
        """Synchronous part: untap and close the files (safe inside an SFU callback)."""
        self._active.pop(active.consultation_id, None)
        self._untap_all(active)
        return active.session.stop(actor, reason)

    async def _announce_stop(self, active: _Active, manifest: Manifest, actor: str, reason: str) -> None:
        sig = self._signalling()
        if sig is not None:
            try:
                await sig.journal.append(Act.RECORDING_STOP, actor=actor,
                                         consultation_id=ConsultationId(active.consultation_id),
                                         stop_reason=reason, tracks=len(manifest.tracks),
                                         frames=sum(t.frames for t in manifest.tracks))
            except Exception:
                logger.exception("recording %s: journal entry for stop failed", active.consultation_id)
        if active.session.state == "failed":
            await self._announce_failure(active, active.session.error)
            return
        await self._announce(active, {"type": "recording.stopped", "consultation_id": active.consultation_id,
                                      "by": actor, "at": manifest.stopped_at, "stop_reason": reason,
                                      "tracks": len(manifest.tracks)})

    # -- taps ------------------------------------------------------------------
    def _tap(self, active: _Active, publication: ports.Publication) -> None:
        info = publication.info
        if info.id in active.taps or publication.closed:
            return
        try:
            active.session.add_track(info.id, info.identity, info.source, publication.codec,
                                     publication.red_payload_type)
        except ValueError as exc:  # a source or codec the recorder does not keep (screen...)
            logger.info("recording %s: publication %s not recorded: %s", active.consultation_id, info.id, exc)
            return
        except OSError as exc:
            active.session.fail(exc)  # the manifest could not be saved
            return
        feed_batch = active.session.feed_rtp_batch
        pid = info.id
        wants_keyframe = info.kind == MediaKind.VIDEO
        clock = self._clock
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        batched = loop is not None and self._batch_s > 0
        pending: list[tuple[bytes, RtpHeaderLike, float]] = []

        def drain() -> None:
            """Record what the tap queued, in one go (with the other taps' queues: the
            recording's code and data stay in the CPU's caches for the whole batch,
            instead of being evicted by the network path between two packets). Never
            raises."""
            nonlocal pending
            if not pending:
                return
            batch, pending = pending, []
            if feed_batch(pid, batch) and wants_keyframe:
                self._keyframe(active, publication)

        def on_packet(data: bytes, header: RtpHeaderLike) -> None:
            # In the forwarding path: never raise, do as little as possible: queue the
            # datagram and the SFU's parsed header (RTX unwrapped: no second parse) with
            # its arrival time; the next batch records them.
            pending.append((data, header, clock()))
            if len(pending) == 1:
                if batched:
                    self._batch_later(drain)
                else:
                    drain()

        remove = publication.add_packet_listener(on_packet)

        def untap() -> None:
            remove()
            drain()  # what was queued is recorded before the track or the session closes

        active.taps[pid] = untap
        if wants_keyframe:
            self._keyframe(active, publication)
        logger.info("recording %s: track %s (%s) added", active.consultation_id, pid, info.source)

    def _batch_later(self, drain: Callable[[], None]) -> None:
        """Record ``drain``'s queue with the next batch (one timer for every tap)."""
        self._due.append(drain)
        if self._batch_timer is None:
            self._batch_timer = asyncio.get_running_loop().call_later(self._batch_s, self._record_batch)

    def _record_batch(self) -> None:
        self._batch_timer = None
        due, self._due = self._due, []
        for drain in due:
            drain()  # never raises; a drain already done by its untap finds nothing

    def _keyframe(self, active: _Active, publication: ports.Publication) -> None:
        now = self._clock()
        pid = publication.info.id
        if now - active.last_pli.get(pid, -1e9) < self._pli_interval:
            return
        active.last_pli[pid] = now
        try:
            publication.request_keyframe("recording")
        except Exception:
            logger.exception("recording %s: keyframe request failed", active.consultation_id)

    def _untap(self, active: _Active, publication_id: str) -> None:
        remove = active.taps.pop(publication_id, None)
        if remove is not None:
            remove()

    def _untap_all(self, active: _Active) -> None:
        for pid in list(active.taps):
            self._untap(active, pid)
        if active.unlisten is not None:
            active.unlisten()
            active.unlisten = None

    def _on_room_event(self, active: _Active, event: ports.RoomEvent) -> None:
        """SFU room callback (sync)."""
        if self._active.get(active.consultation_id) is not active:
            return
        kind = event.type
        if kind == ports.RoomEventType.PUBLICATION_ADDED and event.publication is not None:
            sfu = self._sfu()
            room = sfu.create_room(active.room) if sfu is not None else None
            publication = room.publication(event.publication.id) if room is not None else None
            if publication is not None:
                self._tap(active, publication)
        elif kind == ports.RoomEventType.PUBLICATION_REMOVED and event.publication is not None:
            self._untap(active, event.publication.id)
            active.session.remove_track(event.publication.id)
        elif kind == ports.RoomEventType.ROOM_CLOSED:
            manifest = self._stop_now(active, "system", "consultation_ended")
            self._spawn(self._announce_stop(active, manifest, "system", "consultation_ended"))

    # -- failures ----------------------------------------------------------------
    def _on_error(self, consultation_id: str, exc: BaseException) -> None:
        """From the recorder (sync, maybe inside a packet tap): untap, then tell."""
        active = self._active.pop(consultation_id, None)
        if active is None:
            return
        self._untap_all(active)
        self._spawn(self._announce_failure(active, exc, journal=True))

    async def _announce_failure(self, active: _Active, exc: BaseException | None, journal: bool = False) -> None:
        reason = _failure_reason(exc)
        sig = self._signalling()
        if journal and sig is not None:
            try:
                await sig.journal.append(Act.RECORDING_FAIL, actor="system",
                                         consultation_id=ConsultationId(active.consultation_id), error=reason)
            except Exception:
                logger.exception("recording %s: journal entry for failure failed", active.consultation_id)
        await self._announce(active, {"type": "recording.failed", "consultation_id": active.consultation_id,
                                      "at": self._wall_clock(), "error": reason})

    async def _announce(self, active: _Active, message: dict[str, Any]) -> None:
        sig = self._signalling()
        if sig is None:
            return
        targets = [("site", f"{active.site}/nurse"), ("user", active.physician)]
        try:
            await sig.emit(targets, message)
        except Exception:
            logger.exception("recording %s: event %s not sent", active.consultation_id, message.get("type"))

    # -- background ---------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    async def recover(self) -> list[str]:
        """Close what a crash left open; journaled."""
        ids = await asyncio.to_thread(recover, self.store.root, self.vault)
        sig = self._signalling()
        for cid in ids:
            if sig is not None:
                await sig.journal.append(Act.RECORDING_RECOVER, actor="system", consultation_id=ConsultationId(cid))
        return ids

    async def purge(self, now: float | None = None) -> list[str]:
        """Crypto-shred recordings past retention; journaled. Then the stills past the
        same retention (``purge_stills``); their failure does not undo the recordings'."""
        shredded = await asyncio.to_thread(self.store.purge_expired, now)
        sig = self._signalling()
        for item in shredded:
            if sig is not None:
                await sig.journal.append(Act.RECORDING_SHRED, actor="retention",
                                         consultation_id=ConsultationId(item.consultation_id),
                                         files=len(item.files), stopped_at=item.stopped_at)
        try:
            await self.purge_stills(now)
        except Exception:
            logger.exception("stills retention purge failed")
        return [item.consultation_id for item in shredded]

    async def purge_stills(self, now: float | None = None) -> list[str]:
        """Shred the stills older than ``recording.retention_days``; each one journaled as
        ``still.shred`` (actor ``retention``, ids only). Returns their still ids."""
        if self.stills is None:
            return []
        gone = await asyncio.to_thread(self.stills.purge_expired, self.settings.recording.retention_days,
                                       self._wall_clock() if now is None else now)
        sig = self._signalling()
        for meta in gone:
            if sig is not None:
                await sig.journal.append(Act.STILL_SHRED, actor="retention",
                                         consultation_id=ConsultationId(meta.consultation_id),
                                         still_id=meta.still_id, device=meta.device, created=meta.created)
        return [meta.still_id for meta in gone]

    async def _flush_loop(self) -> None:
        interval = self.settings.recording.flush_interval_s
        while True:
            await asyncio.sleep(interval)
            for active in list(self._active.values()):
                # Only the tracks that did not flush themselves in the meantime; never
                # raises (errors come back through _on_error).
                active.session.flush_stale()

    async def _purge_loop(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception:
                logger.exception("recording retention purge failed")
            await asyncio.sleep(DAY_S)

    def follow_moves(self) -> None:
        """Resume recordings in the rooms this node opens (:meth:`resume`): asked of signalling
        once, at startup, before :meth:`recover` (a room moved here meanwhile waits for the
        directory's lock)."""
        sig = self._signalling()
        if sig is not None and self._sfu() is not None:
            sig.on_room_opened(self.resume)

    async def run(self) -> None:
        """Start the background work (after :meth:`recover`)."""
        self._spawn(self._flush_loop())
        self._spawn(self._purge_loop())

    async def close(self) -> None:
        """Stop every recording (server shutdown), then the background work."""
        self._closing = True
        for active in list(self._active.values()):
            manifest = self._stop_now(active, "system", "shutdown")
            await self._announce_stop(active, manifest, "system", "shutdown")
        if self._batch_timer is not None:  # every tap was drained by its stop
            self._batch_timer.cancel()
            self._batch_timer = None
        self._due.clear()
        await self._tasks.close()
        if self._sync_executor is not None:
            executor, self._sync_executor = self._sync_executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)


def _failure_reason(exc: BaseException | None) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk_full"
    if isinstance(exc, OSError):
        return "write_error"
    return "recorder_error" if exc is not None else "unknown"


