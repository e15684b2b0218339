"""Replies through SendGrid Inbound Parse: store, pause the person's sequences, forward to the therapist.

A person who writes back deserves a person, not the next automated letter: a reply
from a known contact pauses her active enrollments until `funnel contacts resume`,
but only when SendGrid's SPF or DKIM checks show it came from her mail server (the
person most likely to forge her address is the one she hides these emails from).
The post is stored first, then the pause, then the forward, in the order SendGrid's
retries need (docs/architecture.md). The words of a reply, and addresses, never go to
a log.
"""

from __future__ import annotations

import base64
import hashlib
import html as html_lib
import io
import json
import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses, parseaddr
from typing import IO, Any

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel.config import Config
from funnel.contacts import find_by_hash, pause
from funnel.errors import FunnelError
from funnel.store.bulk import dialect_insert
from funnel.store.models import Contact, InboundMessage
from funnel.text import clean_line, email_hash, normalize_email
from funnel.timeutil import isoformat_z
from funnel.transports.base import Address, OutgoingEmail, Transport

#: header our forwards carry; a message that comes back with it is a loop and is not forwarded again
FORWARD_MARKER = "X-Funnel-Forwarded"
PAUSE_REASON = "replied by email"
#: SendGrid posts at most 30 MB; anything larger is not from it
MAX_BODY = 32 * 1024 * 1024
#: the words of a reply kept per field (text, html): a million characters is a book, no person's reply
TEXT_CAP = 1024 * 1024
#: any other field kept up to this (headers, envelope, dkim...); more is not SendGrid's
FIELD_CAP = 256 * 1024
#: what is kept of a Send Raw message in all (headers and text parts, without attachments)
RAW_KEEP = 4 * 1024 * 1024
#: a post is held in memory up to this, on disk beyond it
SPOOL_IN_MEMORY = 1024 * 1024
#: SpamAssassin's usual threshold: a forward says the score from here on
SPAM_SCORE_NOTE = 5.0
#: bytes read at a time from a spooled post
CHUNK = 64 * 1024

log = logging.getLogger("funnel.sendgrid.inbound")


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
    checks: Checks = field(default_factory=lambda: Checks())
    #: words beyond `TEXT_CAP` were cut (the forward says so)
    truncated: bool = False
    #: the message could not be read as an email: `text` is the message as it came
    unreadable: bool = False

    @property
    def verified(self) -> bool:
        """Whether SendGrid's checks vouch for the sender's address (only then does a reply pause anyone)."""
        return self.checks.vouch_for(self.sender)


# --------------------------------------------------------------------------- parsing (pure)


@dataclass
class Form:
    """One Inbound Parse post, read as a stream (`parse_form`).

    `fields` holds each plain field's bytes (the words of `text`/`html` up to
    `TEXT_CAP`, any other field up to `FIELD_CAP`; `truncated` names those
    cut). Files (attachments) are only counted: they are never forwarded, so
    they are never kept. Send Raw's `email` field is spooled (`raw`), read
    later line by line. `digest` is the post's identity (see `_PostDigest`).
    """

    fields: dict[str, bytes]
    files: int
    digest: str
    truncated: frozenset[str] = frozenset()
    raw: IO[bytes] | None = None


class _PostDigest:
    """What SendGrid's retry repeats: every field and file of the post, byte for byte.

    Each part is hashed on its own (name, file name, content), and the post's
    digest is the hash of those part hashes sorted, so the multipart boundary
    (which an HTTP client picks afresh for each request) and the order of the
    fields do not count. Two replies with the same words differ in their
    headers (Date, Received), so they are two replies; a client that reuses a
    Message-ID sends a different post, so it is a reply too.
    """

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def part(self, name: bytes, filename: bytes | None) -> hashlib._Hash:
        part = hashlib.sha256()
        part.update(b"%d:%s|%d:%s|" % (len(name), name, len(filename or b""), filename or b""))
        return part

    def done(self, part: hashlib._Hash) -> None:
        self.parts.append(part.digest())

    def hexdigest(self) -> str:
        return hashlib.sha256(b"".join(sorted(self.parts))).hexdigest()


def parse_form(content_type: str, body: bytes | IO[bytes]) -> Form:
    """The fields of a multipart/form-data body, read as a stream in bounded memory.

    python-multipart's streaming parser hands over each field's bytes as they
    come; only what a forward needs is kept (see `Form`). Inbound Parse says
    in `charsets` which charset each field is in, so fields stay bytes here.
    Blocking and CPU-bound: the web route runs it in the thread pool.
    """
    mime, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if mime.lower() != b"multipart/form-data" or not boundary:
        raise InboundError("the body is not multipart/form-data")
    stream: IO[bytes] = io.BytesIO(body) if isinstance(body, bytes | bytearray) else body
    digest = _PostDigest()
    fields: dict[str, bytes] = {}
    truncated: set[str] = set()
    state: dict[str, Any] = {"files": 0, "raw": None, "parts": 0}
    header: list[bytearray] = [bytearray(), bytearray()]
    headers: dict[bytes, bytes] = {}

    def on_part_begin() -> None:
        headers.clear()
        state.update(name=None, filename=None, sink=None, hash=None, cap=0)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        headers[bytes(header[0]).strip().lower()] = bytes(header[1]).strip()
        header[0].clear()
        header[1].clear()

    def on_headers_finished() -> None:
        _disposition, options = parse_options_header(headers.get(b"content-disposition", b""))
        name, filename = options.get(b"name"), options.get(b"filename")
        state["parts"] += 1
        state["hash"] = digest.part(name or b"", filename)
        if name is None:
            return  # not a form field: hashed (it is part of the post), not kept
        state["name"] = text_name = name.decode("utf-8", "replace")
        if filename is not None:
            state["files"] += 1
        elif text_name == "email":
            if state["raw"] is not None:  # a second `email` field: the last one counts, as for any field
                state["raw"].close()
            state["raw"] = state["sink"] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        else:
            state["sink"] = bytearray()
            state["cap"] = TEXT_CAP if text_name in ("text", "html") else FIELD_CAP

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if state["hash"] is not None:
            state["hash"].update(chunk)
        sink = state["sink"]
        if isinstance(sink, bytearray):
            room = state["cap"] - len(sink)
            if len(chunk) > room:
                truncated.add(state["name"])
                chunk = chunk[: max(room, 0)]
            sink += chunk
        elif sink is not None:
            sink.write(chunk)

    def on_part_end() -> None:
        if state["hash"] is not None:
            digest.done(state["hash"])
        if isinstance(state["sink"], bytearray):
            fields[state["name"]] = bytes(state["sink"])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
        max_header_count=32,
        max_header_size=FIELD_CAP,  # an attachment's long file name must not cost the reply
    )
    try:
        while chunk := stream.read(CHUNK):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        if state["raw"] is not None:
            state["raw"].close()
        raise InboundError("the multipart body cannot be read") from exc
    if not state["parts"]:
        raise InboundError("the multipart body has no fields")
    raw = state["raw"]
    if raw is not None:
        raw.seek(0)
    return Form(fields, state["files"], digest.hexdigest(), frozenset(truncated), raw)


@dataclass(frozen=True)
class Checks:
    """What SendGrid's own checks say of a post (`read_checks`).

    Inbound Parse posts `SPF` (the verdict for the envelope sender's domain:
    pass, fail, softfail, neutral, none, ...), `dkim` (each signature's
    domain and verdict, like `{@example.com : pass, @other.com : fail}`, or
    `none`) and `spam_score` beside every message, in Send Raw mode too.
    """

    spf: str = ""
    envelope_domain: str | None = None
    dkim_pass: frozenset[str] = frozenset()
    spam_score: float | None = None

    def vouch_for(self, address: str | None) -> bool:
        """Whether SendGrid's checks show that `address`'s own domain sent the message.

        SPF `pass` counts only when the envelope sender's domain is aligned
        with the address's domain, and a DKIM `pass` only when the signing
        domain is: a forger passes both easily for a domain of his own.
        Aligned means the same domain, or one a subdomain of the other (as
        DMARC's relaxed alignment, without a public-suffix list: siblings such
        as a.example.com and b.example.com, and bare top-level domains, do not
        count). Anything else (softfail, neutral, none, no field at all) does
        not vouch: the reply is still forwarded, with a line saying so.
        """
        domain = _domain(address)
        if domain is None:
            return False
        if self.spf == "pass" and self.envelope_domain is not None and _aligned(domain, self.envelope_domain):
            return True
        return any(_aligned(domain, signer) for signer in self.dkim_pass)


def read_checks(fields: dict[str, bytes]) -> Checks:
    """SendGrid's SPF, DKIM and spam verdicts from a post's fields (pure; a malformed field counts as absent)."""
    spf = fields.get("SPF", b"").decode("ascii", "replace").strip().lower()
    dkim = fields.get("dkim", b"").decode("utf-8", "replace")
    signers = {
        domain
        for raw_domain, verdict in _DKIM_ENTRY.findall(dkim)
        if verdict.lower() == "pass" and (domain := _normal_domain(raw_domain)) is not None
    }
    try:
        score: float | None = float(fields.get("spam_score", b"").decode("ascii", "replace").strip())
    except ValueError:
        score = None
    return Checks(
        spf, _domain(_envelope_from(fields.get("envelope", b"").decode("utf-8", "replace"))), frozenset(signers), score
    )


_DKIM_ENTRY = re.compile(r"@([^\s:,{}@]+)\s*:\s*([A-Za-z]+)")


def _domain(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return _normal_domain(address.rsplit("@", 1)[1])


def _normal_domain(domain: str) -> str | None:
    domain = domain.strip().strip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    return domain if domain and " " not in domain else None


def _aligned(one: str, other: str) -> bool:
    if one == other:
        return True
    shorter, longer = sorted((one, other), key=len)
    return "." in shorter and longer.endswith("." + shorter)


def _envelope_from(envelope: str) -> str | None:
    try:
        parsed = json.loads(envelope) if envelope.strip() else {}
    except ValueError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("from"), str):
        return parsed["from"].strip() or None
    return None


def read_reply(form: Form) -> Reply:
    """One Inbound Parse post (parsed fields, or the raw `email` of "Send Raw") as a `Reply`.

    Never fails on the message itself: a message whose headers or structure
    cannot be read is forwarded as it came (`unreadable`), because any error
    answer makes SendGrid retry for three days and then drop the reply.
    Closes the form's spooled raw message once read.
    """
    fields = form.fields
    checks = read_checks(fields)
    key = "post:" + form.digest
    charsets = _charsets(fields.get("charsets", b""))

    def text_of(name: str) -> str:
        raw = fields.get(name, b"")
        try:
            return raw.decode(charsets.get(name, "utf-8"), errors="replace")
        except LookupError:  # a charset Python does not know
            return raw.decode("utf-8", errors="replace")

    envelope = text_of("envelope")
    try:
        return _read_reply(form, key, envelope, checks, text_of)
    finally:
        if form.raw is not None:
            form.raw.close()


def _read_reply(form: Form, key: str, envelope: str, checks: Checks, text_of: Callable[[str], str]) -> Reply:
    try:
        if form.raw is not None:
            return _read_raw(form.raw, key, envelope, checks)
        headers = HeaderParser(policy=policy.compat32).parsestr(text_of("headers"))
        from_value = text_of("from") or _header_text(headers.get("From"))
        attachments = _int(text_of("attachments")) or form.files
        return _reply(
            key,
            checks,
            headers,
            from_value,
            envelope,
            text_of("subject") or _header_text(headers.get("Subject")),
            text_of("text"),
            text_of("html") or None,
            attachments,
            truncated=bool(form.truncated & {"text", "html"}),
        )
    except Exception as exc:  # noqa: BLE001  # any reading error: forward it as it came, never 500
        log.warning("an inbound message could not be read (%s): forwarded as it came", type(exc).__name__)
        if form.raw is not None:
            form.raw.seek(0)
            as_it_came = form.raw.read(TEXT_CAP)
        else:
            as_it_came = (text_of("headers") + "\n" + text_of("text")).encode("utf-8")[:TEXT_CAP]
        return Reply(
            key=key,
            sender=_envelope_from(envelope),
            sender_name=None,
            envelope_from=_envelope_from(envelope),
            subject="",
            text=as_it_came.decode("utf-8", errors="replace"),
            html=None,
            attachments=0,
            auto_reply=False,
            marked_forward=False,
            checks=checks,
            unreadable=True,
        )


def _read_raw(raw: IO[bytes], key: str, envelope: str, checks: Checks) -> Reply:
    """A Send Raw message: attachments are dropped while reading (`_reduce_raw`), the rest parsed leniently.

    The compat32 policy keeps headers as text (the default policy parses
    them on access and raised on a malformed Message-ID); RFC 2047 words are
    decoded where they can be.
    """
    reduced, truncated, dropped = _reduce_raw(raw)
    message = BytesParser(policy=policy.compat32).parsebytes(reduced)
    text: str | None = None
    html: str | None = None
    attachments = dropped
    for part in message.walk():
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        if part.get_content_disposition() == "attachment" or part.get_filename():
            attachments += 0 if part.get_payload() == "" else 1  # a dropped part was counted when it was dropped
        elif content_type == "text/plain" and text is None:
            text = _decoded(part)
        elif content_type == "text/html" and html is None:
            html = _decoded(part)
    reply = _reply(
        key,
        checks,
        message,
        _header_text(message.get("From")),
        envelope,
        _header_text(message.get("Subject")),
        text or "",
        html,
        attachments,
        truncated=truncated,
    )
    if text is None and html is None:  # no words found where they belong: show all of it as it came
        return replace(reply, text=reduced.decode("utf-8", errors="replace"), unreadable=True)
    return reply


def _reduce_raw(raw: IO[bytes]) -> tuple[bytes, bool, int]:
    """A raw message without its attachments' bytes: (what is kept, whether words were cut, files dropped).

    Read line by line, following the multipart boundaries: the headers of
    every part are kept, and the body of each part that is text and not an
    attachment, up to `TEXT_CAP` a part and `RAW_KEEP` in all; the bodies of
    other parts (photos, PDFs, forwarded messages) are skipped and counted.
    So a 29 MB message with a photo costs a few kilobytes, and memory is
    bounded whatever is posted. Anything odd (no boundary, a boundary never
    closed) just keeps lines as text.
    """
    kept = bytearray()
    boundaries: list[bytes] = []
    head = bytearray()
    in_head, keep_body, part_kept = True, True, 0
    truncated, dropped = False, 0
    line_start = True
    while line := raw.readline(CHUNK):
        whole = line_start
        line_start = line.endswith(b"\n")
        if in_head:
            if len(head) + len(line) <= FIELD_CAP:
                head += line
            if not whole or line.strip(b"\r\n"):
                continue
            in_head, part_kept = False, 0
            parsed = HeaderParser(policy=policy.compat32).parsestr(bytes(head).decode("ascii", "surrogateescape"))
            content_type = parsed.get_content_type()
            boundary = parsed.get_param("boundary") if content_type.startswith("multipart/") else None
            if isinstance(boundary, str) and boundary:
                kept += head
                head.clear()
                boundaries.append(b"--" + boundary.encode("ascii", "surrogateescape"))
                keep_body = False  # the preamble: never words for a person
            else:
                attachment = parsed.get_content_disposition() == "attachment" or parsed.get_filename()
                keep_body = content_type.startswith("text/") or not parsed.get("Content-Type")
                if not keep_body and not attachment and content_type.startswith("multipart/"):
                    keep_body = True  # a multipart without a boundary: read as text
                if not keep_body:
                    dropped += 1
                    head[:] = _DROPPED_PART  # what it was and its name stay out of the way too
            kept += head
            head.clear()
            continue
        if whole and boundaries and line.startswith(b"--"):
            marker = line.rstrip()
            level = next(
                (i for i in range(len(boundaries) - 1, -1, -1) if marker in (boundaries[i], boundaries[i] + b"--")),
                None,
            )
            if level is not None:
                kept += line
                del boundaries[level + 1 :]
                if marker.endswith(b"--") and marker == boundaries[level] + b"--":
                    boundaries.pop()
                    keep_body = False  # the epilogue
                else:
                    in_head = True
                continue
        if keep_body and part_kept + len(line) <= TEXT_CAP and len(kept) + len(line) <= RAW_KEEP:
            kept += line
            part_kept += len(line)
        elif keep_body:
            truncated = True
    if in_head:  # a message that ends in its headers
        kept += head
    return bytes(kept), truncated, dropped


_DROPPED_PART = b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment\r\n\r\n"


def _decoded(part: Message) -> str:
    """A text part's words; a charset Python does not know is read as UTF-8 with replacements, and a
    part that says base64 but is not is shown as it came (a reply is never refused for how it was encoded)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    if str(part.get("Content-Transfer-Encoding", "")).strip().lower() == "base64":
        body = str(part.get_payload())
        try:
            payload = base64.b64decode("".join(body.split()), validate=True)
        except ValueError:  # said base64, is not: the words as they came beat bytes decoded from noise
            payload = body.encode("utf-8", "surrogateescape")
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def _header_text(value: object) -> str:
    """A header as text: RFC 2047 words decoded where they can be, else as it came."""
    if value is None:
        return ""
    text = str(value)
    try:
        return str(make_header(decode_header(text)))
    except Exception:  # noqa: BLE001  # a malformed encoded word, an unknown charset: show it as it came
        return text


def _reply(
    key: str,
    checks: Checks,
    headers: Message,
    from_value: str,
    envelope: str,
    subject: str,
    text: str,
    html: str | None,
    attachments: int,
    truncated: bool = False,
) -> Reply:
    name, address = parseaddr(from_value)
    envelope_from = _envelope_from(envelope)
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
        checks=checks,
        truncated=truncated,
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
    practice = config.practice
    addresses = (practice.from_email, practice.discreet_from_email, config.inbound.reply_address)
    ours = {(address or "").lower() for address in addresses} - {""}
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
    contact, address = _find_contact(session, reply)
    verified = reply.checks.vouch_for(address) if contact is not None else reply.verified
    content = {
        "from": reply.sender,
        "name": reply.sender_name,
        "subject": reply.subject,
        "text": reply.text,
        "html": reply.html,
        "attachments": reply.attachments,
        "auto_reply": reply.auto_reply,
        "spam_score": reply.checks.spam_score,
        "truncated": reply.truncated,
        "unreadable": reply.unreadable,
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
            verified=verified,
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
    # only a reply that SendGrid's checks show came from her own domain pauses her: anyone can forge From
    if contact is not None and verified and not reply.auto_reply and status != "loop":
        paused = pause(session, contact, now, PAUSE_REASON)
        row.paused = paused
        session.add(row)
    return Received(row.id, True, paused, status)


def _find_contact(session: Session, reply: Reply) -> tuple[Contact | None, str | None]:
    """The contact the reply is from, and the address that found her (the one SendGrid's checks must vouch for)."""
    for address in (reply.sender, reply.envelope_from):
        digest = _hash(address)
        if digest is None:
            continue
        contact = find_by_hash(session, digest)
        if contact is not None and contact.erased_at is None:
            return contact, address
    return None, None


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
        if row.paused and row.contact_id is not None:
            _acknowledge(session, config, row, make_transport, now)
        return row.status


def _acknowledge(
    session: Session, config: Config, row: InboundMessage, make_transport: Callable[[], Transport], now: datetime
) -> None:
    """Tell her that her reply arrived and her letters are paused (`funnel.mail.acknowledge`), once per pause.

    This runs once, right after the one forward of the reply that paused her; a
    note that cannot go is logged (without anything personal) and not retried:
    her reply has reached the therapist, who can answer it.
    """
    from funnel.mail.acknowledge import acknowledgement

    contact = session.get(Contact, row.contact_id)
    note = acknowledgement(config, contact, f"ack-{row.id}", now) if contact is not None else None
    if note is None:
        return
    try:
        transport = make_transport()
        try:
            transport.send(note)
        finally:
            transport.close()
    except FunnelError as exc:
        log.warning("the acknowledgement of reply %s could not be sent: %s", row.id, type(exc).__name__)


def forward_email(config: Config, row: InboundMessage, now: datetime) -> OutgoingEmail:
    """The email that carries a reply to the therapist: Reply-To is the person, so answering reaches her."""
    content = row.content or {}
    sender = content.get("from") or "unknown sender"
    name = content.get("name")
    who = f"{name} <{sender}>" if name else str(sender)
    subject = str(content.get("subject") or "(no subject)")
    notes = [f"{who} wrote back on {isoformat_z(row.received_at)}."]
    if not row.verified:
        notes.insert(
            0,
            f"This reply could not be verified as sent by {sender} (SendGrid's SPF and DKIM checks did not pass "
            "for that address's domain): nothing was paused.",
        )
    elif row.paused:
        notes.append(f"The automated emails to this person are paused until you run: funnel contacts resume {sender}")
    elif content.get("auto_reply"):
        notes.append("This looks like an automatic reply (out of office): nothing was paused.")
    elif row.contact_id is None:
        notes.append("The sender is not on the list: nothing was paused.")
    score = content.get("spam_score")
    if isinstance(score, int | float) and score >= SPAM_SCORE_NOTE:
        notes.append(f"SendGrid's spam check scored it {score:g} (5 or more usually means spam).")
    if content.get("unreadable"):
        notes.append("The message could not be read as an email: it follows as it came, without attachments.")
    if content.get("truncated"):
        notes.append(f"The message was longer than {TEXT_CAP // (1024 * 1024)} MB of text: the rest was cut.")
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
