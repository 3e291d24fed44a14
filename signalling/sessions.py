"""Sessions of this process: hello and resume, token timers and renewal, dropped sockets and
their resume grace, and what happens when a session is lost for good.

A session's record in the store says which process holds it. When a socket
drops, the store gets a deadline for the session: this process's grace timer
ends it, or, if this process dies meanwhile, another process's sweep does
(:meth:`Sessions.sweep`). A lost nurse expires the visits still waiting for her;
a lost party of a live consultation ends it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any, Callable

import jwt

from core.auth import AuthError, Principal
from core.vocabulary import Act, Role
from signalling import protocol as p
from signalling.consultation import LIVE, WAITING, Busy, FreePhysician, State
from signalling.consultations import Consultations
from signalling.context import Context, safely
from signalling.hub import Outbox, agents, nurses, seat_of, user
from signalling.offers import Offers
from signalling.presence import Presences, presence_watches
from signalling.protocol import ErrorCode, PresenceStatus, ProtocolError
from signalling.recovery import Recovery
from signalling.rooms import SEATS, Rooms
from signalling.session import Session
from signalling.turn import ice_servers

logger = logging.getLogger(__name__)

DROPPED_RECORD_MARGIN_S = 60.0
"""A dropped session's record outlives its grace by this much, for the sweeper that ends it."""
TOKEN_WARNING_S = 60.0
RENEW_CHAIN_PREFIX = "renew:"
"""Store key prefix (session records' keyspace) of a renewed token's ``jti`` -> the chain's first ``iat``."""
RENEW_MIN_TTL_S = 60
"""A renewal that would leave less than this is refused: sign in again."""
CLOSE_TAKEN_OVER = 4409
CLOSE_TOKEN_EXPIRED = 4401


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _close(conn: Outbox, code: int, reason: str) -> None:
    """Close a connection that can be closed (``ws.Connection``; the hub needs only ``send_text``)."""
    close = getattr(conn, "close_soon", None)
    if close:
        close(code, reason)


class Sessions:
    def __init__(self, ctx: Context, consultations: Consultations, presences: Presences, offers: Offers,
                 rooms: Rooms, recovery: Recovery | None = None) -> None:
        self.ctx = ctx
        self.consultations = consultations
        self.recovery = recovery or Recovery(ctx, consultations)
        self.presences = presences
        self.offers = offers
        self.rooms = rooms
        self.local: dict[str, Session] = {}
        """This process's sessions, by id (live, or dropped within their grace)."""
        presences.local = self.local

    # -- hello -------------------------------------------------------------------------------
    async def hello(self, conn_factory: Callable[[Session], Outbox], msg: p.Hello) -> tuple[Session, p.HelloOk]:
        """Verify the token, create or resume a session, attach the connection."""
        ctx = self.ctx
        if msg.version != p.PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"this server speaks version {p.PROTOCOL_VERSION}")
        principal = await self._verify(msg.token)
        session: Session | None = None
        resumed = False
        if msg.resume:
            session = await self._resume(msg.resume, principal)
            resumed = session is not None
        if session is None:
            session = Session(id=secrets.token_urlsafe(16), principal=principal)
            self.local[session.id] = session
        session.principal = principal
        session.token = msg.token
        if session.role is Role.PHYSICIAN:
            # Before the socket is attached: an accept of theirs whose process did not live to start
            # it is started now, so that the state below has its room (and this socket no event
            # before hello.ok). The sweep sees to the other parties' (``sweep``).
            await safely(self._complete_accepts(session))
        conn = conn_factory(session)
        session.conn = conn
        ctx.hub.add(conn, presence_watches(session.role, msg.presence))
        await ctx.store.put_session(session.id, self._record(session, "live"),
                                    max(principal.expires_at - ctx.clock(), 1) + ctx.sig.resume_grace_s)
        await ctx.store.own_session(session.id)
        if resumed:
            await ctx.store.clear_dropped(session.id)
        self._arm_token_timers(session)
        back = resumed or await self._back_on_new_session(session)
        if session.role is Role.PHYSICIAN:
            await self.presences.arrive(session)
        if back:
            await self._peer_notice(session, p.PeerState.RESUMED)
            logger.info("session resumed", extra={"session": session.id, "role": session.role.value,
                                                  "new_session": not resumed})
        reply = p.HelloOk(
            session=session.id, resumed=resumed,
            principal={"sub": principal.subject, "role": principal.role.value, "site": principal.site,
                       "specialties": list(self.presences.specialties(principal)), "name": principal.name},
            ice_servers=ice_servers(ctx.settings.ice, principal.subject, ctx.clock()),
            heartbeat_s=ctx.sig.heartbeat_s, token_expires_at=principal.expires_at,
            server_time=ctx.clock(), state=await self._state(session))
        return session, reply

    async def _back_on_new_session(self, s: Session) -> bool:
        """Whether ``s`` (new) is someone back within the grace of a dropped session of theirs (a page
        reloaded without resuming): their peers hear ``resumed`` as for a resume."""
        if any(o is not s and o.sub == s.sub and o.role is s.role and o.conn is None and o.grace is not None
               for o in self.local.values()):
            return True
        if s.role is Role.PHYSICIAN:
            entry = await self.presences.get(s.sub)
            return entry is not None and not entry.connected and entry.session != s.id
        return False

    async def _verify(self, token: str) -> Principal:
        try:
            return await self.ctx.tokens.verify_access(token, guest=True)
        except AuthError as exc:
            raise ProtocolError(ErrorCode.AUTH_FAILED, exc.reason) from None

    def _record(self, s: Session, state: str) -> dict[str, Any]:
        return {"sub": s.sub, "role": s.role.value, "site": s.principal.site, "proc": self.ctx.proc,
                "state": state, "status": s.status.value, "consultation": s.principal.consultation}

    @staticmethod
    def _from_record(sid: str, record: dict[str, Any]) -> Session:
        """A session this process never held (its process died): enough to end it."""
        principal = Principal(subject=record["sub"], role=Role(record["role"]), site=record.get("site"),
                              consultation=record.get("consultation"))
        return Session(id=sid, principal=principal, status=PresenceStatus(record.get("status", "away")))

    async def _resume(self, sid: str, principal: Principal) -> Session | None:
        record = await self.ctx.store.get_session(sid)
        if record is None or record.get("sub") != principal.subject or record.get("role") != principal.role.value \
                or record.get("site") != principal.site:
            return None
        local = self.local.get(sid)
        if local is not None:
            if local.conn is not None:  # a second socket takes the session over
                old = local.conn
                self.ctx.hub.remove(old)
                local.conn = None
                _close(old, CLOSE_TAKEN_OVER, "session resumed elsewhere")
            if local.grace:
                local.grace.cancel()
                local.grace = None
            return local
        session = Session(id=sid, principal=principal, status=PresenceStatus(record.get("status", "away")))
        self.local[sid] = session
        return session

    async def _state(self, s: Session) -> dict[str, Any]:
        """What the client should show now: its open consultations, ringing offers, rooms."""
        state: dict[str, Any] = {"consultations": [], "offers": [], "rooms": {}}
        if s.role is Role.PHYSICIAN:
            state["presence"] = s.status.value
            state["presence_after"] = s.after.value if s.after else None
        if s.role is Role.ADMIN:
            return state
        if s.role.invited:
            return await self._guest_state(s, state)
        for c in sorted(await self.consultations.open_of(s.principal), key=lambda c: c.created_at):
            if s.role is Role.NURSE and c.state.final:
                continue
            state["consultations"].append(c.view(clinical=s.role is not Role.AGENT))
            if c.state is State.OFFERED and c.offered_to == s.sub:
                state["offers"].append({"consultation": c.view(True), "expires_at": c.offer_expires_at,
                                        "timeout_s": self.ctx.sig.offer_timeout_s})
            if c.state is State.ACTIVE and c.room and self.consultations.seat(s.principal, c):
                state["rooms"][c.id] = await self.rooms.join(c, s.principal)
        return state

    async def _guest_state(self, s: Session, state: dict[str, Any]) -> dict[str, Any]:
        """A guest's: its one consultation, its invitation, and its room once admitted."""
        got = await self.consultations.get(s.principal.consultation or "")
        c = got[0] if got else None
        if c is None or not self.consultations.visible(s.principal, c):
            return state
        state["consultations"].append(c.view(clinical=self.consultations.clinical_for(s.principal)))
        inv = c.invitation(s.sub)
        assert inv is not None
        state["invitation"] = inv.view(c.id, self.ctx.clock())
        if c.state is State.ACTIVE and c.room and self.consultations.seat(s.principal, c):
            state["rooms"][c.id] = await self.rooms.join(c, s.principal)
        return state

    # -- tokens ------------------------------------------------------------------------------
    def _arm_token_timers(self, s: Session) -> None:
        s.cancel_timers()
        loop = asyncio.get_running_loop()
        left = s.principal.expires_at - self.ctx.clock()
        warn_in = left - min(TOKEN_WARNING_S, left / 10)
        s.timers.append(loop.call_later(max(warn_in, 0), self._warn_expiry, s))
        s.timers.append(loop.call_later(max(left, 0), self._expire_token, s))

    def _warn_expiry(self, s: Session) -> None:
        if s.conn is not None:
            left = s.principal.expires_at - self.ctx.clock()
            s.conn.send_text(_dumps(p.AuthExpiring(expires_at=s.principal.expires_at, in_s=round(left, 1)).to_wire()))

    def _expire_token(self, s: Session) -> None:
        if s.conn is not None:
            s.conn.send_text(_dumps(p.error_message(ErrorCode.TOKEN_EXPIRED, "access token expired")))
            _close(s.conn, CLOSE_TOKEN_EXPIRED, "token expired")

    async def refresh(self, s: Session, msg: p.AuthRefresh) -> p.AuthRefreshOk:
        principal = await self._verify(msg.token)
        if (principal.subject, principal.role, principal.site) != (s.sub, s.role, s.principal.site):
            raise ProtocolError(ErrorCode.FORBIDDEN, "the new token must be for the same subject, role and site")
        s.principal = principal
        s.token = msg.token
        self._arm_token_timers(s)
        return p.AuthRefreshOk(token_expires_at=principal.expires_at)

    async def renew(self, s: Session, msg: p.AuthRenew) -> p.AuthRenewOk:
        """A fresh access token for the session's principal, bounded by ``signalling.max_session_s``
        from the first token of the chain (its ``iat``, carried from renewal to renewal in the store)."""
        ctx = self.ctx
        now = ctx.clock()
        principal = s.principal
        token = s.token
        if token is None or principal.expires_at <= now:
            raise ProtocolError(ErrorCode.TOKEN_EXPIRED, "the connection's token has expired")
        if principal.issuer != ctx.settings.auth.issuer:
            raise ProtocolError(ErrorCode.FORBIDDEN, "tokens of the identity provider are renewed there")
        if principal.role.invited:
            raise ProtocolError(ErrorCode.FORBIDDEN, "a guest's token is not renewed: it lasts the consultation")
        claims = jwt.decode(token, options={"verify_signature": False})
        jti, iat = str(claims.get("jti") or ""), float(claims.get("iat") or now)
        chain = await ctx.store.get_session(RENEW_CHAIN_PREFIX + jti) if jti else None
        origin = float(chain["origin"]) if chain else iat
        session_ends = origin + ctx.sig.max_session_s
        ttl = int(min(ctx.settings.auth.access_ttl_s, session_ends - now))
        if ttl < RENEW_MIN_TTL_S:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the session reached its maximum age: sign in again")
        new_token = ctx.tokens.issue_access(principal.role, principal.subject, site=principal.site,
                                            specialties=principal.specialties, name=principal.name, ttl=ttl)
        new_claims = jwt.decode(new_token, options={"verify_signature": False})
        await ctx.store.put_session(RENEW_CHAIN_PREFIX + str(new_claims["jti"]), {"origin": origin},
                                    max(session_ends - now, 1.0))
        s.principal = await self._verify(new_token)
        s.token = new_token
        self._arm_token_timers(s)
        await ctx.journal.append(Act.AUTH_RENEW, actor=principal.subject, role=principal.role.value)
        logger.info("access token renewed", extra={"session": s.id, "role": principal.role.value})
        return p.AuthRenewOk(token=new_token, token_expires_at=s.principal.expires_at,
                             session_expires_at=session_ends)

    # -- presence status of local sessions ------------------------------------------------------
    async def busy(self, effect: Busy) -> None:
        s = self.local.get(effect.session_id)
        if s is not None:
            await self.presences.in_consultation(s)

    async def free_physician(self, effect: FreePhysician) -> None:
        await self.presences.consultation_over(effect.physician)

    # -- dropped, resumed, lost ------------------------------------------------------------------
    async def detach(self, s: Session, conn: Outbox) -> None:
        """The socket closed or died: keep the session for the resume grace."""
        if s.conn is not conn:
            return  # already taken over by a newer socket
        self.ctx.hub.remove(conn)
        s.conn = None
        s.cancel_timers()
        if self.ctx.tasks.closing:
            return
        await safely(self._mark_dropped(s))
        if s.role is Role.PHYSICIAN:
            await safely(self.presences.detached(s, list(self.local.values())))
            await self.offers.withdraw_from(s)
        if not self._present_elsewhere(s):
            # A reload's new socket can say hello (and "resumed") before the old one is seen to
            # close: a "dropped" then would contradict the party's current state for good.
            await safely(self._peer_notice(s, p.PeerState.DROPPED))
        s.grace = asyncio.get_running_loop().call_later(self.ctx.sig.resume_grace_s,
                                                        lambda: self.ctx.tasks.spawn(self._grace_timer(s)))
        logger.info("session dropped", extra={"session": s.id, "role": s.role.value})

    async def _mark_dropped(self, s: Session) -> None:
        """The store's deadline for ``s``: any process ends it when it passes (this one's timer,
        or another's sweep if this process dies meanwhile)."""
        store, grace = self.ctx.store, self.ctx.sig.resume_grace_s
        await store.put_session(s.id, self._record(s, "dropped"), grace + DROPPED_RECORD_MARGIN_S)
        await store.disown_session(s.id)
        await store.mark_dropped(s.id, self.ctx.clock() + grace)

    async def _grace_timer(self, s: Session) -> None:
        s.grace = None
        if s.conn is not None:
            return
        if await self.ctx.store.clear_dropped(s.id):
            await self._grace_over(s)
        else:
            self.local.pop(s.id, None)  # resumed, or ended by another process's sweep

    async def sweep(self) -> None:
        """Sessions of dead processes start their grace; sessions whose grace passed end, here or
        on whichever process claims them first."""
        store = self.ctx.store
        for sid in await store.orphans():
            record = await store.get_session(sid)
            if record is None:
                continue
            s = self._from_record(sid, record)
            if record.get("state") != "live" or await self._held(record):
                # Dropped before, or resumed meanwhile on a live process (this one included): no
                # grace to start, but the dead process may have left an accept of theirs unstarted.
                await safely(self._complete_accepts(s))
                continue
            # The deadline only: the record stays as the dead process left it, so that a resume on
            # another process racing this one rewrites it and wins (it is checked at the deadline).
            # Rewriting it here as dropped ended sessions live elsewhere: a nurse back on another
            # process had her waiting requests expired.
            await store.mark_dropped(sid, self.ctx.clock() + self.ctx.sig.resume_grace_s)
            await safely(self.recovery.taken_over(s, str(record.get("proc"))))
            await safely(self._complete_accepts(s))
            await safely(self._peer_notice(s, p.PeerState.DROPPED))
            logger.info("session of a dead process dropped", extra={"session": sid, "proc": record.get("proc")})
        for sid in await store.claim_due_dropped(self.ctx.clock()):
            local = self.local.get(sid)
            if local is not None:
                if local.grace is not None:
                    local.grace.cancel()
                    local.grace = None
                await self._grace_over(local)
                continue
            record = await store.get_session(sid)
            if record is not None and not await self._held(record):
                await self._grace_over(self._from_record(sid, record))

    async def _complete_accepts(self, s: Session) -> None:
        """Consultations of ``s``'s party accepted on a process that died before it started them:
        started here (``Offers.complete_accepts``)."""
        if s.role in SEATS and not s.role.invited:
            await self.offers.complete_accepts(await self.consultations.open_of(s.principal))

    async def _held(self, record: dict[str, Any]) -> bool:
        """Whether a session's record says a live process holds its socket (it resumed there)."""
        if record.get("state") != "live":
            return False
        proc = str(record.get("proc"))
        return proc == self.ctx.proc or bool(await self.ctx.store.live_processes([proc]))

    async def _grace_over(self, s: Session) -> None:
        s.grace = None
        if s.conn is not None:
            return
        store = self.ctx.store
        record = await store.get_session(s.id)
        if record is not None and await self._held(record):
            self.local.pop(s.id, None)  # resumed on another process
            return
        self.local.pop(s.id, None)
        await store.delete_session(s.id)
        if any(o.sub == s.sub and (o.conn is not None or o.grace is not None) for o in self.local.values()):
            # The same person is back on another session, or may still come back on one within
            # its own grace (a second tab closed while the first reloads): that one decides.
            return
        if s.role is Role.PHYSICIAN:
            entry = await self.presences.get(s.sub)
            if entry is not None and entry.session != s.id:
                return  # back on a new session on another process
        logger.info("session lost", extra={"session": s.id, "role": s.role.value})
        if s.role is Role.PHYSICIAN:
            await self.presences.go_offline(s.sub, s.id, self.presences.specialties(s.principal))
        await self._peer_notice(s, p.PeerState.LOST)
        for c in await self.consultations.open_of(s.principal):
            if s.role is Role.NURSE and c.requested_by == s.sub and c.state in WAITING:
                await self.consultations.finish(c.id, State.EXPIRED, actor=s.sub, reason="nurse_lost")
            elif c.state in LIVE and ((s.role is Role.NURSE and c.requested_by == s.sub)
                                      or (s.role is Role.PHYSICIAN and c.physician == s.sub)):
                await self.consultations.finish(c.id, State.ENDED, actor=s.sub, reason="connection_lost")

    def _present_elsewhere(self, s: Session) -> bool:
        """Whether the same person (subject and role) has another socket attached here."""
        return any(o is not s and o.conn is not None and o.sub == s.sub and o.role is s.role
                   for o in self.local.values())

    async def _peer_notice(self, s: Session, state: p.PeerState) -> None:
        """Tell the other parties of ``s``'s live consultations that its socket dropped, came back
        or was lost."""
        if s.role not in SEATS or s.role.invited:
            return
        own = seat_of(s.sub, s.role, s.principal.site)
        for c in await self.consultations.open_of(s.principal):
            if c.state not in LIVE:
                continue
            if s.role is Role.NURSE and c.requested_by != s.sub:
                continue
            msg = p.PeerConnection(consultation_id=c.id, role=s.role.value, state=state.value).to_wire()
            targets = [nurses(c.site), agents(c.site)] + ([user(c.physician)] if c.physician else [])
            await self.ctx.bus.emit([t for t in targets if t != own], msg)

    async def close(self) -> None:
        """This process stops: its sessions may resume on another one."""
        for s in list(self.local.values()):
            s.cancel_timers()
            if s.grace:
                s.grace.cancel()
            if s.conn is not None:
                await safely(self._mark_dropped(s))
            if s.role is Role.PHYSICIAN:  # their status stays for a resume on another process
                await safely(self.presences.detached(s))
