"""Replies through SendGrid Inbound Parse: store, pause the person's sequences, forward to the therapist.

A person who writes back deserves a person, not the next automated letter:
a reply from a known contact pauses all her active enrollments until
`funnel contacts resume`. The order follows SendGrid's retry rules (a 5xx
answer is retried for three days, then the message is dropped):

1. the post is parsed (pure: `read_reply`) and **stored** first, keyed by its
   Message-ID, so a retried POST finds the stored row and changes nothing;
2. the enrollments are paused in the same transaction;
3. the message is **forwarded** through the configured transport to
   `inbound.forward_to`, and the stored words are cleared once it went out.
   A forward that fails leaves the message stored and the post answered with
   503, so SendGrid's retry forwards it then.

Never forwarded: a message that carries our own forward marker, or comes
from the practice's own sending address or the reply address (mail loops).
Automatic replies (out of office) are forwarded but pause nothing. The
words of a reply never go to a log.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses, parseaddr

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel.bulk import dialect_insert
from funnel.config import Config
from funnel.errors import FunnelError
from funnel.models import Contact, Enrollment, InboundMessage
from funnel.sources import clean_line, email_hash, normalize_email
from funnel.timeutil import isoformat_z
from funnel.transports.base import Address, OutgoingEmail, Transport

#: header our forwards carry; a message that comes back with it is a loop and is not forwarded again
FORWARD_MARKER = "X-Funnel-Forwarded"
PAUSE_REASON = "replied by email"
#: SendGrid posts at most 30 MB; anything larger is not from it
MAX_BODY = 32 * 1024 * 1024


class InboundError(ValueError):
    """The post cannot be read as an Inbound Parse message (answered 400: not worth retrying)."""


@dataclass(frozen=True)
class Reply:
    """What funnel needs of one inbound message (from `read_reply`, pure)."""

    key: str
    sender: str | None
    sender_name: str | None
    envelope_from: str | None
    subject: str
    text: str
    html: str | None
    attachments: int
    auto_reply: bool
    marked_forward: bool


# --------------------------------------------------------------------------- parsing (pure)


def parse_form(content_type: str, body: bytes) -> dict[str, bytes]:
    """The fields of a multipart/form-data body, as bytes (files: counted under "attachment-files").

    Parsed with the standard library's MIME parser so every field keeps its
    raw bytes: Inbound Parse says in `charsets` which charset each one is in.
    """
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type.lower():
        raise InboundError("the body is not multipart/form-data")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=policy.compat32).parsebytes(head + body)
    parts = message.get_payload()
    if not message.is_multipart() or not isinstance(parts, list) or not parts:
        raise InboundError("the multipart body has no fields")
    fields: dict[str, bytes] = {}
    files = 0
    for part in parts:
        if not isinstance(part, Message):
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        if part.get_filename():
            files += 1
            continue
        payload = part.get_payload(decode=True)
        fields[name] = payload if isinstance(payload, bytes) else b""
    fields["attachment-files"] = str(files).encode()
    return fields


def read_reply(fields: dict[str, bytes]) -> Reply:
    """One Inbound Parse post (parsed fields, or the raw `email` of "Send Raw") as a `Reply`."""
    charsets = _charsets(fields.get("charsets", b""))

    def text_of(name: str) -> str:
        raw = fields.get(name, b"")
        try:
            return raw.decode(charsets.get(name, "utf-8"), errors="replace")
        except LookupError:  # a charset Python does not know
            return raw.decode("utf-8", errors="replace")

    if "email" in fields:
        return _read_raw(fields["email"], text_of("envelope"))
    headers = HeaderParser(policy=policy.compat32).parsestr(text_of("headers"))
    from_value = text_of("from") or str(headers.get("From", ""))
    attachments = _int(text_of("attachments")) or _int(fields.get("attachment-files", b"0").decode())
    return _reply(
        headers,
        from_value,
        text_of("envelope"),
        text_of("subject") or str(headers.get("Subject", "")),
        text_of("text"),
        text_of("html") or None,
        attachments,
    )


def _read_raw(raw: bytes, envelope: str) -> Reply:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    attachments = sum(1 for _ in message.iter_attachments())
    return _reply(
        message,
        str(message.get("From", "")),
        envelope,
        str(message.get("Subject", "")),
        _content(text_part) or "",
        _content(html_part),
        attachments,
    )


def _content(part: Message | None) -> str | None:
    """A text part's words; a charset Python does not know is read as UTF-8 with replacements
    (a reply is never refused for how it was encoded)."""
    if not isinstance(part, EmailMessage):
        return None
    try:
        return str(part.get_content())
    except (LookupError, UnicodeError):
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""


def _reply(
    headers: Message, from_value: str, envelope: str, subject: str, text: str, html: str | None, attachments: int
) -> Reply:
    name, address = parseaddr(from_value)
    envelope_from = None
    try:
        parsed = json.loads(envelope) if envelope.strip() else {}
        if isinstance(parsed, dict) and isinstance(parsed.get("from"), str):
            envelope_from = parsed["from"].strip() or None
    except ValueError:
        pass
    # control characters (a NUL, which PostgreSQL refuses in text) never reach the key
    message_id = clean_line(str(headers.get("Message-ID", "") or ""))
    if message_id:
        key = "mid:" + message_id[:300]
    else:  # no Message-ID (rare): the same post retried has the same content
        digest = hashlib.sha256("\x00".join((from_value, subject, text, html or "")).encode()).hexdigest()
        key = "sha256:" + digest
    auto = str(headers.get("Auto-Submitted", "no") or "no").strip().lower()
    precedence = str(headers.get("Precedence", "") or "").strip().lower()
    auto_reply = (
        (auto not in ("", "no"))
        or precedence in ("auto_reply", "bulk", "junk", "list")
        or bool(headers.get("X-Autoreply") or headers.get("X-Autorespond"))
    )
    return Reply(
        key=key,
        sender=address.strip() or envelope_from,
        sender_name=" ".join(name.split()) or None,
        envelope_from=envelope_from,
        subject=" ".join(subject.split()),
        text=text,
        html=html,
        attachments=attachments,
        auto_reply=auto_reply,
        marked_forward=headers.get(FORWARD_MARKER) is not None,
    )


def _charsets(raw: bytes) -> dict[str, str]:
    try:
        value = json.loads(raw.decode("utf-8", errors="replace") or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _int(value: str) -> int:
    try:
        return max(0, int(value.strip()))
    except ValueError:
        return 0


def is_loop(config: Config, reply: Reply) -> bool:
    """Whether forwarding this message could start a mail loop."""
    if reply.marked_forward:
        return True
    ours = {config.practice.from_email.lower(), (config.inbound.reply_address or "").lower()} - {""}
    return (reply.sender or "").lower() in ours


# --------------------------------------------------------------------------- storing


@dataclass(frozen=True)
class Received:
    """What happened to one post: the stored row's id, whether it is new, how many enrollments paused."""

    message_id: int
    new: bool
    paused: int
    status: str


def receive(session: Session, config: Config, reply: Reply, now: datetime) -> Received:
    """Store the reply once (by Message-ID) and pause the sender's active enrollments; the caller commits."""
    contact = _find_contact(session, reply)
    content = {
        "from": reply.sender,
        "name": reply.sender_name,
        "subject": reply.subject,
        "text": reply.text,
        "html": reply.html,
        "attachments": reply.attachments,
        "auto_reply": reply.auto_reply,
    }
    status = "loop" if is_loop(config, reply) else "stored"
    builder = dialect_insert(session.get_bind().dialect.name)
    table = InboundMessage.__table__  # type: ignore[attr-defined]  # SQLModel does not declare __table__ for mypy
    inserted = session.execute(
        builder(table)
        .values(
            message_key=reply.key,
            contact_id=contact.id if contact else None,
            from_hash=_hash(reply.sender),
            received_at=now,
            status=status,
            auto_reply=reply.auto_reply,
            paused=0,
            content={} if status == "loop" else content,
        )
        .on_conflict_do_nothing(index_elements=["message_key"])
        # a returned id says "inserted" on both databases; rowcount does not (-1 on PostgreSQL)
        .returning(table.c.id)
    ).first()
    row = session.scalars(select(InboundMessage).where(col(InboundMessage.message_key) == reply.key)).one()
    assert row.id is not None
    if inserted is None:  # the same message was stored before: a retried post
        return Received(row.id, False, row.paused, row.status)
    paused = 0
    if contact is not None and not reply.auto_reply and status != "loop":
        paused = pause(session, contact, now)
        row.paused = paused
        session.add(row)
    return Received(row.id, True, paused, status)


def pause(session: Session, contact: Contact, now: datetime, reason: str = PAUSE_REASON) -> int:
    """Pause every active enrollment of a contact; the number paused."""
    outcome = session.execute(
        update(Enrollment)
        .where(and_(col(Enrollment.contact_id) == contact.id, col(Enrollment.status) == "active"))
        .values(status="paused", paused_at=now, pause_reason=reason)
    )
    return int(outcome.rowcount)  # type: ignore[attr-defined]  # an UPDATE gives a CursorResult


def resume(session: Session, contact: Contact, now: datetime) -> int:
    """Take a pause back; steps that fell due meanwhile follow the usual lateness rules at the next run."""
    outcome = session.execute(
        update(Enrollment)
        .where(and_(col(Enrollment.contact_id) == contact.id, col(Enrollment.status) == "paused"))
        .values(status="active", paused_at=None, pause_reason=None, next_due_at=now)
    )
    return int(outcome.rowcount)  # type: ignore[attr-defined]  # an UPDATE gives a CursorResult


def _find_contact(session: Session, reply: Reply) -> Contact | None:
    for address in (reply.sender, reply.envelope_from):
        digest = _hash(address)
        if digest is None:
            continue
        contact = session.scalars(select(Contact).where(col(Contact.email_hash) == digest)).first()
        if contact is not None and contact.erased_at is None:
            return contact
    return None


def _hash(address: str | None) -> str | None:
    address = _address(address)
    return email_hash(address) if address is not None else None


def _address(address: str | None) -> str | None:
    """The sender's address, normalised, or None when no provider could deliver to it."""
    if not address:
        return None
    try:
        return normalize_email(address)
    except ValueError:
        return None


# --------------------------------------------------------------------------- forwarding


def forward(
    engine: Engine, config: Config, message_id: int, make_transport: Callable[[], Transport], now: datetime
) -> str:
    """Forward one stored reply to the therapist, once; returns the row's status afterwards.

    The row is taken with a conditional update (stored/failed -> forwarding),
    so two deliveries of the same post at once forward it once. A transport
    that cannot be made (no API key) or fails leaves it `failed` with the
    reason, for SendGrid's retry.
    """
    with Session(engine, expire_on_commit=False) as session:
        taken = session.execute(
            update(InboundMessage)
            .where(
                and_(
                    col(InboundMessage.id) == message_id,
                    or_(col(InboundMessage.status) == "stored", col(InboundMessage.status) == "failed"),
                )
            )
            .values(status="forwarding")
        )
        session.commit()
        row = session.get(InboundMessage, message_id)
        assert row is not None
        if not taken.rowcount:  # type: ignore[attr-defined]  # an UPDATE gives a CursorResult
            return row.status
        try:
            transport = make_transport()
            try:
                transport.send(forward_email(config, row, now))
            finally:
                transport.close()
        except FunnelError as exc:
            row.status, row.forward_error = "failed", str(exc)[:500]
            session.add(row)
            session.commit()
            return row.status
        except BaseException:
            row.status = "failed"
            session.add(row)
            session.commit()
            raise
        row.status, row.forwarded_at, row.forward_error = "forwarded", now, None
        row.content = {}  # the therapist's inbox holds the words now; the database keeps only that it came
        session.add(row)
        session.commit()
        return row.status


def forward_email(config: Config, row: InboundMessage, now: datetime) -> OutgoingEmail:
    """The email that carries a reply to the therapist: Reply-To is the person, so answering reaches her."""
    content = row.content or {}
    sender = content.get("from") or "unknown sender"
    name = content.get("name")
    who = f"{name} <{sender}>" if name else str(sender)
    subject = str(content.get("subject") or "(no subject)")
    notes = [f"{who} wrote back on {isoformat_z(row.received_at)}."]
    if row.paused:
        notes.append(f"The automated emails to this person are paused until you run: funnel contacts resume {sender}")
    elif content.get("auto_reply"):
        notes.append("This looks like an automatic reply (out of office): nothing was paused.")
    elif row.contact_id is None:
        notes.append("The sender is not on the list: nothing was paused.")
    attachments = int(content.get("attachments") or 0)
    if attachments:
        notes.append(f"The message had {attachments} attachment(s), not forwarded: ask the sender to send them again.")
    intro = "\n".join(notes)
    text = f"{intro}\n\n---------- Reply ----------\nFrom: {who}\nSubject: {subject}\n\n{content.get('text') or ''}"
    html = None
    if content.get("html"):
        html = (
            '<div style="font-family:sans-serif;border-bottom:1px solid #ccc;padding-bottom:8px;margin-bottom:12px">'
            + "<br>".join(html_lib.escape(line) for line in notes)
            + "</div>"
            + str(content["html"])
        )
    reply_to = None
    answerable = _address(str(content.get("from") or ""))
    if answerable is not None:  # an address no header can carry stays in the text only: the forward still goes
        reply_to = Address(answerable, clean_line(str(name)) or None if name else None)
    addresses = getaddresses([config.forward_to])
    to = addresses[0][1] if addresses and addresses[0][1] else config.forward_to
    send_id = f"inbound-{row.id}"
    return OutgoingEmail(
        send_id=send_id,
        sender=Address(config.practice.from_email, f"Reply via {config.practice.name}"),
        to=Address(to),
        reply_to=reply_to,
        subject=f"Reply: {subject}"[:250],
        text=text,
        html=html,
        headers=((FORWARD_MARKER, send_id), ("Auto-Submitted", "auto-forwarded")),
        custom_args=(("funnel_send_id", send_id),),
        categories=("inbound",),
        date=now,
        sequence="inbound",
        step="reply",
    )
