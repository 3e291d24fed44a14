"""E-mail through a real SMTP server (aiosmtpd on loopback): what arrives, with which headers; a relay
that is down, silent or full never reaches the caller and is logged with ids, never an address or
a password; the password comes from a file or the environment; the app owns the sender."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from config.settings import SmtpSettings
from core import appkeys
from core.mail import Mail, Mailer, read_password
from teleconsult.app import create_app
from tests.support import SmtpSink, free_port, loopback_settings, start_server

TO = "dr.derma@chu.example.org"


def settings(url: str, **more: object) -> SmtpSettings:
    values: dict[str, object] = {"url": url, "sender": "Téléconsultation <noreply@teleconsult.example.org>",
                                 "timeout_s": 5.0, **more}
    return SmtpSettings(**values)  # type: ignore[arg-type]


def mail(to: str = TO, case_id: str = "x0123") -> Mail:
    return Mail(to=to, subject=f"Télé-expertise {case_id} : nouvelle demande", text="Bonjour,\n\nUne demande.\n",
                kind="expertise.submit", ids={"case_id": case_id, "recipient": "dr-derma"})


def addresses_logged(caplog: pytest.LogCaptureFixture, *values: str) -> list[str]:
    """Our records at INFO or above whose message or extras hold one of ``values`` (the test's SMTP
    server, aiosmtpd, logs addresses under ``mail.log``: it stands for the relay, not for us)."""
    found = []
    for record in caplog.records:
        if record.levelno < logging.INFO or record.name.startswith("mail.log"):
            continue
        text = record.getMessage() + " " + " ".join(str(v) for v in vars(record).values())
        found += [v for v in values if v in text]
    return found


async def test_a_message_arrives_with_its_headers(smtp_server: SmtpSink, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    mailer = Mailer(settings(smtp_server.url))
    await mailer.start()
    try:
        assert mailer.submit(mail())
        (got,) = await smtp_server.wait_for(1)
    finally:
        await mailer.close()
    assert got["To"] == TO
    assert got["From"] == "Téléconsultation <noreply@teleconsult.example.org>"
    assert got["Subject"] == "Télé-expertise x0123 : nouvelle demande"
    assert got["Auto-Submitted"] == "auto-generated" and got["Content-Language"] == "fr"
    assert got["Message-ID"].endswith("@teleconsult.example.org>") and got["Date"]
    assert got.get_content_type() == "text/plain" and got.get_content() == "Bonjour,\n\nUne demande.\n"
    envelope = smtp_server.envelopes[0]
    assert envelope.mail_from == "noreply@teleconsult.example.org" and envelope.rcpt_tos == [TO]
    assert mailer.counts.sent == 1 and mailer.counts.failed == 0
    sent = [r for r in caplog.records if r.getMessage() == "mail sent" and r.levelno == logging.INFO]
    assert sent and getattr(sent[0], "case_id") == "x0123" and getattr(sent[0], "mail_kind") == "expertise.submit"
    assert addresses_logged(caplog, TO, "noreply@") == []


async def test_a_relay_that_is_down_is_logged_and_the_caller_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    mailer = Mailer(settings(f"smtp://127.0.0.1:{free_port()}"))  # nothing listens there
    await mailer.start()
    try:
        assert mailer.submit(mail())  # queued: the caller never waits for the relay
        await asyncio.wait_for(mailer.idle(), 10)
    finally:
        await mailer.close()
    assert mailer.counts.failed == 1 and mailer.counts.sent == 0
    (warning,) = [r for r in caplog.records if r.getMessage().startswith("mail not sent")]
    assert warning.levelno == logging.WARNING and getattr(warning, "case_id") == "x0123"
    assert addresses_logged(caplog, TO) == []


async def test_a_silent_relay_times_out_and_the_next_message_still_goes(smtp_server: SmtpSink) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never greets
        writer.close()

    hung = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    try:
        mailer = Mailer(settings(f"smtp://127.0.0.1:{port}", timeout_s=0.3))
        await mailer.start()
        assert mailer.submit(mail())
        await asyncio.wait_for(mailer.idle(), 10)
        await mailer.close()
        assert mailer.counts.failed == 1
    finally:
        hung.close()
        await hung.wait_closed()
    # The same process, the relay back: mail goes again.
    mailer = Mailer(settings(smtp_server.url))
    await mailer.start()
    assert mailer.submit(mail(case_id="x0124"))
    await smtp_server.wait_for(1)
    await mailer.close()
    assert smtp_server.messages[0]["Subject"].startswith("Télé-expertise x0124")


async def test_the_queue_is_bounded_and_bad_headers_are_dropped(smtp_server: SmtpSink,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    mailer = Mailer(settings(smtp_server.url, queue_size=1))
    await mailer.start()
    try:
        # The sender has not run yet: the first waits in the queue, the next two find it full.
        assert [mailer.submit(mail(case_id=f"x{i}")) for i in range(3)] == [True, False, False]
        assert not mailer.submit(mail(to="a@example.org\r\nBcc: everyone@example.org"))  # header injection
        await smtp_server.wait_for(1)
        await mailer.idle()
    finally:
        await mailer.close()
    assert mailer.counts.dropped == 3 and mailer.counts.sent == 1 and len(smtp_server.messages) == 1
    assert all(e.rcpt_tos == [TO] for e in smtp_server.envelopes)
    assert not mailer.submit(mail())  # closed
    assert addresses_logged(caplog, "everyone@example.org", TO) == []


async def test_off_without_a_url() -> None:
    mailer = Mailer(SmtpSettings())
    await mailer.start()
    assert not mailer.enabled and not mailer.submit(mail())
    await mailer.close()
    await mailer.close()  # idempotent
    assert mailer.counts.dropped == 0


async def test_a_login_with_the_password_from_a_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-relay-password"
    (tmp_path / "smtp-password").write_text(secret + "\n")
    sink = await SmtpSink(logins={"teleconsult": secret}).start()
    try:
        config = settings(sink.url, username="teleconsult", password_file=str(tmp_path / "smtp-password"))
        mailer = Mailer.from_settings(config, env={})
        await mailer.start()
        assert mailer.submit(mail())
        await sink.wait_for(1)
        await mailer.close()
        assert sink.authenticated == ["teleconsult"]
        # A wrong password: refused by the relay, logged, nothing raised.
        wrong = Mailer.from_settings(settings(sink.url, username="teleconsult", password_env="SMTP_PW"),
                                     env={"SMTP_PW": "wrong"})
        await wrong.start()
        assert wrong.submit(mail())
        await asyncio.wait_for(wrong.idle(), 10)
        await wrong.close()
        assert wrong.counts.failed == 1 and len(sink.messages) == 1
    finally:
        await sink.close()
    assert secret not in caplog.text and secret not in repr(mailer)
    assert all(secret not in str(v) for r in caplog.records for v in vars(r).values())


def test_the_password_setting_is_named_when_it_cannot_be_read(tmp_path: Path) -> None:
    config = settings("smtp+starttls://relay.example.org", username="u", password_file=str(tmp_path / "none"))
    with pytest.raises(ValueError, match=r"^smtp.password_file: cannot read"):
        read_password(config, env={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match=r"^smtp.password_file: .* is empty"):
        read_password(settings("smtps://relay.example.org", username="u", password_file=str(tmp_path / "empty")))
    env_config = settings("smtps://relay.example.org", username="u", password_env="SMTP_PW")
    with pytest.raises(ValueError, match=r"^smtp.password_env: environment variable SMTP_PW"):
        read_password(env_config, env={})
    assert read_password(env_config, env={"SMTP_PW": "pw"}) == "pw"
    assert read_password(settings("smtps://relay.example.org"), env={}) is None


async def test_the_app_owns_one_mailer(tmp_path: Path, smtp_server: SmtpSink) -> None:
    running = await start_server(loopback_settings(
        tmp_path / "data", smtp={"url": smtp_server.url, "sender": "noreply@teleconsult.example.org"}))
    mailer = running.app[appkeys.MAILER]
    try:
        assert mailer.enabled and mailer.submit(mail())
        await smtp_server.wait_for(1)
    finally:
        await running.server.close()
    assert not mailer.submit(mail())  # stopped with the app
    with pytest.raises(ValueError, match="smtp.password_file"):
        create_app(loopback_settings(tmp_path / "data2", smtp={
            "url": smtp_server.url, "sender": "noreply@teleconsult.example.org", "username": "u",
            "password_file": str(tmp_path / "missing")}))
