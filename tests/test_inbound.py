"""Replies through Inbound Parse: a real `funnel serve`, real multipart posts, the outbox and the next run."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Callable
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
from conftest import Project

from funnel.config import load_config
from funnel.errors import ConfigError
from funnel.inbound import parse_form, read_reply

NOW = "2026-12-08T16:00:00Z"
HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
ANA = "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no\n"
REPLY_ADDRESS = "reply@reply.healinglightcounseling.test"
THERAPIST = "maya@healinglightcounseling.test"
KEY = "inbound-secret-8c1f"
WORDS = "Thank you for this. I am not sure I can come, my husband found my laptop open last night."


def with_inbound(project: Project, forward_to: str = THERAPIST, reply_address: str = REPLY_ADDRESS) -> None:
    config = project.root / "sequences.yaml"
    block = f"inbound:\n  forward_to: {forward_to}\n  reply_address: {reply_address}\n\n"
    config.write_text(config.read_text().replace("webinars:\n", block + "webinars:\n", 1))


def parse_post(
    sender: str = "Ana Reyes <ana@example.test>",
    message_id: str = "<CAB1234@mail.example.test>",
    text: str | bytes = WORDS,
    extra_headers: str = "",
    charset: str = "UTF-8",
) -> dict[str, Any]:
    """The fields SendGrid's Inbound Parse posts (not raw), as httpx `files` (plain fields, no file names)."""
    headers = (
        f"Received: from mail.example.test\nMessage-ID: {message_id}\nFrom: {sender}\nTo: {REPLY_ADDRESS}\n"
        f"Subject: Re: Your seat is saved, Ana\n{extra_headers}"
    )
    body = text if isinstance(text, bytes) else text.encode(charset)
    fields: dict[str, Any] = {
        "headers": (None, headers.encode()),
        "from": (None, sender.encode()),
        "to": (None, REPLY_ADDRESS.encode()),
        "subject": (None, b"Re: Your seat is saved, Ana"),
        "text": (None, body),
        "html": (None, b"<p>" + body + b"</p>"),
        "envelope": (None, json.dumps({"to": [REPLY_ADDRESS], "from": parseaddr(sender)[1]}).encode()),
        "charsets": (None, f'{{"to":"UTF-8","subject":"UTF-8","text":"{charset}","html":"{charset}"}}'.encode()),
        "SPF": (None, b"pass"),
        "spam_score": (None, b"0.1"),
        "sender_ip": (None, b"192.0.2.10"),
        "attachments": (None, b"0"),
    }
    return fields


def forwards(project: Project) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for p in sorted(project.outbox.glob("*_inbound_reply_*.eml"))
    ]


def test_a_reply_pauses_her_sequences_is_forwarded_once_and_resume_takes_it_back(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    with_inbound(project)
    project.write("signups/webinar-registrations.csv", HEADER + ANA)
    assert funnel("run", "--now", NOW).code == 0
    [confirmation] = project.messages()
    assert confirmation["Reply-To"] == REPLY_ADDRESS  # replies come back through Inbound Parse

    server = funnel_server("--now", NOW, env={"FUNNEL_INBOUND_KEY": KEY})
    with server.client() as http:
        assert http.post("/webhooks/inbound", files=parse_post()).status_code == 403
        assert http.post("/webhooks/inbound?key=wrong", files=parse_post()).status_code == 403
        answer = http.post(f"/webhooks/inbound?key={KEY}", files=parse_post())
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"id": 1, "new": True, "paused": 1, "status": "forwarded"}
        # SendGrid retries a post it thinks failed: stored once, forwarded once
        retried = http.post(f"/webhooks/inbound?key={KEY}", files=parse_post())
        assert retried.status_code == 200
        assert retried.json()["new"] is False and retried.json()["status"] == "forwarded"
    server.stop()  # all it wrote is read once it has stopped
    assert WORDS not in server.stderr and "ana@example.test" not in server.stderr

    [forwarded] = forwards(project)
    assert forwarded["To"] == THERAPIST
    assert forwarded["Reply-To"].addresses[0].addr_spec == "ana@example.test"  # answering reaches Ana
    assert forwarded["Subject"] == "Reply: Re: Your seat is saved, Ana"
    text = forwarded.get_body(preferencelist=("plain",)).get_content()
    assert WORDS in text and "funnel contacts resume ana@example.test" in text
    assert forwarded["X-Funnel-Forwarded"] and "List-Unsubscribe" not in forwarded

    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    [enrollment] = shown["enrollments"]
    assert enrollment["status"] == "paused" and enrollment["reason"] == "replied by email"
    assert enrollment["paused_at"] == "2026-12-08T16:00:00Z"
    assert shown["replies"] == [
        {"received_at": "2026-12-08T16:00:00Z", "status": "forwarded", "auto_reply": False, "paused": 1}
    ]
    assert all(step["status"] in ("sent", "pending") for step in enrollment["steps"])

    # paused: the reminder that falls due gets nothing out
    assert funnel("run", "--now", "2027-01-14T02:10:00Z", "--json").json()["sent"] == 0
    assert funnel("plan", "--now", "2027-01-14T02:10:00Z", "--json").json() == []
    resumed = funnel("contacts", "resume", "ana@example.test", "--now", "2027-01-14T02:40:00Z")
    assert resumed.code == 0 and "resumed 1" in resumed.out
    # the step that fell due during the pause follows the usual rules: 40 minutes late is within max_late
    assert funnel("run", "--now", "2027-01-14T02:45:00Z", "--json").json()["sent"] == 1
    assert [step for _to, seq, step in project.sent() if seq != "inbound"] == ["registered", "day-before"]
    assert funnel("contacts", "resume", "ana@example.test").out.strip().endswith("nothing was paused")
    assert len(forwards(project)) == 1


def test_steps_that_fell_due_long_before_the_resume_are_skipped_as_late(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    project.write("signups/consultation-requests.jsonl", '{"email": "ana@example.test", "name": "Ana"}\n')
    assert funnel("run", "--now", NOW).code == 0
    server = funnel_server("--now", NOW, env={"FUNNEL_INBOUND_KEY": KEY})
    with server.client() as http:
        assert http.post(f"/webhooks/inbound?key={KEY}", files=parse_post()).json()["paused"] == 1
    # "what-to-expect" fell due the next morning; she is resumed five days later
    funnel("contacts", "resume", "ana@example.test", "--now", "2026-12-13T16:00:00Z")
    funnel("run", "--now", "2026-12-13T16:05:00Z")
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    steps = {s["id"]: s for s in shown["enrollments"][0]["steps"]}
    assert steps["what-to-expect"]["status"] == "skipped"
    assert steps["what-to-expect"]["reason"].startswith("late by")


def test_out_of_office_strangers_and_loops(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    with_inbound(project)
    project.write("signups/webinar-registrations.csv", HEADER + ANA)
    funnel("run", "--now", NOW)
    server = funnel_server("--now", NOW, env={"FUNNEL_INBOUND_KEY": KEY})
    url = f"/webhooks/inbound?key={KEY}"
    with server.client() as http:
        away = http.post(url, files=parse_post(message_id="<ooo@x>", extra_headers="Auto-Submitted: auto-replied\n"))
        assert away.json() == {"id": 1, "new": True, "paused": 0, "status": "forwarded"}
        stranger = http.post(url, files=parse_post(sender="Someone <someone@example.test>", message_id="<s@x>"))
        assert stranger.json()["paused"] == 0 and stranger.json()["status"] == "forwarded"
        # our own forward coming back (a rule in the therapist's mailbox) is never forwarded again
        echo = http.post(url, files=parse_post(message_id="<e@x>", extra_headers="X-Funnel-Forwarded: inbound-1\n"))
        assert echo.json()["status"] == "loop"
        ours = http.post(url, files=parse_post(sender=f"Care <{THERAPIST}>", message_id="<o@x>"))
        assert ours.json()["status"] == "forwarded"  # the therapist writing in is not a loop...
        practice = http.post(url, files=parse_post(sender="care@healinglightcounseling.test", message_id="<p@x>"))
        assert practice.json()["status"] == "loop"  # ...but the sending address itself is
    assert len(forwards(project)) == 3
    assert funnel("contacts", "show", "ana@example.test", "--json").json()["enrollments"][0]["status"] == "active"
    texts = [m.get_body(preferencelist=("plain",)).get_content() for m in forwards(project)]
    assert "automatic reply" in texts[0] and "not on the list" in texts[1]


def test_the_endpoint_is_off_without_a_key_and_refuses_non_multipart(
    project: Project, funnel_server: Callable[..., Any]
) -> None:
    off = funnel_server("--now", NOW)
    with off.client() as http:
        assert http.post(f"/webhooks/inbound?key={KEY}", files=parse_post()).status_code == 404
    on = funnel_server("--now", NOW, env={"FUNNEL_INBOUND_KEY": KEY})
    with on.client() as http:
        assert http.post(f"/webhooks/inbound?key={KEY}", json={"text": "hi"}).status_code == 400
        assert http.post(f"/webhooks/inbound?key={KEY}", content=b"--x\r\n").status_code == 400


def test_a_failed_forward_is_stored_answered_503_and_forwarded_by_the_retry(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any], fake_sendgrid: Any
) -> None:
    with_inbound(project)
    project.write("signups/webinar-registrations.csv", HEADER + ANA)
    funnel("run", "--now", NOW)
    env = {
        "FUNNEL_INBOUND_KEY": KEY,
        "FUNNEL_TRANSPORT": "sendgrid",
        "SENDGRID_API_KEY": "SG.test-key",
        "FUNNEL_SENDGRID_HOST": fake_sendgrid.url,
    }
    server = funnel_server("--now", NOW, env=env)
    fake_sendgrid.set_status_for_all(500)
    with server.client() as http:
        first = http.post(f"/webhooks/inbound?key={KEY}", files=parse_post())
        assert first.status_code == 503 and first.json()["status"] == "failed"
        assert funnel("contacts", "show", "ana@example.test", "--json").json()["enrollments"][0]["status"] == "paused"
        assert funnel("report", "--json").json()["replies"] == {
            "received": 1,
            "forwarded": 0,
            "not_forwarded": 1,
            "loops": 0,
        }
        assert "could not be forwarded yet" in funnel("report").out
        fake_sendgrid.set_status_for_all(None)
        retry = http.post(f"/webhooks/inbound?key={KEY}", files=parse_post())
        assert retry.status_code == 200 and retry.json()["status"] == "forwarded"
        assert http.post(f"/webhooks/inbound?key={KEY}", files=parse_post()).json()["status"] == "forwarded"
    assert fake_sendgrid.sent_to(THERAPIST) == 1
    assert funnel("report", "--json").json()["replies"]["not_forwarded"] == 0
    server.stop()  # all it wrote is read once it has stopped
    assert WORDS not in server.stderr


def test_fields_are_decoded_with_the_charsets_sendgrid_names() -> None:
    boundary = "xYzZY"
    latin = "Merci, c'est très gentil".encode("iso-8859-1")
    parts = [
        ("headers", b"Message-ID: <l@x>\nFrom: Zoe <zoe@example.test>\n"),
        ("from", b"Zoe <zoe@example.test>"),
        ("subject", b"Re: hello"),
        ("text", latin),
        ("charsets", b'{"text":"iso-8859-1","subject":"UTF-8"}'),
    ]
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in parts
    )
    body += f'--{boundary}\r\nContent-Disposition: form-data; name="attachment1"; filename="a.pdf"\r\n'.encode()
    body += b"Content-Type: application/pdf\r\n\r\n%PDF-1\r\n" + f"--{boundary}--\r\n".encode()
    reply = read_reply(parse_form(f"multipart/form-data; boundary={boundary}", body))
    assert reply.text == "Merci, c'est très gentil"
    assert reply.sender == "zoe@example.test" and reply.sender_name == "Zoe" and reply.key == "mid:<l@x>"
    assert reply.attachments == 1


def test_a_raw_mime_post_is_read_too() -> None:
    raw = (
        b"Message-ID: <raw@x>\r\nFrom: Ana <ana@example.test>\r\nSubject: Re: hi\r\nContent-Type: text/plain; "
        b"charset=utf-8\r\n\r\nHello there\r\n"
    )
    boundary = "b0"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="email"\r\n\r\n'.encode()
        + raw
        + f"\r\n--{boundary}--\r\n".encode()
    )
    reply = read_reply(parse_form(f"multipart/form-data; boundary={boundary}", body))
    assert reply.sender == "ana@example.test" and reply.subject == "Re: hi" and "Hello there" in reply.text
    assert reply.key == "mid:<raw@x>"


def test_forwarding_to_the_reply_address_itself_is_a_config_error(project: Project) -> None:
    with_inbound(project, forward_to=REPLY_ADDRESS)
    with pytest.raises(ConfigError) as error:
        load_config(Path(project.root / "sequences.yaml"))
    assert "mail loop" in str(error.value) and "sequences.yaml:" in str(error.value)


def test_a_paused_person_who_signs_up_for_a_later_webinar_is_moved_to_it_and_stays_paused(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + ANA)
    funnel("run", "--now", NOW)
    server = funnel_server("--now", NOW, env={"FUNNEL_INBOUND_KEY": KEY})
    with server.client() as http:
        assert http.post(f"/webhooks/inbound?key={KEY}", files=parse_post()).json()["paused"] == 1
    project.append("signups/webinar-registrations.csv", ANA.replace("2027-01-14", "2027-01-21"))
    assert funnel("run", "--now", "2026-12-09T16:00:00Z", "--json").json()["sent"] == 0
    [enrollment] = funnel("contacts", "show", "ana@example.test", "--json").json()["enrollments"]
    assert enrollment["status"] == "paused" and enrollment["webinar_start"] == "2027-01-22T02:00:00Z"
    funnel("contacts", "resume", "ana@example.test", "--now", "2027-01-15T00:00:00Z")
    funnel("run", "--now", "2027-01-21T02:10:00Z")  # the day before the new date
    assert [step for _to, seq, step in project.sent() if seq != "inbound"] == ["registered", "day-before"]


@pytest.mark.parametrize(
    ("sender", "envelope_from"),
    [
        ("Üli <üser@example.test>", "üser@example.test"),  # a local part no header can carry
        ("<>", ""),  # no address at all (bounces come like this)
        ("", "evil\r\nBcc: someone@example.test"),  # a forged envelope with a line break
    ],
)
def test_a_reply_from_an_odd_sender_is_still_forwarded_once(
    project: Project, funnel_server: Callable[..., Any], sender: str, envelope_from: str
) -> None:
    """The therapist must see every reply: a sender address no header can hold is shown in the
    text and left out of Reply-To, instead of failing the forward (500, retried, then dropped)."""
    with_inbound(project)
    server = funnel_server("--now", NOW, env={"FUNNEL_INBOUND_KEY": KEY})
    fields = parse_post(sender=sender, message_id="<odd@x>")
    fields["envelope"] = (None, json.dumps({"to": [REPLY_ADDRESS], "from": envelope_from}).encode())
    with server.client() as http:
        answer = http.post(f"/webhooks/inbound?key={KEY}", files=fields)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "forwarded"
        again = http.post(f"/webhooks/inbound?key={KEY}", files=fields)
        assert again.status_code == 200 and again.json()["new"] is False
    [forwarded] = forwards(project)
    assert forwarded["Reply-To"] is None
    assert WORDS in forwarded.get_body(preferencelist=("plain",)).get_content()


def test_a_raw_mime_post_with_an_unknown_charset_is_read_with_replacements() -> None:
    raw = (
        b"Message-ID: <cs@x>\r\nFrom: Ana <ana@example.test>\r\nSubject: Re: hi\r\nContent-Type: text/plain; "
        b"charset=bogus-8\r\n\r\nHello there \xff\r\n"
    )
    boundary = "b0"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="email"\r\n\r\n'.encode()
        + raw
        + f"\r\n--{boundary}--\r\n".encode()
    )
    reply = read_reply(parse_form(f"multipart/form-data; boundary={boundary}", body))
    assert reply.sender == "ana@example.test" and "Hello there \ufffd" in reply.text


def test_a_message_id_with_a_nul_is_stored_and_forwarded_on_postgresql(
    project: Project, funnel_process: Callable[..., Any], funnel_server: Callable[..., Any], postgres_url: str
) -> None:
    """A hostile sender's Message-ID is text we do not control: a NUL in it made PostgreSQL refuse
    the row (500 for three days of retries), and the reply never reached the therapist."""
    with_inbound(project)
    env = {"FUNNEL_DATABASE_URL": postgres_url}
    server = funnel_server("--now", NOW, env={**env, "FUNNEL_INBOUND_KEY": KEY})
    fields = parse_post(message_id="<nul\x00@x>")
    with server.client() as http:
        answer = http.post(f"/webhooks/inbound?key={KEY}", files=fields)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "forwarded"
        again = http.post(f"/webhooks/inbound?key={KEY}", files=fields)
        assert again.json()["new"] is False, (answer.json(), again.json())
    assert len(forwards(project)) == 1


def test_a_retried_post_on_postgresql_does_not_pause_her_again_after_a_resume(
    project: Project, funnel_process: Callable[..., Any], funnel_server: Callable[..., Any], postgres_url: str
) -> None:
    """SendGrid retries a post whose answer it did not get. On PostgreSQL the insert's row count
    was -1 (SQLAlchemy adds RETURNING), so every retry looked new and paused her again."""
    with_inbound(project)
    env = {"FUNNEL_DATABASE_URL": postgres_url}
    project.write("signups/webinar-registrations.csv", HEADER + ANA)
    assert funnel_process("run", "--now", NOW, env=env).returncode == 0
    server = funnel_server("--now", NOW, env={**env, "FUNNEL_INBOUND_KEY": KEY})
    with server.client() as http:
        first = http.post(f"/webhooks/inbound?key={KEY}", files=parse_post())
        assert first.json() == {"id": 1, "new": True, "paused": 1, "status": "forwarded"}
        assert funnel_process("contacts", "resume", "ana@example.test", "--now", NOW, env=env).returncode == 0
        retried = http.post(f"/webhooks/inbound?key={KEY}", files=parse_post())
        assert retried.json()["new"] is False
    ana = json.loads(funnel_process("contacts", "show", "ana@example.test", "--json", env=env).stdout)
    assert [e["status"] for e in ana["enrollments"]] == ["active"]
    assert len(forwards(project)) == 1
