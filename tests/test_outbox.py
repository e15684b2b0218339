"""The outbox transport's .eml files: written directly, read back as the same message `build_message` makes."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage

from hypothesis import example, given, settings
from hypothesis import strategies as st

from funnel.transports.base import Address, Attachment, OutgoingEmail
from funnel.transports.outbox import build_message, message_bytes

_NAMES = st.one_of(
    st.none(),
    st.sampled_from(
        ["Maya Ellis", "M. Ellis", "P3009", 'Ana "Annie" Reyes', "Reyes, Ana", "José Núñez", "李小龙", "O'Brien"]
    ),
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40),
)
_SUBJECTS = st.one_of(
    st.sampled_from(["Your place is saved, José", "Tomorrow at 7:00 PM", "A note for you", "x" * 300]),
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=120),
)
_BODIES = st.one_of(
    st.sampled_from(["Hi,\n\nplain text.\n", "Ünïcödé line\r\nand another", "a" * 1200 + "\nshort", ""]),
    st.text(max_size=300),
)


def _email(name: str | None, subject: str, text: str, html: str | None) -> OutgoingEmail:
    url = "https://mail.example.test/u/WzMwMTAsMzM3NV0.hb4i4rB_5Lk4Fgav7np8Grsg6xk"
    return OutgoingEmail(
        send_id="0000134467e14700ae7463cdd29ddb34",
        sender=Address("care@example.test", "M. Ellis"),
        to=Address("person@example.test", name),
        reply_to=Address("care@example.test"),
        subject=subject,
        text=text,
        html=html,
        headers=(("List-Unsubscribe", f"<{url}>"), ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")),
        date=datetime(2027, 1, 10, 16, tzinfo=UTC),
        sequence="webinar",
        step="registered",
    )


def _read(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _seen(message: EmailMessage) -> dict[str, object]:
    """What a mail client (and the tests) see: headers decoded, parts and their text."""
    headers = {
        name: str(message[name])
        for name in ("From", "To", "Reply-To", "Subject", "Date", "List-Unsubscribe", "List-Unsubscribe-Post")
    }
    headers["X-Funnel-Send-Id"] = str(message["X-Funnel-Send-Id"])
    headers["Message-ID"] = str(message["Message-ID"]).split(".")[-1]  # the send id and domain (the rest is random)
    parts = [
        (
            part.get_content_type(),
            part.get_content(),
            part.get_content_disposition(),
            part.get_filename(),
            part.get_param("method"),
        )
        for part in message.walk()
        if not part.is_multipart()
    ]
    return {"headers": headers, "type": message.get_content_type(), "parts": parts}


def _outcome(build: object, outgoing: OutgoingEmail) -> object:
    try:
        data = message_bytes(outgoing)[0] if build is message_bytes else build_message(outgoing).as_bytes()
    except (ValueError, TypeError) as exc:
        return ("refused", type(exc).__name__)
    message = _read(data)
    assert not message.defects
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF line endings only
    return _seen(message)


@settings(max_examples=400, deadline=None)
@given(name=_NAMES, subject=_SUBJECTS, text=_BODIES, html=st.one_of(st.none(), _BODIES))
def test_outbox_file_reads_as_the_message_build_message_makes(
    name: str | None, subject: str, text: str, html: str | None
) -> None:
    outgoing = _email(name, subject, text, html)
    assert _outcome(message_bytes, outgoing) == _outcome(build_message, outgoing)


#: line breaks of every kind `str.splitlines` knows, and other controls, in names and subjects
_BROKEN = st.text(
    st.one_of(st.sampled_from("\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029\x00\t"), st.characters(codec="utf-8")),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(name=st.one_of(st.none(), _BROKEN), subject=_BROKEN)
@example(name=None, subject="\r")  # the standard library wrote a lone CR into the header
@example(name="Ann\u2028Lee", subject="Hi")
def test_names_and_subjects_with_line_breaks_are_refused_or_written_as_build_message_does(
    name: str | None, subject: str
) -> None:
    """No line break of any kind reaches a header the fast writer writes: what `build_message`
    refuses it refuses, what it writes it writes the same."""
    outgoing = _email(name, subject, "Hi,\n", None)
    assert _outcome(message_bytes, outgoing) == _outcome(build_message, outgoing)


_CALENDARS = st.one_of(
    st.just("BEGIN:VCALENDAR\r\nMETHOD:PUBLISH\r\nSUMMARY:Relationship 911 — live\r\nEND:VCALENDAR\r\n"),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=300),
)


@settings(max_examples=150, deadline=None)
@given(name=_NAMES, subject=_SUBJECTS, text=_BODIES, html=st.one_of(st.none(), _BODIES), calendar=_CALENDARS)
def test_an_outbox_file_with_an_invitation_reads_as_build_message_makes(
    name: str | None, subject: str, text: str, html: str | None, calendar: str
) -> None:
    """The calendar invitation (multipart/mixed around the letter) is written directly too: the
    100,000 confirmations of a big import each carry one."""
    invite = Attachment("invite.ics", calendar.encode("utf-8"), "text/calendar", (("method", "PUBLISH"),))
    outgoing = replace(_email(name, subject, text, html), attachments=(invite,))
    assert _outcome(message_bytes, outgoing) == _outcome(build_message, outgoing)


def test_outbox_file_is_multipart_alternative_with_text_then_html() -> None:
    data, message_id = message_bytes(
        _email("José Núñez", "Your place is saved, José", "Hi José,\n", "<p>Hi José</p>\n")
    )
    message = _read(data)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert str(message["To"]) == "José Núñez <person@example.test>"
    assert str(message["Subject"]) == "Your place is saved, José"
    assert str(message["Message-ID"]) == message_id
    assert message_id.endswith(".0000134467e14700ae7463cdd29ddb34@example.test>")
