"""E-mail through the SMTP relay of ``[smtp]``: messages built with the standard library's
:class:`email.message.EmailMessage`, sent by aiosmtplib from one background task the app owns.

Sending is best effort and never on the caller's path. :meth:`Mailer.submit` builds the
message and queues it (the queue is bounded: when it is full the message is dropped), then
returns at once; the worker sends one message at a time. A failure (relay down, refused,
timed out) is logged with the message's ``kind`` and ids and counted; nothing reaches the
caller, and the step that asked for the e-mail stands. Logs never hold an address (DEBUG
excepted) or a message's text.

Lifecycle: new -> started (:meth:`Mailer.start`: the worker runs) -> closed
(:meth:`Mailer.close`: what is queued gets ``smtp.timeout_s`` to go, then the worker is
cancelled; idempotent). With ``smtp.url`` empty e-mail is off: ``submit`` returns False.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Mapping

import aiosmtplib
from prometheus_client import CollectorRegistry, Counter

from config.settings import SmtpSecurity, SmtpSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mail:
    """One plain-text message to one recipient."""

    to: str
    """The recipient's address (never logged above DEBUG)."""
    subject: str
    text: str
    kind: str
    """What it is about, for logs and metrics: ``expertise.submit``, ``invitation``..."""
    ids: Mapping[str, str] = field(default_factory=dict)
    """Ids for the logs (``case_id``, ``recipient``: a directory id): never an address, a name or
    patient data."""
    language: str = "fr"
    """The text's language (``Content-Language``)."""


@dataclass
class MailCounts:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    """Refused before the relay: e-mail queue full, mailer closed, a message that cannot be built."""


def read_password(settings: SmtpSettings, env: Mapping[str, str] | None = None) -> str | None:
    """The relay password (``password_env``, then ``password_file``), or None without a login.
    ValueError naming the setting when it cannot be read."""
    if not settings.username:
        return None
    env = os.environ if env is None else env
    if settings.password_env:
        value = env.get(settings.password_env, "")
        if not value:
            raise ValueError(f"smtp.password_env: environment variable {settings.password_env} is not set or empty")
        return value
    try:
        secret = Path(settings.password_file).read_text(encoding="utf-8").strip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"smtp.password_file: cannot read {settings.password_file}: {why}") from None
    if not secret:
        raise ValueError(f"smtp.password_file: {settings.password_file} is empty")
    return secret


def build_message(sender: str, mail: Mail) -> EmailMessage:
    """The message as it goes to the relay; ValueError for a header that cannot be one (a line
    break in an address or subject: the standard library refuses header injection)."""
    message = EmailMessage()
    # Content first: set_content clears every Content-* header set before it. Quoted-printable
    # keeps the accents 7-bit, for relays without 8BITMIME.
    message.set_content(mail.text, cte="quoted-printable")
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = email.utils.formatdate(usegmt=True)
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or None
    message["Message-ID"] = email.utils.make_msgid(domain=domain)
    # RFC 3834: vacation responders and the like do not answer automatic messages.
    message["Auto-Submitted"] = "auto-generated"
    message["Content-Language"] = mail.language
    return message


class Mailer:
    """The app's one way out to the SMTP relay (see the module's docstring)."""

    def __init__(self, settings: SmtpSettings, password: str | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.relay = settings.relay
        self._password = password
        self.counts = MailCounts()
        self._queue: asyncio.Queue[tuple[EmailMessage, Mail]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._metric = (Counter("teleconsult_mail", "E-mail messages by outcome (sent, failed, dropped)",
                                ["outcome"], registry=registry) if registry is not None else None)

    @classmethod
    def from_settings(cls, settings: SmtpSettings, env: Mapping[str, str] | None = None,
                      registry: CollectorRegistry | None = None) -> Mailer:
        """A mailer for ``settings``, its password read now (a missing one stops the start)."""
        return cls(settings, read_password(settings, env) if settings.relay else None, registry)

    def __repr__(self) -> str:  # never the password
        return f"Mailer(relay={self.relay!r}, counts={self.counts!r})"

    @property
    def enabled(self) -> bool:
        return self.relay is not None

    async def start(self) -> None:
        if self.relay is None or self._worker is not None or self._closed:
            return
        self._queue = asyncio.Queue(maxsize=self.settings.queue_size)
        self._worker = asyncio.create_task(self._run(), name="mail-sender")

    def submit(self, mail: Mail) -> bool:
        """Queue ``mail`` to be sent; False (logged, counted) when it is not queued. Never raises,
        never waits."""
        if self.relay is None:
            return False
        extra = {"mail_kind": mail.kind, **mail.ids}
        if self._queue is None or self._closed:
            self._count("dropped")
            logger.warning("mail dropped: the mailer is not running", extra=extra)
            return False
        try:
            message = build_message(self.settings.sender, mail)
        except (ValueError, TypeError) as exc:
            self._count("dropped")
            logger.warning("mail dropped: cannot build it: %s", type(exc).__name__, extra=extra)
            return False
        try:
            self._queue.put_nowait((message, mail))
        except asyncio.QueueFull:
            self._count("dropped")
            logger.warning("mail dropped: the queue is full", extra={**extra, "queue_size": self.settings.queue_size})
            return False
        return True

    async def idle(self) -> None:
        """Wait until everything queued so far has been sent or given up (tests, shutdown)."""
        if self._queue is not None:
            await self._queue.join()

    async def deliver(self, message: EmailMessage) -> None:
        """Send one message now (the worker's I/O); raises what aiosmtplib raises."""
        relay = self.relay
        if relay is None:
            raise RuntimeError("e-mail is off (smtp.url is empty)")
        await aiosmtplib.send(
            message, hostname=relay.host, port=relay.port,
            username=self.settings.username or None, password=self._password,
            use_tls=relay.security is SmtpSecurity.TLS,
            # False, not None: aiosmtplib would otherwise upgrade opportunistically on smtp://.
            start_tls=relay.security is SmtpSecurity.STARTTLS,
            validate_certs=self.settings.validate_certs, timeout=self.settings.timeout_s)

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            message, mail = await self._queue.get()
            extra = {"mail_kind": mail.kind, **mail.ids}
            try:
                await self.deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # best effort: whatever the relay or the network did, go on
                self._count("failed")
                code = getattr(exc, "code", None)
                logger.warning("mail not sent: %s%s", type(exc).__name__, f" (SMTP {code})" if code else "",
                               extra=extra)
            else:
                self._count("sent")
                logger.info("mail sent", extra=extra)
                logger.debug("mail sent to %s", mail.to, extra=extra)
            finally:
                self._queue.task_done()

    def _count(self, outcome: str) -> None:
        setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)
        if self._metric is not None:
            self._metric.labels(outcome=outcome).inc()

    async def close(self, drain_s: float | None = None) -> None:
        """Let what is queued go (at most ``drain_s``, default ``smtp.timeout_s``), then stop."""
        if self._closed:
            return
        self._closed = True
        worker, queue = self._worker, self._queue
        if worker is None or queue is None:
            return
        try:
            await asyncio.wait_for(queue.join(), self.settings.timeout_s if drain_s is None else drain_s)
        except asyncio.TimeoutError:
            logger.warning("mail not sent before shutdown", extra={"messages": queue.qsize()})
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


__all__ = ["Mail", "MailCounts", "Mailer", "build_message", "read_password"]
