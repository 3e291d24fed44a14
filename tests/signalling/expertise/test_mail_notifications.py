"""E-mail about télé-expertise cases, received by a real SMTP server (aiosmtpd on loopback): a case
submitted to a named expert reaches them (memory and Redis), then the thread and the answer reach the
site's mailbox; a case for the specialty reaches its pool, each in their language; the sweeper's flag
reaches the experts once; no message holds patient data; a relay that is down breaks nothing."""

from __future__ import annotations

import json
import logging
from email.message import EmailMessage
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from core.appkeys import MAILER
from core.auth import Principal
from core.vocabulary import Role
from signalling.directory import Directory, load_directory
from signalling.expertise.appkeys import EXPERTISE
from signalling.expertise.case import Action, Message, Party, Urgency, step
from signalling.expertise.case import new_case as new_draft
from signalling.expertise.mail_notifications import mails_for, recipients
from tests.signalling.conftest import sig_settings
from tests.signalling.expertise.test_attachments import jpeg
from tests.signalling.expertise.test_http import Api, new_case
from tests.support import RunningServer, SmtpSink, free_port, start_server, wait_for

DERMA = "dr.derma@chu.example.org"
DEMO = "dr.demo@chu.example.org"
SITE = "soins@ehpad.example.org"
PATIENT = "p-4711"  # new_case's patient_ref: it must be in no message


def directory_file(tmp_path: Path) -> str:
    """The development directory with addresses: dr-derma (fr, es), dr-demo (en first), the nursing home."""
    data = load_directory().to_dict()
    for clinician in data["clinicians"]:
        if clinician["id"] == "dr-derma":
            clinician["email"] = DERMA
        elif clinician["id"] == "dr-demo":
            clinician.update(email=DEMO, languages=["en", "fr"])
    for site in data["sites"]:
        if site["id"] == "ehpad-demo":
            site["email"] = SITE
    path = tmp_path / "directory.json"
    path.write_text(json.dumps(data))
    return str(path)


async def server_with_mail(tmp_path: Path, backend: str, store_url: str | None, smtp_url: str) -> RunningServer:
    settings = sig_settings(tmp_path, backend, store_url, directory_file=directory_file(tmp_path))
    return await start_server(settings.replace(smtp={"url": smtp_url, "sender": "Téléconsultation "
                                                     "<noreply@teleconsult.example.org>"}))


@pytest.fixture
async def mailed(tmp_path: Path, smtp_server: SmtpSink) -> AsyncIterator[RunningServer]:
    """The app on the memory store, sending to ``smtp_server``."""
    running = await server_with_mail(tmp_path, "memory", None, smtp_server.url)
    try:
        yield running
    finally:
        await running.server.close()


async def submitted(api: Api, **changes: Any) -> str:
    status, body = await api.call("nurse", "POST", "", new_case(**changes))
    assert status == 201, body
    cid = str(body["id"])
    for view in ("close_up", "distance"):
        status, body = await api.call("nurse", "POST", f"/{cid}/attachments?view={view}", data=jpeg(),
                                      content_type="image/jpeg")
        assert status == 201, body
    status, body = await api.call("nurse", "POST", f"/{cid}/submit")
    assert status == 200 and body["state"] == "submitted", body
    return cid


def text(message: EmailMessage) -> str:
    return "\n".join(f"{k}: {v}" for k, v in message.items()) + "\n" + str(message.get_content())


def no_patient_data(message: EmailMessage) -> None:
    assert PATIENT not in text(message) and "Does it itch" not in text(message)


async def test_the_named_expert_gets_an_email_then_the_thread_and_the_answer_go_by_email(
        tmp_path: Path, backend: str, store_url: str | None, smtp_server: SmtpSink) -> None:
    sig = await server_with_mail(tmp_path, backend, store_url, smtp_server.url)
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(sig, http)
            cid = await submitted(api, expert="dr-derma")
            (first,) = await smtp_server.wait_for(1)
            assert first["To"] == DERMA and smtp_server.envelopes[0].rcpt_tos == [DERMA]
            assert first["Subject"] == f"Télé-expertise {cid} : nouvelle demande"
            body = first.get_content()
            assert f"{sig.url}/expertise#case={cid}" in body and "en attente de l'expert" in body
            assert "Échéance : " in body and body.count(" UTC") == 1
            no_patient_data(first)

            assert (await api.call("derma", "POST", f"/{cid}/take"))[0] == 200
            assert (await api.call("derma", "POST", f"/{cid}/messages", {"text": "Does it itch at night?"}))[0] == 200
            question = (await smtp_server.wait_for(2))[1]
            assert question["To"] == SITE and "question de l'expert" in question["Subject"]
            assert (await api.call("next_shift", "POST", f"/{cid}/messages", {"text": "Yes."}))[0] == 200
            reply = (await smtp_server.wait_for(3))[2]
            assert reply["To"] == DERMA and "nouveau message du demandeur" in reply["Subject"]
            answer = {"opinion": "o", "diagnosis": "d", "recommendation": "referral", "follow_up": "f"}
            assert (await api.call("derma", "POST", f"/{cid}/answer", answer))[0] == 200
            opinion = (await smtp_server.wait_for(4))[3]
            assert opinion["To"] == SITE and "avis rendu" in opinion["Subject"]
            await sig.app[MAILER].idle()
            assert (await api.call("nurse", "POST", f"/{cid}/close"))[0] == 200  # nobody is mailed for a close
            await sig.app[MAILER].idle()
    finally:
        await sig.server.close()
    assert len(smtp_server.messages) == 4
    for message in smtp_server.messages:
        no_patient_data(message)
        assert message["Content-Language"] == "fr" and f"#case={cid}" in message.get_content()


async def test_a_case_for_the_specialty_reaches_its_pool_in_each_ones_language(
        mailed: RunningServer, smtp_server: SmtpSink) -> None:
    async with aiohttp.ClientSession() as http:
        api = Api(mailed, http)
        cid = await submitted(api)
        messages = await smtp_server.wait_for(2)
        await mailed.app[MAILER].idle()
        by_to = {m["To"]: m for m in messages}
        assert set(by_to) == {DERMA, DEMO} and len(messages) == 2  # dr-cardio is no dermatologist
        assert by_to[DEMO]["Subject"] == f"Tele-expertise {cid}: new request"
        assert by_to[DEMO]["Content-Language"] == "en" and "waiting for the expert" in by_to[DEMO].get_content()
        assert by_to[DERMA]["Content-Language"] == "fr"  # fr, es: French
        # dr-derma takes it, then hands it back: the pool hears again, but not the one who declined.
        assert (await api.call("derma", "POST", f"/{cid}/take"))[0] == 200
        assert (await api.call("derma", "POST", f"/{cid}/decline", {"text": "on leave"}))[0] == 200
        third = (await smtp_server.wait_for(3))[2]
        await mailed.app[MAILER].idle()
        assert third["To"] == DEMO and len(smtp_server.messages) == 3
        assert "on leave" not in text(third)


async def test_the_sweepers_flag_reaches_the_experts_once(mailed: RunningServer, smtp_server: SmtpSink) -> None:
    async with aiohttp.ClientSession() as http:
        cid = await submitted(Api(mailed, http), expert="dr-derma", urgency="urgent")
    await smtp_server.wait_for(1)
    service = mailed.app[EXPERTISE]
    case, _ = await service.load(Principal("nurse-1", Role.NURSE, "ehpad-demo"), cid)
    assert await service.sweep(now=case.due_at + 60) == 1
    assert await service.sweep(now=case.due_at + 120) == 0  # flagged once: mailed once
    messages = await smtp_server.wait_for(3)
    await mailed.app[MAILER].idle()
    assert len(smtp_server.messages) == 3
    flagged = {m["To"]: m for m in messages[1:]}
    assert set(flagged) == {DERMA, DEMO}  # the named expert, and the pool it is opened to
    assert flagged[DERMA]["Subject"] == f"Télé-expertise {cid} : échéance dépassée"
    assert flagged[DEMO]["Subject"] == f"Tele-expertise {cid}: past its due date"
    for message in messages:
        no_patient_data(message)


async def test_a_relay_that_is_down_breaks_no_step(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sig = await server_with_mail(tmp_path, "memory", None, f"smtp://127.0.0.1:{free_port()}")  # nobody there
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(sig, http)
            cid = await submitted(api, expert="dr-derma")
            assert (await api.call("derma", "POST", f"/{cid}/take"))[0] == 200
            status, body = await api.call("derma", "POST", f"/{cid}/messages", {"text": "A question?"})
            assert status == 200 and body["state"] == "question"
            mailer = sig.app[MAILER]
            await wait_for(lambda: mailer.counts.failed == 2, what="both e-mails given up")
    finally:
        await sig.server.close()
    failed = [r for r in caplog.records if r.getMessage().startswith("mail not sent")]
    assert [getattr(r, "case_id") for r in failed] == [cid, cid]
    assert {getattr(r, "mail_kind") for r in failed} == {"expertise.submit", "expertise.ask"}
    logged = " ".join(str(v) for r in caplog.records if r.levelno >= logging.INFO and not r.name.startswith("mail.log")
                      for v in vars(r).values())
    assert DERMA not in logged and SITE not in logged and PATIENT not in logged


def test_who_is_mailed_for_each_step_sans_io(tmp_path: Path) -> None:
    """The table of mail_notifications, on the pure steps: nobody about their own act, only people with
    an address, a held case's flag to its holder alone (due soon: before the due date)."""
    directory = Directory.from_dict(json.loads(Path(directory_file(tmp_path)).read_text()))
    case = new_draft(id="x1", site="ehpad-demo", requested_by="dr-general", patient_ref=PATIENT,
                     specialty="dermatology", urgency=Urgency.STANDARD, questionnaire="dermatology@1", answers={},
                     consent=True, now=1_000.0)
    sent = step(case, Action.SUBMIT, Party.REQUESTER, "dr-general", 2_000.0)
    assert [r.address for r in recipients(sent, directory)] == [DEMO, DERMA]  # the pool, by id
    taken = step(sent.new, Action.TAKE, Party.POOL, "dr-derma", 3_000.0)
    assert recipients(taken, directory) == []
    due = taken.new.due_at
    flag = step(taken.new, Action.OVERDUE, Party.SWEEPER, "sweeper", due - 3_600)
    (holder,) = mails_for(flag, directory, "https://tc.example.org/")
    assert holder.to == DERMA and holder.subject == "Télé-expertise x1 : échéance proche"
    assert "https://tc.example.org/expertise#case=x1" in holder.text and holder.ids == {"case_id": "x1",
                                                                                          "recipient": "dr-derma"}
    note = Message(id="m1", author="dr-general", role="requester", kind="note", text="more", at=4_000.0)
    noted = step(flag.new, Action.NOTE, Party.REQUESTER, "dr-general", 4_000.0, message=note)
    assert [r.id for r in recipients(noted, directory)] == ["dr-derma"]
    ask = Message(id="m2", author="dr-derma", role="expert", kind="question", text="?", at=5_000.0)
    asked = step(noted.new, Action.ASK, Party.EXPERT, "dr-derma", 5_000.0, message=ask)
    assert [r.id for r in recipients(asked, directory)] == ["site:ehpad-demo"]  # dr-general has no address
    cancelled = step(asked.new, Action.CANCEL, Party.REQUESTER, "dr-general", 6_000.0)
    assert recipients(cancelled, directory) == []
