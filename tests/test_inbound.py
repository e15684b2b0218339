"""Replies through Inbound Parse: a real `funnel serve`, real multipart posts, the outbox and the next run."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import tracemalloc
from collections.abc import Callable
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
from conftest import Project

from funnel.config import load_config
from funnel.errors import ConfigError
from funnel.sendgrid.inbound import TEXT_CAP, parse_form, read_checks, read_reply

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
        {
            "received_at": "2026-12-08T16:00:00Z",
            "status": "forwarded",
            "auto_reply": False,
            "verified": True,
            "paused": 1,
        }
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
    assert reply.sender == "zoe@example.test" and reply.sender_name == "Zoe" and reply.key.startswith("post:")
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
    assert reply.key.startswith("post:") and reply.verified is False  # no SPF or DKIM verdict came with it


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


# --------------------------------------------------------------------------- issue 16: 3.1, 3.11, 3.12, 3.13


def raw_post(
    raw: bytes, spf: str = "pass", dkim: str = "{@example.test : pass}", envelope_from: str = "ana@example.test"
) -> dict[str, Any]:
    """A "Send Raw" post: the whole message as `email`, and SendGrid's checks beside it as always."""
    return {
        "email": (None, raw),
        "to": (None, REPLY_ADDRESS.encode()),
        "envelope": (None, json.dumps({"to": [REPLY_ADDRESS], "from": envelope_from}).encode()),
        "charsets": (None, b'{"to":"UTF-8"}'),
        "SPF": (None, spf.encode()),
        "dkim": (None, dkim.encode()),
        "spam_score": (None, b"0.1"),
        "sender_ip": (None, b"192.0.2.10"),
    }


def test_a_forged_reply_pauses_nothing_and_says_so_first_only_a_verified_one_pauses(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    """Issue 16, 3.1: the person most likely to forge her address is the one she hides these emails
    from. A reply pauses her only when SendGrid saw SPF pass for her domain (the envelope sender's
    domain aligned with From) or a DKIM pass signed by her domain; otherwise nothing pauses."""
    with_inbound(project)
    project.write("signups/webinar-registrations.csv", HEADER + ANA)
    funnel("run", "--now", NOW)
    server = funnel_server("--now", NOW, env={"FUNNEL_INBOUND_KEY": KEY})
    url = f"/webhooks/inbound?key={KEY}"

    def forged(n: int, spf: str, envelope_from: str, dkim: str | None) -> dict[str, Any]:
        fields = parse_post(message_id=f"<forged{n}@x>", text=f"Stop sending these. ({n})")
        fields["SPF"] = (None, spf.encode())
        fields["envelope"] = (None, json.dumps({"to": [REPLY_ADDRESS], "from": envelope_from}).encode())
        if dkim is not None:
            fields["dkim"] = (None, dkim.encode())
        return fields

    with server.client() as http:
        attempts = [
            forged(1, "softfail", "ana@example.test", None),  # her domain's SPF says: not from here
            forged(2, "pass", "him@evil.test", "{@evil.test : pass}"),  # passes, but for another domain
            forged(3, "none", "ana@example.test", "{@example.test : fail}"),
            forged(4, "pass", "ana@example.test.evil.test", "none"),  # a look-alike domain
        ]
        for fields in attempts:
            answer = http.post(url, files=fields)
            assert answer.status_code == 200, answer.text
            assert answer.json()["paused"] == 0 and answer.json()["status"] == "forwarded"
        raw = b"Message-ID: <raw-forged@x>\r\nFrom: Ana <ana@example.test>\r\nSubject: Re: hi\r\n\r\nStop. (raw)\r\n"
        assert http.post(url, files=raw_post(raw, spf="fail", dkim="{@evil.test : pass}")).json()["paused"] == 0
        shown = funnel("contacts", "show", "ana@example.test", "--json").json()
        assert shown["enrollments"][0]["status"] == "active"
        assert [(r["verified"], r["paused"]) for r in shown["replies"]] == [(False, 0)] * 5
        assert "not verified as sent by this person" in funnel("contacts", "show", "ana@example.test").out

        # her own mail server signed it: SPF softfail (forwarded through another server) does not matter
        verified = forged(5, "softfail", "bounces@mailer.other.test", "{@other.test : pass, @example.test : pass}")
        assert http.post(url, files=verified).json()["paused"] == 1
    server.stop()
    assert "example.test" not in server.stderr and "Stop sending" not in server.stderr

    mails = forwards(project)
    assert len(mails) == 6
    for mail in mails[:5]:
        first = mail.get_body(preferencelist=("plain",)).get_content().splitlines()[0]
        assert "could not be verified" in first and "nothing was paused" in first, first
    last = mails[5].get_body(preferencelist=("plain",)).get_content()
    assert "could not be verified" not in last and "funnel contacts resume ana@example.test" in last


@pytest.mark.parametrize(
    ("fields", "address", "verified"),
    [
        ({"SPF": "pass", "envelope": '{"from": "ana@example.test"}'}, "ana@example.test", True),
        ({"SPF": "pass", "envelope": '{"from": "b@mail.example.test"}'}, "ana@example.test", True),
        ({"SPF": "pass", "envelope": '{"from": "b@example.test"}'}, "ana@mail.example.test", True),
        ({"SPF": "Pass", "envelope": '{"from": "ANA@Example.Test"}'}, "ana@example.test", True),
        ({"SPF": "pass", "envelope": '{"from": "x@evil.test"}'}, "ana@example.test", False),
        ({"SPF": "pass", "envelope": '{"from": "x@badexample.test"}'}, "ana@example.test", False),
        ({"SPF": "pass", "envelope": '{"from": "x@test"}'}, "ana@example.test", False),  # a bare top-level domain
        ({"SPF": "pass"}, "ana@example.test", False),  # SPF of what? no envelope sender
        ({"SPF": "softfail", "envelope": '{"from": "ana@example.test"}'}, "ana@example.test", False),
        ({"SPF": "neutral", "envelope": '{"from": "ana@example.test"}'}, "ana@example.test", False),
        ({"dkim": "{@example.test : pass}"}, "ana@example.test", True),
        ({"dkim": "{@evil.test : pass, @example.test : pass}"}, "ana@example.test", True),
        ({"dkim": "{@example.test : fail, @evil.test : pass}"}, "ana@example.test", False),
        ({"dkim": "{@evil.test : pass}"}, "ana@example.test", False),
        ({"dkim": "{@example.test : passed}"}, "ana@example.test", False),
        ({"dkim": "none"}, "ana@example.test", False),
        ({"dkim": "{}"}, "ana@example.test", False),
        ({}, "ana@example.test", False),
        ({"SPF": "pass", "envelope": '{"from": "ana@example.test"}'}, None, False),
    ],
)
def test_sendgrid_checks_vouch_only_for_the_senders_own_domain(
    fields: dict[str, str], address: str | None, verified: bool
) -> None:
    checks = read_checks({k: v.encode() for k, v in fields.items()})
    assert checks.vouch_for(address) is verified


def test_replies_are_told_apart_by_the_whole_post_not_by_their_words_or_message_id(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    """Issue 16, 3.11: "thank you" twice without a Message-ID, or a client that reuses one, are two
    replies; only SendGrid's retry (the very same post again) is one."""
    with_inbound(project)
    server = funnel_server("--now", NOW, env={"FUNNEL_INBOUND_KEY": KEY})
    url = f"/webhooks/inbound?key={KEY}"

    def post(date: str, message_id: str = "", text: str = "Thank you.") -> dict[str, Any]:
        fields = parse_post(message_id=message_id, text=text, extra_headers=f"Date: {date}\n")
        if not message_id:  # no Message-ID header at all
            headers = fields["headers"][1].decode().replace("Message-ID: \n", "")
            fields["headers"] = (None, headers.encode())
        return fields

    with server.client() as http:
        first = post("Tue, 8 Dec 2026 15:00:00 +0000")
        assert http.post(url, files=first).json()["new"] is True
        assert http.post(url, files=first).json()["new"] is False  # SendGrid's retry
        assert http.post(url, files=post("Tue, 8 Dec 2026 15:40:00 +0000")).json()["new"] is True
        reused = "<same@broken-client.test>"
        assert http.post(url, files=post("Tue, 8 Dec 2026 15:50:00 +0000", reused, "One")).json()["new"] is True
        answer = http.post(url, files=post("Tue, 8 Dec 2026 15:55:00 +0000", reused, "Two"))
        assert {**answer.json(), "id": None} == {"id": None, "new": True, "paused": 0, "status": "forwarded"}
    assert len(forwards(project)) == 4


def test_a_raw_post_with_malformed_headers_is_stored_and_forwarded_never_500(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    """Issue 16, 3.12: a 500 makes SendGrid retry for three days and then drop the reply, so a
    message whose headers cannot be read is still stored and forwarded as it came."""
    with_inbound(project)
    project.write("signups/webinar-registrations.csv", HEADER + ANA)
    funnel("run", "--now", NOW)
    server = funnel_server("--now", NOW, env={"FUNNEL_INBOUND_KEY": KEY})
    url = f"/webhooks/inbound?key={KEY}"
    raws = [
        b"Message-ID: <<<>>>\r\nFrom: Ana <ana@example.test>\r\nSubject: Re: hi\r\n\r\nFirst words.\r\n",
        b'From: "Ana <ana@example.test\r\nSubject: =?utf-8?q?\xff?=\r\nContent-Type: multipart/mixed; boundary=\r\n'
        b"\r\nSecond words.\r\n",
        b"From: Ana <ana@example.test>\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
        b'Content-Type: text/plain; charset="utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n!!Third words.\r\n',
        b"\xff\xfe\x00garbage without any header\r\n\r\nFourth words.",
    ]
    with server.client() as http:
        for raw in raws:
            answer = http.post(url, files=raw_post(raw))
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "forwarded" and answer.json()["new"] is True
            assert http.post(url, files=raw_post(raw)).json()["new"] is False
    server.stop()
    assert "words" not in server.stderr
    texts = [m.get_body(preferencelist=("plain",)).get_content() for m in forwards(project)]
    assert len(texts) == 4
    for text, words in zip(texts, ("First", "Second", "Third", "Fourth"), strict=True):
        assert f"{words} words." in text


def big_post(tmp: Path, raw: bool, attachment_mb: int = 28) -> tuple[str, Path]:
    """A SendGrid post of about 29 MB written to a file (a reply with a large photo attached)."""
    boundary = "xYzZY-big"
    photo = os.urandom(attachment_mb * 1024 * 1024 * (3 if raw else 4) // 4)  # base64 takes 4 bytes for 3
    path = tmp / ("raw.post" if raw else "parsed.post")
    with path.open("wb") as out:

        def field(name: str, value: bytes, filename: str = "") -> None:
            extra = f'; filename="{filename}"' if filename else ""
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode())
            out.write(value + b"\r\n")

        field("envelope", b'{"to":["reply@x.test"],"from":"ana@example.test"}')
        field("SPF", b"pass")
        if raw:
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="email"\r\n\r\n'.encode())
            out.write(
                b"From: Ana <ana@example.test>\r\nSubject: photo\r\nContent-Type: multipart/mixed; boundary=m1\r\n\r\n"
                b"--m1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHere it is.\r\n"
                b"--m1\r\nContent-Type: image/jpeg\r\nContent-Transfer-Encoding: base64\r\n"
                b'Content-Disposition: attachment; filename="p.jpg"\r\n\r\n'
            )
            out.write(base64.encodebytes(photo))
            out.write(b"--m1--\r\n\r\n")
        else:
            field("headers", b"From: Ana <ana@example.test>\nSubject: photo\n")
            field("from", b"Ana <ana@example.test>")
            field("text", b"Here it is.")
            field("attachments", b"1")
            field("attachment1", photo, filename="p.jpg")
        out.write(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", path


@pytest.mark.parametrize("raw", [False, True], ids=["parsed", "raw"])
def test_a_29_mb_post_is_read_in_bounded_memory(tmp_path: Path, raw: bool) -> None:
    """Issue 16, 3.13: a 29 MB reply took about 460 MB. The post is read from a (spooled) file and
    only what is forwarded is kept: the peak stays a small fraction of the post's size."""
    content_type, path = big_post(tmp_path, raw)
    assert path.stat().st_size > 28 * 1024 * 1024
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            reply = read_reply(parse_form(content_type, stream))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.text.strip() == "Here it is." and reply.attachments == 1 and reply.sender == "ana@example.test"
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


def test_a_29_mb_reply_through_funnel_serve_is_forwarded_without_its_attachment(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any], tmp_path: Path
) -> None:
    with_inbound(project)
    server = funnel_server("--now", NOW, env={"FUNNEL_INBOUND_KEY": KEY})
    content_type, path = big_post(tmp_path, raw=False)
    with server.client() as http, path.open("rb") as body:
        answer = http.post(f"/webhooks/inbound?key={KEY}", content=body, headers={"content-type": content_type})
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "forwarded"
        assert http.get("/healthz").status_code == 200
    [mail] = forwards(project)
    text = mail.get_body(preferencelist=("plain",)).get_content()
    assert "Here it is." in text and "1 attachment(s), not forwarded" in text


def test_a_raw_message_keeps_its_words_and_counts_what_it_drops() -> None:
    """Send Raw is read line by line: nested parts are followed, attachments (a PDF, a forwarded
    message, a text file) are counted and their bytes skipped, encoded words decoded."""
    raw = (
        b"From: =?utf-8?q?Ana_R=C3=A9yes?= <ana@example.test>\r\nSubject: =?utf-8?q?R=C3=A9:_hi?=\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\npreamble\r\n--outer\r\n'
        b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n--inner\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Caf=C3=A9 words\r\n--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Caf\xc3\xa9 words</p>\r\n"
        b'--inner--\r\n--outer\r\nContent-Type: application/pdf; name="x.pdf"\r\n'
        b'Content-Disposition: attachment; filename="x.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n'
        b"--outer\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@y.test\r\nSubject: fwd\r\n\r\ninner words\r\n"
        b'--outer\r\nContent-Type: text/plain; name="notes.txt"\r\nContent-Disposition: attachment; filename="n.txt"'
        b"\r\n\r\nnotes\r\n--outer--\r\nepilogue\r\n"
    )
    for line_end in (b"\r\n", b"\n"):
        body = b'--b0\r\nContent-Disposition: form-data; name="email"\r\n\r\n' + raw.replace(b"\r\n", line_end)
        reply = read_reply(parse_form("multipart/form-data; boundary=b0", body + b"\r\n--b0--\r\n"))
        assert (reply.text.strip(), reply.html and reply.html.strip()) == ("Café words", "<p>Café words</p>")
        assert reply.attachments == 3 and reply.sender_name == "Ana Réyes" and reply.subject == "Ré: hi"
        assert not reply.unreadable and not reply.truncated


def test_words_past_the_cap_are_cut_and_the_forward_would_say_so() -> None:
    words = ("a few words " * 200_000).encode()  # 2.4 MB of text: no person's reply
    fields = {name: value for name, (_none, value) in parse_post(text=words).items()}
    body = b"".join(
        b'--b1\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (name.encode(), value)
        for name, value in fields.items()
    )
    reply = read_reply(parse_form("multipart/form-data; boundary=b1", body + b"--b1--\r\n"))
    assert reply.truncated and len(reply.text) == TEXT_CAP and reply.text.startswith("a few words")
    assert reply.verified  # SPF pass for ana@example.test's own domain
