"""The signalling service: sessions, visit requests, matching, consultations, reports.

One :class:`SignallingService` per process. It keeps no authoritative state of
its own: consultations, queue, presence and sessions live in the store, so that
several processes on one Redis behave as one service. What it keeps locally is
what belongs to this process: its sessions and their connections (the hub),
timers (offer timeouts, resume grace, token expiry) and the last positions sent.

Handlers take a :class:`Session` and a parsed request (see ``protocol``) and
return a reply or raise :class:`~signalling.protocol.ProtocolError`; events go
out through :meth:`emit` (store pub/sub, then each process's hub).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

from config.settings import Settings
from core.auth import AuthError, Principal, Role, TokenService
from sfu.node import NodeInfo, choose_node
from signalling import protocol as p
from signalling import queue as queue_mod
from signalling.consultation import LIVE, WAITING, Consultation, InvalidTransition, State, recording_state, transition
from signalling.directory import Directory, load_directory
from signalling.hub import Hub, Outbox
from signalling.journal import Journal
from signalling.matcher import Candidate, Waiting, eligible, estimated_wait_s, plan, queue_order
from signalling.presence import Presence
from signalling.protocol import ErrorCode, PresenceStatus, ProtocolError, WithdrawReason
from signalling.records import Records
from signalling.store import QueueOp, Store
from signalling.turn import ice_servers

logger = logging.getLogger(__name__)

SEATS: dict[Role, dict[str, Any]] = {
    Role.NURSE: {"identity": "nurse", "publish": ("camera", "microphone"), "subscribe": True, "command": False},
    Role.PHYSICIAN: {"identity": "physician", "publish": ("camera", "microphone"), "subscribe": True,
                     "command": True},
    Role.AGENT: {"identity": "agent", "publish": ("stethoscope", "dermatoscope", "otoscope"), "subscribe": False,
                 "command": False},
}
"""Room grants per seat (default deny: only what is listed)."""

SWEEP_INTERVAL_S = 1.0
FULL_ROUND_INTERVAL_S = 5.0
"""The whole matcher runs this often anyway (a safety net under incremental matching)."""
MAX_CLAIM_TRIES = 5
DROPPED_RECORD_MARGIN_S = 60.0
"""A dropped session's record outlives its grace by this much, for the sweeper that ends it."""
QUEUE_PAGE = 32
POSITION_INTERVAL_S = 0.5
NEAR_POSITION = 10
FAR_POSITION_INTERVAL_S = 5.0
"""Beyond ``NEAR_POSITION`` a request's position goes out at most this often (a long queue shifts
every request at each match: without this, 1000 waiting requests mean ~2000 messages a second)."""
TOKEN_WARNING_S = 60.0
RENEW_CHAIN_PREFIX = "renew:"
"""Store key prefix (session records' keyspace) of a renewed token's ``jti`` -> the chain's first ``iat``."""
RENEW_MIN_TTL_S = 60
"""A renewal that would leave less than this is refused: sign in again."""
PUBLICATION_FIELDS = ("id", "identity", "role", "source", "kind", "codec", "published_at", "replaces")
_SUB_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _err(code: ErrorCode, message: str) -> ProtocolError:
    return ProtocolError(code, message)


@dataclass
class Session:
    """One client's session: survives a dropped socket for the resume grace."""

    id: str
    principal: Principal
    conn: Outbox | None = None
    status: PresenceStatus = PresenceStatus.AWAY
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    grace: asyncio.TimerHandle | None = None
    token: str | None = None
    """The connection's access token (hello, auth.refresh, auth.renew): what ``auth.renew`` renews."""

    @property
    def sub(self) -> str:
        return self.principal.subject

    @property
    def role(self) -> Role:
        return self.principal.role

    def cancel_timers(self) -> None:
        for t in self.timers:
            t.cancel()
        self.timers.clear()


class SignallingService:
    def __init__(self, settings: Settings, store: Store, tokens: TokenService, journal: Journal,
                 records: Records, *, sfu: Callable[[], Any] = lambda: None,
                 accepting: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.time,
                 process_id: str | None = None) -> None:
        self.settings = settings
        self.sig = settings.signalling
        self.store = store
        self.tokens = tokens
        self.journal = journal
        self.records = records
        self.sfu = sfu
        self.accepting = accepting
        self.clock = clock
        self.proc = process_id or secrets.token_hex(6)
        self.hub = Hub()
        self.directory = Directory()
        self.sessions: dict[str, Session] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._offer_timers: dict[str, asyncio.TimerHandle] = {}
        self._kick = asyncio.Event()
        self._full_round = True
        """Run the whole matcher at the next wake-up (start, periodic safety net, lost hints)."""
        self._hint_physicians: set[str] = set()
        self._hint_requests: set[str] = set()
        self._last_full_round = 0.0
        self._positions_dirty = True
        self._last_positions: dict[str, int] = {}
        self._queue_sites: dict[str, str] = {}
        self._positions_sent_at: dict[str, float] = {}
        self._live_local: set[str] = set()
        self._closing = False
        self.decision_latency: list[float] = []
        """Seconds from a kick to the offers it made (bench and metrics)."""
        self.on_offer: Callable[[float], None] | None = None
        self._kick_at: float | None = None
        self._room_listeners: dict[str, Callable[[], None]] = {}
        self._media_sessions: dict[tuple[str, str], str] = {}
        self.node_id = self.proc
        """This process's SFU node id (when it runs an SFU)."""
        self.node_url = settings.server.public_url.rstrip("/") or settings.base_url
        """This node's base URL for clients (``teleconsult serve`` sets the bound one)."""

    # -- life ----------------------------------------------------------------
    async def start(self) -> None:
        await self.store.start()
        self.store.subscribe(self._on_envelope)
        stored = await self.store.get_directory()
        if stored is None:
            self.directory = load_directory(self.sig.directory_file)
            await self.store.put_directory(self.directory.to_dict())
        else:
            self.directory = Directory.from_dict(stored)
        await self.store.touch_process(self.sig.heartbeat_s * 3)
        await self.heartbeat_node()
        self._spawn(self._match_loop(), "match")
        self._spawn(self._sweep_loop(), "sweep")
        self._spawn(self._position_loop(), "positions")
        self._kick.set()

    async def close(self) -> None:
        self._closing = True
        for t in self._offer_timers.values():
            t.cancel()
        for s in list(self.sessions.values()):
            s.cancel_timers()
            if s.grace:
                s.grace.cancel()
            if s.conn is not None:
                await self._safe(self._mark_dropped(s))  # its client may resume on another process
            if s.role is Role.PHYSICIAN:
                await self._safe(self.store.remove_presence(s.sub, s.id))
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self.journal.close()
        await self.records.close()
        await self.store.close()

    async def _safe(self, aw: Awaitable[Any]) -> Any:
        try:
            return await aw
        except Exception as exc:
            logger.warning("cleanup step failed: %s", exc)
            return None

    def _spawn(self, coro: Awaitable[Any], name: str = "") -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._closing:
            logger.error("background task failed", exc_info=task.exception())

    def live_count(self) -> int:
        return len(self._live_local)

    # -- events ----------------------------------------------------------------
    async def emit(self, targets: Iterable[tuple[str, str]], message: dict[str, Any]) -> None:
        """Deliver to this process's sockets now, and to the other processes' through the store
        (which skip nothing: this process skips its own envelope, marked ``o``).

        ``recording.*`` events (from media.recording_service) are first kept in the consultation
        (``recording``), so that a page loaded later knows too."""
        if str(message.get("type", "")).startswith("recording."):
            await self._safe(self.note_recording(message))
        wire = [list(t) for t in targets]
        self.hub.deliver(wire, message)
        await self.store.publish({"t": wire, "m": message, "o": self.proc})

    async def note_recording(self, event: dict[str, Any]) -> bool:
        """Keep a ``recording.*`` event's outcome in the consultation (CAS); False when it is over."""
        cid = str(event.get("consultation_id") or "")
        for _ in range(5):
            got = await self._get(cid)
            if got is None:
                return False
            c, version = got
            state = recording_state(c.recording, event)
            if state is None or c.state.final:
                return False
            new = replace(c, recording=state, updated_at=self.clock())
            if await self.store.update_consultation(cid, version, new.to_dict()) is not None:
                return True
        logger.warning("recording state not kept", extra={"consultation": cid})
        return False

    async def kick(self, *, physicians: Iterable[str] = (), requests: Iterable[str] = (),
                   full: bool = False) -> None:
        """Something changed for matching: match incrementally here, refresh positions everywhere.

        ``physicians`` became free (available, or an offer lock released), ``requests`` entered
        the queue: this process matches just those (``_match_hints``). ``full``: every process
        runs the whole matcher (the periodic sweep also does, as a safety net)."""
        if full:
            await self.store.publish({"kick": 1})
            return
        self._hint_physicians.update(physicians)
        self._hint_requests.update(requests)
        self._kick_at = self._kick_at or self.clock()
        self._kick.set()
        self._positions_dirty = True
        await self.store.publish({"positions": 1})

    def _on_envelope(self, envelope: dict[str, Any]) -> None:
        if "positions" in envelope:
            self._positions_dirty = True
            return
        if "kick" in envelope:
            self._kick_at = self._kick_at or self.clock()
            self._full_round = True
            self._kick.set()
            self._positions_dirty = True
            return
        if "directory" in envelope:
            self._spawn(self._reload_directory())
            return
        if "place" in envelope:
            if envelope.get("node") == self.node_id:
                self._open_local_room(str(envelope["place"]))
            return
        if "close_room" in envelope:
            if envelope.get("node") == self.node_id:
                self._spawn(self._close_local_room(str(envelope["close_room"])))
            return
        if "ended" in envelope:
            self._live_local.discard(envelope["ended"])
            timer = self._offer_timers.pop(envelope["ended"], None)
            if timer:
                timer.cancel()
            return
        if envelope.get("o") == self.proc:
            return  # delivered locally when emitted
        self.hub.deliver(envelope.get("t", ()), envelope.get("m", {}))

    async def _reload_directory(self) -> None:
        stored = await self.store.get_directory()
        if stored is not None:
            self.directory = Directory.from_dict(stored)

    async def set_directory(self, directory: Directory) -> None:
        await self.store.put_directory(directory.to_dict())
        self.directory = directory
        await self.store.publish({"directory": 1})

    @staticmethod
    def nurses(site: str) -> tuple[str, str]:
        return ("site", f"{site}/nurse")

    @staticmethod
    def agents(site: str) -> tuple[str, str]:
        return ("site", f"{site}/agent")

    @staticmethod
    def user(sub: str) -> tuple[str, str]:
        return ("user", sub)

    # -- sessions ------------------------------------------------------------
    async def hello(self, conn_factory: Callable[[Session], Outbox], msg: p.Hello) -> tuple[Session, p.HelloOk]:
        """Verify the token, create or resume a session, attach the connection."""
        if msg.version != p.PROTOCOL_VERSION:
            raise _err(ErrorCode.UNSUPPORTED_VERSION, f"this server speaks version {p.PROTOCOL_VERSION}")
        principal = await self._verify(msg.token)
        session: Session | None = None
        resumed = False
        if msg.resume:
            session = await self._resume(msg.resume, principal)
            resumed = session is not None
        if session is None:
            session = Session(id=secrets.token_urlsafe(16), principal=principal)
            self.sessions[session.id] = session
        session.principal = principal
        session.token = msg.token
        conn = conn_factory(session)
        session.conn = conn
        self.hub.add(conn)
        await self.store.put_session(session.id, self._session_record(session, "live"),
                                     max(principal.expires_at - self.clock(), 1) + self.sig.resume_grace_s)
        await self.store.own_session(session.id)
        if resumed:
            await self.store.clear_dropped(session.id)
        self._arm_token_timers(session)
        if session.role is Role.PHYSICIAN:
            await self._publish_presence(session)
        if resumed:
            await self._peer_notice(session, p.PeerState.RESUMED)
            logger.info("session resumed", extra={"session": session.id, "role": session.role.value})
        reply = p.HelloOk(
            session=session.id, resumed=resumed,
            principal={"sub": principal.subject, "role": principal.role.value, "site": principal.site,
                       "specialties": list(self._specialties(principal)), "name": principal.name},
            ice_servers=ice_servers(self.settings.ice, principal.subject, self.clock()),
            heartbeat_s=self.sig.heartbeat_s, token_expires_at=principal.expires_at,
            server_time=self.clock(), state=await self._state(session))
        return session, reply

    async def _verify(self, token: str) -> Principal:
        try:
            return await self.tokens.verify_access(token)
        except AuthError as exc:
            raise _err(ErrorCode.AUTH_FAILED, exc.reason) from None

    def _session_record(self, s: Session, state: str) -> dict[str, Any]:
        return {"sub": s.sub, "role": s.role.value, "site": s.principal.site, "proc": self.proc,
                "state": state, "status": s.status.value}

    async def _resume(self, sid: str, principal: Principal) -> Session | None:
        record = await self.store.get_session(sid)
        if record is None or record.get("sub") != principal.subject or record.get("role") != principal.role.value \
                or record.get("site") != principal.site:
            return None
        local = self.sessions.get(sid)
        if local is not None:
            if local.conn is not None:  # a second socket takes the session over
                old = local.conn
                self.hub.remove(old)
                local.conn = None
                close = getattr(old, "close_soon", None)
                if close:
                    close(4409, "session resumed elsewhere")
            if local.grace:
                local.grace.cancel()
                local.grace = None
            return local
        session = Session(id=sid, principal=principal, status=PresenceStatus(record.get("status", "away")))
        self.sessions[sid] = session
        return session

    def _arm_token_timers(self, s: Session) -> None:
        s.cancel_timers()
        loop = asyncio.get_running_loop()
        left = s.principal.expires_at - self.clock()
        warn_in = left - min(TOKEN_WARNING_S, left / 10)
        s.timers.append(loop.call_later(max(warn_in, 0), self._warn_expiry, s))
        s.timers.append(loop.call_later(max(left, 0), self._expire_token, s))

    def _warn_expiry(self, s: Session) -> None:
        if s.conn is not None:
            left = s.principal.expires_at - self.clock()
            s.conn.send_text(_dumps(p.AuthExpiring(expires_at=s.principal.expires_at, in_s=round(left, 1)).to_wire()))

    def _expire_token(self, s: Session) -> None:
        if s.conn is not None:
            s.conn.send_text(_dumps(p.error_message(ErrorCode.TOKEN_EXPIRED, "access token expired")))
            close = getattr(s.conn, "close_soon", None)
            if close:
                close(4401, "token expired")

    async def refresh(self, s: Session, msg: p.AuthRefresh) -> p.AuthRefreshOk:
        principal = await self._verify(msg.token)
        if (principal.subject, principal.role, principal.site) != (s.sub, s.role, s.principal.site):
            raise _err(ErrorCode.FORBIDDEN, "the new token must be for the same subject, role and site")
        s.principal = principal
        s.token = msg.token
        self._arm_token_timers(s)
        return p.AuthRefreshOk(token_expires_at=principal.expires_at)

    async def renew(self, s: Session, msg: p.AuthRenew) -> p.AuthRenewOk:
        """A fresh access token for the session's principal, bounded by ``signalling.max_session_s``
        from the first token of the chain (its ``iat``, carried from renewal to renewal in the store)."""
        import jwt

        now = self.clock()
        principal = s.principal
        token = s.token
        if token is None or principal.expires_at <= now:
            raise _err(ErrorCode.TOKEN_EXPIRED, "the connection's token has expired")
        if principal.issuer != self.settings.auth.issuer:
            raise _err(ErrorCode.FORBIDDEN, "tokens of the identity provider are renewed there")
        claims = jwt.decode(token, options={"verify_signature": False})
        jti, iat = str(claims.get("jti") or ""), float(claims.get("iat") or now)
        chain = await self.store.get_session(RENEW_CHAIN_PREFIX + jti) if jti else None
        origin = float(chain["origin"]) if chain else iat
        session_ends = origin + self.sig.max_session_s
        ttl = int(min(self.settings.auth.access_ttl_s, session_ends - now))
        if ttl < RENEW_MIN_TTL_S:
            raise _err(ErrorCode.FORBIDDEN, "the session reached its maximum age: sign in again")
        new_token = self.tokens.issue_access(principal.role, principal.subject, site=principal.site,
                                             specialties=principal.specialties, name=principal.name, ttl=ttl)
        new_claims = jwt.decode(new_token, options={"verify_signature": False})
        await self.store.put_session(RENEW_CHAIN_PREFIX + str(new_claims["jti"]), {"origin": origin},
                                     max(session_ends - now, 1.0))
        s.principal = await self._verify(new_token)
        s.token = new_token
        self._arm_token_timers(s)
        await self.journal.append("auth.renew", actor=principal.subject, role=principal.role.value)
        logger.info("access token renewed", extra={"session": s.id, "role": principal.role.value})
        return p.AuthRenewOk(token=new_token, token_expires_at=s.principal.expires_at,
                             session_expires_at=session_ends)

    async def detach(self, s: Session, conn: Outbox) -> None:
        """The socket closed or died: keep the session for the resume grace."""
        if s.conn is not conn:
            return  # already taken over by a newer socket
        self.hub.remove(conn)
        s.conn = None
        s.cancel_timers()
        if self._closing:
            return
        await self._safe(self._mark_dropped(s))
        if s.role is Role.PHYSICIAN:
            if await self._safe(self.store.remove_presence(s.sub, s.id)):
                await self._safe(self.emit(self._presence_targets(),
                                           p.PresenceChanged(physician=s.sub, status="offline",
                                                             specialties=list(self._specialties(s.principal))).to_wire()))
            for c in await self._open_of(s):
                if c.state is State.OFFERED and c.offered_to == s.sub:
                    await self._safe(self._withdraw(c.id, c.offer_seq, WithdrawReason.VANISHED))
        await self._safe(self._peer_notice(s, p.PeerState.DROPPED))
        s.grace = asyncio.get_running_loop().call_later(self.sig.resume_grace_s,
                                                        lambda: self._spawn(self._grace_timer(s)))
        logger.info("session dropped", extra={"session": s.id, "role": s.role.value})

    async def _mark_dropped(self, s: Session) -> None:
        """The store's deadline for ``s``: any process ends it when it passes (this one's timer,
        or another's sweep if this process dies meanwhile)."""
        await self.store.put_session(s.id, self._session_record(s, "dropped"),
                                     self.sig.resume_grace_s + DROPPED_RECORD_MARGIN_S)
        await self.store.disown_session(s.id)
        await self.store.mark_dropped(s.id, self.clock() + self.sig.resume_grace_s)

    async def _grace_timer(self, s: Session) -> None:
        s.grace = None
        if s.conn is not None:
            return
        if await self.store.clear_dropped(s.id):
            await self._grace_over(s)
        else:
            self.sessions.pop(s.id, None)  # resumed, or ended by another process's sweep

    def _session_from_record(self, sid: str, record: dict[str, Any]) -> Session:
        """A session this process never held (its process died): enough to end it."""
        principal = Principal(subject=record["sub"], role=Role(record["role"]), site=record.get("site"))
        return Session(id=sid, principal=principal, status=PresenceStatus(record.get("status", "away")))

    async def _sweep_sessions(self) -> None:
        """Sessions of dead processes start their grace; sessions whose grace passed end, here or
        on whichever process claims them first."""
        for sid in await self.store.orphans():
            record = await self.store.get_session(sid)
            if record is None or record.get("state") != "live" or record.get("proc") == self.proc:
                continue
            s = self._session_from_record(sid, record)
            await self._mark_dropped(s)
            await self._safe(self._peer_notice(s, p.PeerState.DROPPED))
            logger.info("session of a dead process dropped", extra={"session": sid, "proc": record.get("proc")})
        for sid in await self.store.claim_due_dropped(self.clock()):
            local = self.sessions.get(sid)
            if local is not None:
                if local.grace is not None:
                    local.grace.cancel()
                    local.grace = None
                await self._grace_over(local)
                continue
            record = await self.store.get_session(sid)
            if record is not None and record.get("state") == "dropped":
                await self._grace_over(self._session_from_record(sid, record))

    async def _grace_over(self, s: Session) -> None:
        s.grace = None
        if s.conn is not None:
            return
        record = await self.store.get_session(s.id)
        if record is not None and record.get("state") == "live":
            self.sessions.pop(s.id, None)  # resumed on another process
            return
        self.sessions.pop(s.id, None)
        await self.store.delete_session(s.id)
        if any(o.conn is not None and o.sub == s.sub for o in self.sessions.values()):
            return  # the same person is back on a new session
        if s.role is Role.PHYSICIAN and (await self.store.presences()).get(s.sub) is not None:
            return  # back on a new session on another process
        logger.info("session lost", extra={"session": s.id, "role": s.role.value})
        await self._peer_notice(s, p.PeerState.LOST)
        for c in await self._open_of(s):
            if s.role is Role.NURSE and c.requested_by == s.sub and c.state in WAITING:
                await self._finish(c.id, State.EXPIRED, actor=s.sub, reason="nurse_lost")
            elif c.state in LIVE and ((s.role is Role.NURSE and c.requested_by == s.sub)
                                      or (s.role is Role.PHYSICIAN and c.physician == s.sub)):
                await self._finish(c.id, State.ENDED, actor=s.sub, reason="connection_lost")

    async def _peer_notice(self, s: Session, state: p.PeerState) -> None:
        if s.role not in SEATS:
            return
        for c in await self._open_of(s):
            if c.state not in LIVE:
                continue
            if s.role is Role.NURSE and c.requested_by != s.sub:
                continue
            msg = p.PeerConnection(consultation_id=c.id, role=s.role.value, state=state.value).to_wire()
            targets = [self.nurses(c.site), self.agents(c.site)] + ([self.user(c.physician)] if c.physician else [])
            targets = [t for t in targets if t != self._own_target(s)]
            await self.emit(targets, msg)

    def _own_target(self, s: Session) -> tuple[str, str]:
        if s.role is Role.PHYSICIAN:
            return self.user(s.sub)
        return ("site", f"{s.principal.site}/{s.role.value}")

    async def _open_of(self, s: Session) -> list[Consultation]:
        if s.role is Role.PHYSICIAN:
            party = f"user:{s.sub}"
        elif s.principal.site:
            party = f"site:{s.principal.site}"
        else:
            return []
        cids = await self.store.open_for(party)
        return [Consultation.from_dict(v.doc) for v in await self.store.get_consultations(cids)]

    async def _state(self, s: Session) -> dict[str, Any]:
        state: dict[str, Any] = {"consultations": [], "offers": [], "rooms": {}}
        if s.role is Role.PHYSICIAN:
            state["presence"] = s.status.value
        if s.role is Role.ADMIN:
            return state
        for c in sorted(await self._open_of(s), key=lambda c: c.created_at):
            if s.role is Role.NURSE and c.state.final:
                continue
            state["consultations"].append(c.view(clinical=s.role is not Role.AGENT))
            if c.state is State.OFFERED and c.offered_to == s.sub:
                state["offers"].append({"consultation": c.view(True), "expires_at": c.offer_expires_at,
                                        "timeout_s": self.sig.offer_timeout_s})
            if c.state is State.ACTIVE and c.room and self._seat(s, c):
                state["rooms"][c.id] = await self._room_join(c, s.role)
        return state

    # -- presence --------------------------------------------------------------
    def _specialties(self, principal: Principal) -> tuple[str, ...]:
        clinician = self.directory.clinicians.get(principal.subject)
        return clinician.specialties if clinician else principal.specialties

    def _languages(self, principal: Principal) -> tuple[str, ...]:
        clinician = self.directory.clinicians.get(principal.subject)
        return clinician.languages if clinician else ()

    def _presence_targets(self) -> list[tuple[str, str]]:
        return [("role", "nurse"), ("role", "physician"), ("role", "admin")]

    async def _publish_presence(self, s: Session) -> None:
        entry = Presence(s.sub, s.status, self._specialties(s.principal), self._languages(s.principal),
                         self.clock(), s.id, self.proc)
        await self.store.set_presence(s.sub, entry.to_dict())
        await self.emit(self._presence_targets(),
                        p.PresenceChanged(physician=s.sub, status=s.status.value,
                                          specialties=list(entry.specialties)).to_wire())
        if s.status is PresenceStatus.AVAILABLE:
            await self.kick(physicians=[s.sub])

    async def presence_set(self, s: Session, msg: p.PresenceSet) -> p.PresenceSetOk:
        if msg.status is PresenceStatus.AVAILABLE:
            if any(c.physician == s.sub and c.state in LIVE for c in await self._open_of(s)):
                raise _err(ErrorCode.CONFLICT, "end your consultation before becoming available")
        s.status = msg.status
        await self._publish_presence(s)
        return p.PresenceSetOk(status=s.status.value)

    async def presence_list(self, s: Session, msg: p.PresenceList) -> p.PresenceListOk:
        out = []
        for entry in (await self.store.presences()).values():
            pr = Presence.from_dict(entry)
            clinician = self.directory.clinicians.get(pr.physician)
            out.append(pr.public(clinician.name if clinician else ""))
        return p.PresenceListOk(physicians=sorted(out, key=lambda e: e["physician"]))

    # -- visit requests ------------------------------------------------------
    async def visit_request(self, s: Session, msg: p.VisitRequest) -> p.VisitRequestOk:
        site = s.principal.site
        if not site or site not in self.directory.sites:
            raise _err(ErrorCode.FORBIDDEN, "the token's site is not in the directory")
        if not self.accepting():
            raise _err(ErrorCode.UNAVAILABLE, "this server is draining; retry on another")
        if not msg.consent_teleconsultation:
            raise _err(ErrorCode.BAD_MESSAGE, "consent_teleconsultation must be true")
        if msg.specialty not in self.directory.specialties():
            raise _err(ErrorCode.BAD_MESSAGE, "no clinician of the directory has that specialty")
        if not msg.patient_ref.strip() or not msg.reason.strip():
            raise _err(ErrorCode.BAD_MESSAGE, "patient_ref and reason must not be empty")
        now = self.clock()
        c = Consultation(id="c-" + secrets.token_hex(8), site=site, specialty=msg.specialty, priority=msg.priority,
                         patient_ref=msg.patient_ref, reason=msg.reason, created_at=now, requested_by=s.sub,
                         ins=msg.ins, language=msg.language, consent_teleconsultation=True,
                         consent_recording=msg.consent_recording, updated_at=now)
        await self.store.create_consultation(c.id, c.to_dict(), queue_mod.entry(c), c.parties())
        await self.journal.append("visit.checkin", actor=s.sub, consultation_id=c.id, site=site,
                                  specialty=c.specialty, priority=c.priority.value)
        await self.journal.append("consent", actor=s.sub, consultation_id=c.id, teleconsultation=True,
                                  recording=c.consent_recording)
        await self.records.save_consultation(c.to_dict())
        logger.info("visit requested", extra={"consultation": c.id, "site": site, "priority": c.priority.value})
        position, wait = await self._position_of(c)
        self._last_positions[c.id] = position
        await self.emit([self.nurses(site)], p.ConsultationUpdated(consultation=c.view(True)).to_wire())
        await self.kick(requests=[c.id])
        return p.VisitRequestOk(consultation=c.view(True), position=position, estimated_wait_s=wait)

    async def _position_of(self, c: Consultation) -> tuple[int, float]:
        rank = await self.store.queue_rank(c.id, c.specialty)
        pos = 1 if rank is None else rank + 1
        online = await self._online_for(c.specialty)
        return pos, estimated_wait_s(pos, online)

    async def _online_for(self, specialty: str) -> int:
        return sum(1 for e in (await self.store.presences()).values()
                   if specialty in e["specialties"] and e["status"] != "away")

    async def visit_cancel(self, s: Session, msg: p.VisitCancel) -> p.VisitCancelOk:
        c = await self._load_visible(s, msg.consultation_id)
        if c.state not in WAITING:
            raise _err(ErrorCode.CONFLICT, f"a {c.state.value} consultation cannot be cancelled; end it")
        done = await self._finish(c.id, State.CANCELLED, actor=s.sub, reason="cancelled")
        return p.VisitCancelOk(consultation=done.view(True))

    async def queue_list(self, s: Session, msg: p.QueueList) -> p.QueueListOk:
        now = self.clock()
        entries = [queue_mod.waiting(e) for e in await self.store.waiting()]
        if s.role is Role.PHYSICIAN:
            mine = set(self._specialties(s.principal))
            entries = [e for e in entries if e.specialty in mine]
        return p.QueueListOk(waiting=[
            {"consultation_id": e.consultation_id, "site": e.site, "specialty": e.specialty,
             "priority": e.priority.value, "language": e.language, "waiting_s": round(now - e.since, 1),
             "state": "requested"} for e in queue_order(entries)])

    # -- loading and checks ----------------------------------------------------
    async def _get(self, cid: str) -> tuple[Consultation, int] | None:
        v = await self.store.get_consultation(cid)
        if v is None:
            return None
        return Consultation.from_dict(v.doc), v.version

    async def get_any(self, cid: str) -> Consultation | None:
        """A consultation, open (store) or finished (records)."""
        got = await self._get(cid)
        if got is not None:
            return got[0]
        doc = await self.records.get_consultation(cid)
        return Consultation.from_dict(doc) if doc else None

    def visible(self, principal: Principal, c: Consultation) -> bool:
        if principal.role is Role.ADMIN:
            return True
        if principal.role in (Role.NURSE, Role.AGENT):
            return principal.site == c.site
        return principal.subject in (c.physician, c.offered_to)

    @staticmethod
    def clinical_for(principal: Principal) -> bool:
        return principal.role in (Role.NURSE, Role.PHYSICIAN)

    async def _load_visible(self, s: Session, cid: str) -> Consultation:
        c = await self.get_any(cid)
        if c is None or not self.visible(s.principal, c):
            raise _err(ErrorCode.NOT_FOUND, "no such consultation")
        return c

    def _seat(self, s: Session, c: Consultation) -> bool:
        if s.role is Role.PHYSICIAN:
            return c.physician == s.sub
        return s.role in (Role.NURSE, Role.AGENT) and s.principal.site == c.site

    # -- transitions -------------------------------------------------------------
    async def _commit(self, old: Consultation, version: int, new: Consultation, **kw: Any) -> int | None:
        """CAS one transition, keeping the party indexes; final states go to records, then leave the store."""
        old_p = set() if old.state.final else old.parties()
        new_p = set() if new.state.final else new.parties()
        ver = await self.store.update_consultation(old.id, version, new.to_dict(), parties_remove=old_p - new_p,
                                                   parties_add=new_p - old_p, **kw)
        if ver is not None and new.state.final and old.state in LIVE:
            await self._after_live(new)  # free the physician first: the next offer need not wait for records
        if ver is not None and new.state.final:
            await self.records.save_consultation(new.to_dict())
            await self.store.update_consultation(new.id, ver, new.to_dict(), delete=True)
            await self.store.publish({"ended": new.id})
        return ver

    async def _finish(self, cid: str, target: State, *, actor: str, reason: str) -> Consultation:
        """Move to a final state (cancelled, expired, ended, failed), with every side effect."""
        for _ in range(5):
            got = await self._get(cid)
            if got is None:
                raise _err(ErrorCode.CONFLICT, "the consultation is already over")
            c, version = got
            try:
                new = transition(c, target, self.clock(), end_reason=reason)
            except InvalidTransition as exc:
                raise _err(ErrorCode.CONFLICT, str(exc)) from None
            kw: dict[str, Any] = {}
            if c.state is State.REQUESTED:
                kw["queue"] = QueueOp.REMOVE
            if c.state is State.OFFERED:
                kw.update(release_lock_of=c.offered_to, clear_offer=True, queue=QueueOp.REMOVE)
            if await self._commit(c, version, new, **kw) is None:
                continue
            act = {State.CANCELLED: "consultation.cancel", State.EXPIRED: "consultation.expire",
                   State.ENDED: "consultation.end", State.FAILED: "consultation.fail"}[target]
            await self.journal.append(act, actor=actor, consultation_id=cid, end_reason=reason,
                                      previous_state=c.state.value)
            logger.info("consultation over", extra={"consultation": cid, "state": target.value, "reason": reason})
            if c.state is State.OFFERED and c.offered_to:
                why = WithdrawReason.CANCELLED if target is State.CANCELLED else WithdrawReason.EXPIRED
                await self.emit([self.user(c.offered_to)],
                                p.OfferWithdrawn(consultation_id=cid, reason=why.value).to_wire())
            await self.emit([self.nurses(c.site)], p.ConsultationEnded(consultation=new.view(True)).to_wire())
            if c.physician:
                await self.emit([self.user(c.physician)], p.ConsultationEnded(consultation=new.view(True)).to_wire())
            if c.state in LIVE:
                await self.emit([self.agents(c.site)], p.ConsultationEnded(consultation=new.view(False)).to_wire())
            await self.kick(physicians=[ph for ph in (c.offered_to, c.physician) if ph])
            return new
        raise _err(ErrorCode.CONFLICT, "the consultation changed too often; retry")

    async def _after_live(self, c: Consultation) -> None:
        """A live consultation is over: free the physician (the next offer need not wait), close the room."""
        if c.physician:
            for s in list(self.sessions.values()):
                if s.sub == c.physician and s.role is Role.PHYSICIAN and s.conn is not None \
                        and s.status is PresenceStatus.BUSY:
                    s.status = PresenceStatus.AVAILABLE
                    await self._publish_presence(s)
        for key in [k for k in self._media_sessions if k[1] == c.id]:
            del self._media_sessions[key]
        if c.room:
            node = await self._safe(self.store.room_node(c.room))
            await self._safe(self.store.unplace_room(c.room))
            if node is None or node == self.node_id:
                await self._close_local_room(c.room)
            else:
                await self._safe(self.store.publish({"close_room": c.room, "node": node}))

    async def consultation_end(self, s: Session, msg: p.ConsultationEnd) -> p.ConsultationEndOk:
        c = await self._load_visible(s, msg.consultation_id)
        if not self._seat(s, c):
            raise _err(ErrorCode.FORBIDDEN, "only the physician or the site's nurse may end it")
        if s.role is Role.NURSE and c.state is not State.ACTIVE:
            raise _err(ErrorCode.CONFLICT, f"a nurse ends active consultations (this one is {c.state.value})")
        if c.state not in LIVE:
            raise _err(ErrorCode.CONFLICT, f"a {c.state.value} consultation cannot be ended")
        reason = re.sub(r"[^a-z0-9_]", "_", msg.reason.lower())[:32] or "completed"
        done = await self._finish(c.id, State.ENDED, actor=s.sub, reason=reason)
        return p.ConsultationEndOk(consultation=done.view(True))

    async def consultation_get(self, s: Session, msg: p.ConsultationGet) -> p.ConsultationGetOk:
        c = await self._load_visible(s, msg.consultation_id)
        return p.ConsultationGetOk(consultation=c.view(self.clinical_for(s.principal)))

    # -- matching ----------------------------------------------------------------
    async def _match_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            kicked_at = self._kick_at or self.clock()
            self._kick_at = None
            full, self._full_round = self._full_round, False
            physicians, self._hint_physicians = self._hint_physicians, set()
            requests, self._hint_requests = self._hint_requests, set()
            if not self.accepting():
                continue
            try:
                if full:
                    self._last_full_round = self.clock()
                    made = await self.match_round()
                else:
                    made = await self._match_hints(requests, physicians)
            except Exception:
                logger.exception("matching round failed")
                await asyncio.sleep(0.2)
                self._full_round = True
                self._kick.set()
                continue
            if made:
                self.decision_latency.append(self.clock() - kicked_at)
                if len(self.decision_latency) > 10000:
                    del self.decision_latency[:5000]

    async def match_round(self) -> int:
        """One pass of the pure matcher over the whole store; returns the offers made."""
        entries = [queue_mod.waiting(e) for e in await self.store.waiting()]
        if not entries:
            return 0
        presences = [Presence.from_dict(e) for e in (await self.store.presences()).values()]
        available = [pr for pr in presences if pr.status is PresenceStatus.AVAILABLE]
        if not available:
            return 0
        locked = await self.store.offer_locks([pr.physician for pr in available])
        candidates = [pr.candidate() for pr in available if pr.physician not in locked]
        # Concurrently: the journal's group commit makes one fsync for the whole round.
        results = await asyncio.gather(*(self._offer(x.consultation_id, x.physician)
                                         for x in plan(entries, candidates)))
        return sum(1 for ok in results if ok)

    async def _match_hints(self, requests: set[str], physicians: set[str]) -> int:
        """Incremental matching: only the new requests and the freed physicians.

        After a full round no eligible pair is left unmatched, so a new request's best
        physician is the longest-available eligible one, and a freed physician's best request
        is the first eligible one in queue order: the same pairs the full plan would make,
        without loading the whole queue. Claims stay atomic in the store; a claim that keeps
        failing asks for a full round."""
        made = 0
        if requests:
            entries = await self.store.queue_entries(sorted(requests))
            for w in queue_order(queue_mod.waiting(e) for e in entries):
                made += await self._match_request(w)
        for physician in sorted(physicians):
            made += await self._match_physician(physician)
        return made

    async def _free_candidates(self, physicians: Iterable[str] | None = None) -> list[Candidate]:
        presences = await self.store.presences()
        wanted = presences if physicians is None else {ph: presences[ph] for ph in physicians if ph in presences}
        available = [Presence.from_dict(e) for e in wanted.values() if e.get("status") == "available"]
        locked = await self.store.offer_locks([pr.physician for pr in available])
        return sorted((pr.candidate() for pr in available if pr.physician not in locked),
                      key=lambda c: (c.available_since, c.physician))

    async def _match_request(self, w: Waiting) -> int:
        tries = 0
        for candidate in await self._free_candidates():
            if not eligible(w, candidate):
                continue
            if await self._offer(w.consultation_id, candidate.physician):
                return 1
            tries += 1
            if tries >= MAX_CLAIM_TRIES or await self.store.get_consultation(w.consultation_id) is None:
                break
        return 0

    async def _match_physician(self, physician: str) -> int:
        found = await self._free_candidates([physician])
        if not found:
            return 0
        candidate = found[0]
        tries = 0
        async for w in self._in_queue_order(sorted(candidate.specialties)):
            if not eligible(w, candidate):
                continue
            if await self._offer(w.consultation_id, physician):
                return 1
            tries += 1
            if tries >= MAX_CLAIM_TRIES or await self.store.offer_locks([physician]):
                break
        if tries >= MAX_CLAIM_TRIES:
            self._full_round = True
            self._kick.set()
        return 0

    async def _in_queue_order(self, specialties: list[str]) -> AsyncIterator[Waiting]:
        """Waiting requests of ``specialties``, merged in queue order, read page by page."""
        offsets = dict.fromkeys(specialties, 0)
        buffers: dict[str, list[Waiting]] = {sp: [] for sp in specialties}
        done: set[str] = set()
        while True:
            for sp in specialties:
                if not buffers[sp] and sp not in done:
                    ids = await self.store.queue_ids(sp, offsets[sp], offsets[sp] + QUEUE_PAGE - 1)
                    offsets[sp] += len(ids)
                    if len(ids) < QUEUE_PAGE:
                        done.add(sp)
                    entries = await self.store.queue_entries(ids)
                    buffers[sp] = [queue_mod.waiting(e) for e in reversed(entries)]
            heads = [(buffers[sp][-1].order_key(), sp) for sp in specialties if buffers[sp]]
            if not heads:
                return
            yield buffers[min(heads)[1]].pop()

    async def _offer(self, cid: str, physician: str) -> bool:
        got = await self._get(cid)
        if got is None:
            return False
        c, version = got
        if c.state is not State.REQUESTED:
            return False
        now = self.clock()
        timeout = self.sig.offer_timeout_s
        new = transition(c, State.OFFERED, now, offered_to=physician, offer_expires_at=now + timeout,
                         offer_seq=c.offer_seq + 1)
        ver = await self.store.claim_offer(cid, version, new.to_dict(), physician, now + timeout, timeout + 5)
        if ver is None:
            return False
        await self.journal.append("offer", actor="matcher", consultation_id=cid, physician=physician,
                                  offer_seq=new.offer_seq)
        await self.emit([self.user(physician)], p.OfferReceived(consultation=new.view(True), expires_at=now + timeout,
                                                                timeout_s=timeout).to_wire())
        await self.emit([self.nurses(c.site)], p.ConsultationUpdated(consultation=new.view(True)).to_wire())
        seq = new.offer_seq
        self._offer_timers[cid] = asyncio.get_running_loop().call_later(
            timeout, lambda: self._spawn(self._withdraw(cid, seq, WithdrawReason.TIMEOUT)))
        if self.on_offer:
            self.on_offer(now)
        logger.info("offer", extra={"consultation": cid, "physician": physician})
        return True

    async def _withdraw(self, cid: str, seq: int, why: WithdrawReason, actor: str = "matcher") -> bool:
        """Offer ``seq`` of ``cid`` stops ringing (timeout, decline, vanished): back to the queue."""
        timer = self._offer_timers.pop(cid, None)
        if timer is not None:
            timer.cancel()
        for _ in range(5):
            got = await self._get(cid)
            if got is None:
                return False
            c, version = got
            if c.state is not State.OFFERED or c.offer_seq != seq or not c.offered_to:
                return False
            physician = c.offered_to
            new = transition(c, State.REQUESTED, self.clock(), tried=c.tried + (physician,))
            ver = await self._commit(c, version, new, queue=QueueOp.ADD, queue_entry=queue_mod.entry(new),
                                     release_lock_of=physician, clear_offer=True)
            if ver is None:
                continue
            act = {WithdrawReason.TIMEOUT: "offer.timeout", WithdrawReason.DECLINED: "offer.decline",
                   WithdrawReason.VANISHED: "offer.vanished"}.get(why, "offer.withdraw")
            await self.journal.append(act, actor=actor if why is WithdrawReason.DECLINED else "matcher",
                                      consultation_id=cid, physician=physician, offer_seq=seq)
            await self.emit([self.user(physician)], p.OfferWithdrawn(consultation_id=cid, reason=why.value).to_wire())
            await self.emit([self.nurses(c.site)], p.ConsultationUpdated(consultation=new.view(True)).to_wire())
            await self.kick(physicians=[physician], requests=[cid])
            return True
        return False

    async def offer_decline(self, s: Session, msg: p.OfferDecline) -> p.OfferDeclineOk:
        c = await self._load_visible(s, msg.consultation_id)
        if c.state is not State.OFFERED or c.offered_to != s.sub:
            raise _err(ErrorCode.CONFLICT, "no offer of yours rings for this consultation")
        if not await self._withdraw(c.id, c.offer_seq, WithdrawReason.DECLINED, actor=s.sub):
            raise _err(ErrorCode.CONFLICT, "the offer is no longer ringing")
        return p.OfferDeclineOk(consultation_id=c.id)

    async def offer_accept(self, s: Session, msg: p.OfferAccept) -> p.OfferAcceptOk:
        c = await self._load_visible(s, msg.consultation_id)
        if c.state is not State.OFFERED or c.offered_to != s.sub:
            raise _err(ErrorCode.CONFLICT, "no offer of yours rings for this consultation")
        got = await self._get(c.id)
        if got is None:
            raise _err(ErrorCode.CONFLICT, "the consultation is over")
        c, version = got
        if c.state is not State.OFFERED or c.offered_to != s.sub:
            raise _err(ErrorCode.CONFLICT, "the offer is no longer ringing")
        accepted = transition(c, State.ACCEPTED, self.clock(), physician=s.sub, room=c.id)
        # Keep the physician's offer lock until their presence says busy: no other offer sneaks in.
        ver = await self._commit(c, version, accepted, clear_offer=True)
        if ver is None:
            raise _err(ErrorCode.CONFLICT, "the offer is no longer ringing")
        timer = self._offer_timers.pop(c.id, None)
        if timer:
            timer.cancel()
        self._live_local.add(c.id)
        s.status = PresenceStatus.BUSY
        await self._publish_presence(s)
        await self.store.release_offer_lock(s.sub, c.id)
        await self.journal.append("offer.accept", actor=s.sub, consultation_id=c.id, physician=s.sub)
        # The room, then room tokens for each seat.
        room = c.id
        try:
            node = await self._place_room(room)
        except Exception as exc:
            logger.error("SFU room could not be placed: %s", exc, extra={"consultation": c.id})
            self._live_local.discard(c.id)
            await self._finish_failed(c.id, s)
            raise _err(ErrorCode.UNAVAILABLE, "no media node could open the room") from None
        sfu_url = node.url if node else None
        got = await self._get(c.id)
        assert got is not None
        accepted, version = got
        active = transition(accepted, State.ACTIVE, self.clock())
        if await self._commit(accepted, version, active) is None:
            raise _err(ErrorCode.CONFLICT, "the consultation changed meanwhile")
        await self.records.save_consultation(active.to_dict())
        await self.journal.append("consultation.start", actor=s.sub, consultation_id=c.id, room=room,
                                  site=c.site)
        logger.info("consultation started", extra={"consultation": c.id, "room": room,
                                                   "node": node.id if node else None})
        for role, target in ((Role.NURSE, self.nurses(c.site)), (Role.AGENT, self.agents(c.site)),
                             (Role.PHYSICIAN, self.user(s.sub))):
            grant = self._room_grant(active, role, sfu_url)
            await self.emit([target], p.ConsultationStarted(consultation=active.view(role is not Role.AGENT),
                                                            publications=await self.room_publications(room),
                                                            **grant).to_wire())
        grant = self._room_grant(active, Role.PHYSICIAN, sfu_url)
        return p.OfferAcceptOk(consultation=active.view(True), **grant)

    async def _finish_failed(self, cid: str, s: Session) -> None:
        await self._safe(self._finish(cid, State.FAILED, actor="sfu", reason="room_failed"))

    def _room_grant(self, c: Consultation, role: Role, sfu_url: str | None = None) -> dict[str, Any]:
        seat = SEATS[role]
        token = self.tokens.issue_room(c.id, seat["identity"], role=role, publish=seat["publish"],
                                       subscribe=seat["subscribe"], command=seat["command"])
        return {"room": c.id, "room_token": token, "sfu_url": sfu_url,
                "grant": {"identity": seat["identity"], "role": role.value, "publish": list(seat["publish"]),
                          "subscribe": seat["subscribe"], "command": seat["command"]}}

    async def room_token(self, s: Session, msg: p.RoomToken) -> p.RoomTokenOk:
        c = await self._load_visible(s, msg.consultation_id)
        if c.state is not State.ACTIVE or not self._seat(s, c):
            raise _err(ErrorCode.CONFLICT, "no seat of yours in an active consultation")
        return p.RoomTokenOk(**await self._room_join(c, s.role))

    async def _room_join(self, c: Consultation, role: Role) -> dict[str, Any]:
        """What a party needs to join the room now: grant, token, node URL, current publications."""
        room = c.room or c.id
        return {**self._room_grant(c, role, await self._sfu_url(room)),
                "publications": await self.room_publications(room)}

    async def room_publications(self, room: str) -> list[dict[str, Any]]:
        """The room's publications when this process's SFU hosts it; [] otherwise (another node:
        its own socket or WHEP knows them)."""
        sfu = self.sfu()
        if sfu is None or not hasattr(sfu, "publications"):
            return []
        node = await self.store.room_node(room)
        if node is not None and node != self.node_id:
            return []
        return [_publication(info) for info in sfu.publications(room)]

    async def room_publications_request(self, s: Session, msg: p.RoomPublications) -> p.RoomPublicationsOk:
        c = await self._load_visible(s, msg.consultation_id)
        if c.state is not State.ACTIVE or not self._seat(s, c):
            raise _err(ErrorCode.CONFLICT, "no seat of yours in an active consultation")
        room = c.room or c.id
        node = await self.store.room_node(room)
        if node is not None and node != self.node_id:
            raise _err(ErrorCode.WRONG_NODE, "the room is on another media node: use the consultation's sfu_url")
        return p.RoomPublicationsOk(consultation_id=c.id, room=room, publications=await self.room_publications(room))

    # -- reports -------------------------------------------------------------------
    async def report_save(self, s: Session, msg: p.ReportSave) -> p.ReportSaveOk:
        c = await self._load_visible(s, msg.consultation_id)
        if c.physician != s.sub:
            raise _err(ErrorCode.FORBIDDEN, "only the consultation's physician writes its report")
        if c.state not in (State.ACCEPTED, State.ACTIVE, State.ENDED):
            raise _err(ErrorCode.CONFLICT, f"a {c.state.value} consultation has no report")
        try:
            report = p.validate_report(msg.report)
        except ValueError as exc:
            raise _err(ErrorCode.BAD_MESSAGE, str(exc)) from None
        saved_at = await self.save_report(c, report, s.sub)
        return p.ReportSaveOk(consultation_id=c.id, saved_at=saved_at)

    async def save_report(self, c: Consultation, report: dict[str, Any], author: str) -> float:
        now = self.clock()
        await self.records.save_report(c.id, report, author, now)
        await self.journal.append("report.save", actor=author, consultation_id=c.id)
        return now

    async def report_get(self, s: Session, msg: p.ReportGet) -> p.ReportGetOk:
        c = await self._load_visible(s, msg.consultation_id)
        if s.role is Role.PHYSICIAN and c.physician != s.sub:
            raise _err(ErrorCode.FORBIDDEN, "not your consultation")
        found = await self.records.get_report(c.id) or {}
        return p.ReportGetOk(consultation_id=c.id, report=found.get("report"), saved_at=found.get("saved_at"),
                             author=found.get("author"))

    # -- media -----------------------------------------------------------------------
    def _open_room(self, sfu: Any, room: str) -> None:
        """Create the room on the SFU and relay its events (sfu.service.SfuService API)."""
        sfu.create_room(room)
        if room not in self._room_listeners and hasattr(sfu, "on_room_event"):
            self._room_listeners[room] = sfu.on_room_event(room, self.on_room_event)

    def _open_local_room(self, room: str) -> None:
        sfu = self.sfu()
        if sfu is None:
            return
        try:
            self._open_room(sfu, room)
        except Exception as exc:
            logger.error("room could not be opened on this node: %s", exc, extra={"room": room})

    async def _close_local_room(self, room: str) -> None:
        unlisten = self._room_listeners.pop(room, None)
        if unlisten is not None:
            unlisten()
        sfu = self.sfu()
        if sfu is not None:
            try:
                await sfu.close_room(room)
            except Exception as exc:
                logger.warning("closing the room failed: %s", exc, extra={"room": room})

    # -- nodes (sfu.node) ----------------------------------------------------------------
    async def heartbeat_node(self) -> None:
        """Register this process's SFU as a node (url, load, draining), alive for 3 heartbeats."""
        sfu = self.sfu()
        if sfu is None:
            return
        gauges = sfu.metrics.gauges()
        info = NodeInfo(self.node_id, self.node_url, rooms=gauges.rooms, participants=gauges.participants,
                        draining=not self.accepting())
        await self.store.register_node(self.node_id, info.to_dict(), self.sig.heartbeat_s * 3)

    async def _live_nodes(self) -> list[NodeInfo]:
        return [NodeInfo.from_dict(nid, d) for nid, d in (await self.store.nodes()).items()]

    async def _place_room(self, room: str) -> NodeInfo | None:
        """Put the room on the least loaded live node; None when no node exists at all (no SFU)."""
        nodes = await self._live_nodes()
        if not nodes:
            if self.sfu() is not None:
                raise RuntimeError("this process's node is not registered")
            return None
        placed: dict[str, int] = {}
        for node_id in (await self.store.placements()).values():
            placed[node_id] = placed.get(node_id, 0) + 1
        chosen = choose_node(nodes, placed)
        if chosen is None:
            raise RuntimeError("no live media node accepts rooms")
        await self.store.place_room(room, chosen.id)
        if chosen.id == self.node_id:
            sfu = self.sfu()
            assert sfu is not None
            self._open_room(sfu, room)
        else:
            await self.store.publish({"place": room, "node": chosen.id})
        return chosen

    async def _sfu_url(self, room: str) -> str | None:
        node_id = await self.store.room_node(room)
        if node_id is None:
            return None
        info = (await self.store.nodes()).get(node_id)
        return str(info["url"]) if info else None

    async def _sweep_nodes(self) -> None:
        """Nodes whose heartbeat expired lose their rooms: re-placed, parties told (room.moved)."""
        dead = [n for n in await self._live_nodes() if not n.alive]
        if not dead:
            return
        placements = await self.store.placements()
        for node in dead:
            if not await self.store.forget_node(node.id):
                continue  # another process took it
            logger.warning("media node lost", extra={"node": node.id})
            for room in [r for r, nid in placements.items() if nid == node.id]:
                await self._safe(self._move_room(room, node.id))

    async def _move_room(self, room: str, from_node: str) -> None:
        got = await self._get(room)
        if got is None or got[0].state is not State.ACTIVE:
            await self.store.unplace_room(room)
            return
        c = got[0]
        try:
            node = await self._place_room(room)
        except Exception:
            await self.store.unplace_room(room)
            await self._finish(c.id, State.FAILED, actor="sfu", reason="media_node_lost")
            return
        sfu_url = node.url if node else None
        await self.journal.append("room.move", actor="sfu", consultation_id=c.id, from_node=from_node,
                                  to_node=node.id if node else None)
        targets = [(Role.NURSE, self.nurses(c.site)), (Role.AGENT, self.agents(c.site))]
        if c.physician:
            targets.append((Role.PHYSICIAN, self.user(c.physician)))
        for role, target in targets:
            await self.emit([target], p.RoomMoved(consultation=c.view(role is not Role.AGENT),
                                                  publications=await self.room_publications(room),
                                                  **self._room_grant(c, role, sfu_url)).to_wire())

    async def media_offer(self, s: Session, msg: p.MediaOffer) -> p.MediaOfferOk:
        sfu = self.sfu()
        if sfu is None or not hasattr(sfu, "negotiate"):
            raise _err(ErrorCode.UNAVAILABLE, "no media server in this process")
        if msg.room_token:
            try:
                grant = self.tokens.verify_room(msg.room_token, msg.consultation_id)
            except AuthError as exc:
                raise _err(ErrorCode.AUTH_FAILED, exc.reason) from None
            c = await self._load_visible(s, grant.room)
            if grant.role is not s.role:
                raise _err(ErrorCode.FORBIDDEN, "the room token is for another seat")
        elif msg.consultation_id:
            c = await self._load_visible(s, msg.consultation_id)
            if c.state is not State.ACTIVE or not self._seat(s, c):
                raise _err(ErrorCode.CONFLICT, "no seat of yours in an active consultation")
            grant = self.tokens.verify_room(self._room_grant(c, s.role)["room_token"], c.id)
        else:
            raise _err(ErrorCode.BAD_MESSAGE, "give consultation_id or room_token")
        if c.state is not State.ACTIVE:
            raise _err(ErrorCode.CONFLICT, "the consultation is not active")
        node = await self.store.room_node(c.id)
        if node is not None and node != self.node_id:
            raise _err(ErrorCode.WRONG_NODE, "the room is on another media node: use the consultation's sfu_url")
        key = (s.id, c.id)
        try:
            result = await sfu.negotiate(grant, msg.sdp, session_id=self._media_sessions.get(key),
                                         publish=dict(msg.publish), subscribe=dict(msg.subscribe))
        except Exception as exc:
            raise self._sfu_error(exc) from None
        self._media_sessions[key] = result.session_id
        return p.MediaOfferOk(sdp=result.answer_sdp, room=c.id, identity=grant.identity,
                              media_session=result.session_id,
                              publications=[_info(pub) for pub in getattr(result, "publications", ())],
                              room_publications=await self.room_publications(c.room or c.id))

    @staticmethod
    def _sfu_error(exc: Exception) -> ProtocolError:
        status = getattr(exc, "status", None)
        reason = str(getattr(exc, "reason", exc))[:200]
        if status is None:
            logger.exception("media negotiation failed", exc_info=exc)
            return _err(ErrorCode.INTERNAL, "media negotiation failed")
        code = {403: ErrorCode.FORBIDDEN, 404: ErrorCode.NOT_FOUND, 503: ErrorCode.UNAVAILABLE}.get(
            int(status), ErrorCode.BAD_MESSAGE)
        return _err(code, f"media server: {reason}")

    async def media_leave(self, s: Session, msg: p.MediaLeave) -> p.MediaLeaveOk:
        sfu = self.sfu()
        c = await self._load_visible(s, msg.consultation_id)
        media = self._media_sessions.pop((s.id, c.id), None)
        if sfu is not None and media is not None:
            try:
                await sfu.leave(media)
            except Exception as exc:
                logger.warning("leaving the room failed: %s", exc, extra={"consultation": c.id})
        return p.MediaLeaveOk(consultation_id=c.id)

    def on_room_event(self, event: Any) -> None:
        """Called by the SFU (sync): relay to the room's sockets."""
        kind = getattr(event.type, "value", str(event.type)).replace("_", ".", 1)
        data: dict[str, Any] = {}
        if getattr(event, "participant", None) is not None:
            data["participant"] = _info(event.participant)
        if getattr(event, "publication", None) is not None:
            data["publication"] = _info(event.publication)
        self._spawn(self._relay_room_event(event.room, kind, data))

    async def _relay_room_event(self, room: str, event: str, data: dict[str, Any]) -> None:
        c = await self.get_any(room)
        if c is None:
            return
        targets = [self.nurses(c.site), self.agents(c.site)] + ([self.user(c.physician)] if c.physician else [])
        await self.emit(targets, p.RoomEvent(consultation_id=c.id, room=room, event=event, data=data).to_wire())

    # -- background loops --------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        """Offers whose process died, presences of dead processes, requests waiting too long."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:
                logger.exception("sweep failed")

    async def sweep(self) -> None:
        now = self.clock()
        await self.store.touch_process(self.sig.heartbeat_s * 3)
        await self.heartbeat_node()
        await self._sweep_nodes()
        await self._sweep_sessions()
        if now - self._last_full_round >= FULL_ROUND_INTERVAL_S:
            self._full_round = True
            self._kick.set()
        for cid in await self.store.due_offers(now - 1.0):
            got = await self._get(cid)
            if got and got[0].state is State.OFFERED:
                await self._withdraw(cid, got[0].offer_seq, WithdrawReason.TIMEOUT)
        presences = await self.store.presences()
        procs = {e["proc"] for e in presences.values()}
        alive = await self.store.live_processes(procs)
        for physician, e in presences.items():
            if e["proc"] not in alive:
                await self.store.remove_presence(physician, e["session"])
        for e in await self.store.waiting():
            if now - float(e["since"]) > queue_mod.MAX_WAIT_S:
                await self._safe(self._finish(e["id"], State.EXPIRED, actor="matcher", reason="waited_too_long"))

    async def _position_loop(self) -> None:
        while True:
            await asyncio.sleep(POSITION_INTERVAL_S)
            if not self._positions_dirty:
                continue
            self._positions_dirty = False
            try:
                await self.send_positions()
            except Exception:
                logger.exception("positions failed")

    async def send_positions(self) -> None:
        """Each waiting request's place in its specialty's queue, to the nurses of its site on this
        process, when it changed. Reads the ordered ids only; sites are cached (they never change)."""
        local_sites = {k.split("/", 1)[0] for (kind, k) in self.hub._index if kind == "site" and k.endswith("/nurse")}
        if not local_sites:
            return
        presences = list((await self.store.presences()).values())
        seen: set[str] = set()
        now = self.clock()
        for specialty in sorted(self.directory.specialties()):
            ids = await self.store.queue_ids(specialty)
            if not ids:
                continue
            unknown = [cid for cid in ids if cid not in self._queue_sites]
            for e in await self.store.queue_entries(unknown):
                self._queue_sites[e["id"]] = e.get("site", "")
            online = sum(1 for pr in presences if specialty in pr["specialties"] and pr["status"] != "away")
            for i, cid in enumerate(ids):
                if i % 200 == 199:
                    await asyncio.sleep(0)  # a long queue never stalls the loop in one burst
                seen.add(cid)
                site = self._queue_sites.get(cid)
                if site not in local_sites:
                    continue
                position = i + 1
                last = self._last_positions.get(cid)
                if last == position:
                    continue
                if last is not None and position > NEAR_POSITION and \
                        now - self._positions_sent_at.get(cid, 0.0) < FAR_POSITION_INTERVAL_S:
                    continue  # far down the queue: a place or two matters less than the load
                self._last_positions[cid] = position
                self._positions_sent_at[cid] = now
                self.hub.deliver([self.nurses(site)], p.VisitPosition(
                    consultation_id=cid, position=position,
                    estimated_wait_s=estimated_wait_s(position, online)).to_wire())
        for cache in (self._last_positions, self._queue_sites, self._positions_sent_at):
            for cid in [c for c in cache if c not in seen]:
                del cache[cid]

    # -- dispatch ------------------------------------------------------------------------
    HANDLERS: dict[str, str] = {
        "auth.refresh": "refresh", "auth.renew": "renew", "room.publications": "room_publications_request",
        "presence.set": "presence_set", "presence.list": "presence_list",
        "visit.request": "visit_request", "visit.cancel": "visit_cancel", "queue.list": "queue_list",
        "offer.accept": "offer_accept", "offer.decline": "offer_decline", "consultation.get": "consultation_get",
        "consultation.end": "consultation_end", "room.token": "room_token", "report.save": "report_save",
        "report.get": "report_get", "media.offer": "media_offer", "media.leave": "media_leave",
    }

    async def handle(self, s: Session, type_: str, msg: Any) -> Any:
        """One request of a session that said hello; the reply object (raises ProtocolError)."""
        spec = p.REQUESTS[type_]
        if s.role.value not in spec.roles:
            raise _err(ErrorCode.FORBIDDEN, f"a {s.role.value} may not send {type_}")
        if type_ == "ping":
            return p.PingOk(server_time=self.clock())
        if type_ == "hello":
            raise _err(ErrorCode.CONFLICT, "hello was already said on this connection")
        handler = getattr(self, self.HANDLERS[type_])
        return await handler(s, msg)


def _info(obj: Any) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(obj) if isinstance(obj, dict) else {"value": str(obj)}


def _publication(info: Any) -> dict[str, Any]:
    """A publication's wire form (the *Publication object* of docs/protocol.md)."""
    full = _info(info)
    return {name: full.get(name) for name in PUBLICATION_FIELDS}


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, separators=(",", ":"))
