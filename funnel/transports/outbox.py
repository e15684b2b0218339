"""The embedded default transport: one RFC 5322 `.eml` file per email.

Files are written to a temporary name and renamed into place, so a killed
run never leaves half an email; names carry the time, sequence, step and
send id, never the address. Each file is mode 0600 and a new outbox folder
0700 (`funnel.store.private`): only the practice's own user reads people's letters.
"""

from __future__ import annotations

import os
import re
import secrets
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path

from funnel.errors import TransportError
from funnel.store.private import make_private_dir, write_private
from funnel.transports.base import Address, Attachment, OutgoingEmail, SendResult, Transport

#: RFC 5322 allows 998 characters a line; folding the long unsubscribe URL at 78
#: would turn it into an encoded word that mail clients cannot use for RFC 8058
_POLICY = SMTP.clone(max_line_length=998)


def _header_address(address: Address) -> HeaderAddress:
    return HeaderAddress(display_name=address.name or "", addr_spec=address.email)


def build_message(email: OutgoingEmail) -> EmailMessage:
    """The MIME message: multipart/alternative (text, then HTML) or text only.

    With attachments (the calendar invitation) it is multipart/mixed: that
    message first, then each attachment.

    Raises ValueError for a line break of any kind in a header value: the
    standard library refuses CR LF but writes a lone CR (or NEL, U+2028, ...)
    into the header, where a mail program may read it as the end of the headers.
    """
    if any(_LINE_BREAK.search(value) for value in _header_texts(email)):
        raise ValueError("a header value may not contain a line break")
    message = EmailMessage(policy=_POLICY)
    message["From"] = _header_address(email.sender)
    message["To"] = _header_address(email.to)
    if email.reply_to:
        message["Reply-To"] = _header_address(email.reply_to)
    message["Subject"] = email.subject
    if email.date is not None:
        message["Date"] = format_datetime(email.date)
    domain = email.sender.email.rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(idstring=email.send_id, domain=domain)
    for name, value in email.headers:
        message[name] = value
    message["X-Funnel-Send-Id"] = email.send_id
    message.set_content(email.text, subtype="plain", charset="utf-8")
    if email.html is not None:
        message.add_alternative(email.html, subtype="html", charset="utf-8")
    for attachment in email.attachments:  # the message becomes multipart/mixed around the above
        maintype, _, subtype = attachment.content_type.partition("/")
        if maintype == "text":
            message.add_attachment(
                attachment.content.decode("utf-8"),
                subtype=subtype,
                charset="utf-8",
                filename=attachment.filename,
                params=dict(attachment.params),
            )
        else:
            message.add_attachment(
                attachment.content,
                maintype=maintype,
                subtype=subtype,
                filename=attachment.filename,
                params=dict(attachment.params),
            )
    return message


#: a header value written as it is: printable ASCII, no line break
_PLAIN = re.compile(r"[ -~]*\Z")
#: anything `str.splitlines` breaks a line at: never written into a header by the fast path
_LINE_BREAK = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")
_CRLF = "\r\n"


def _header_texts(email: OutgoingEmail) -> list[str]:
    """The free text of an email's headers: subject, names, extra header values."""
    names = [address.name or "" for address in (email.sender, email.to, email.reply_to) if address is not None]
    return [email.subject, *names, *(value for _, value in email.headers)]


def message_bytes(email: OutgoingEmail) -> tuple[bytes, str]:
    """The .eml file's bytes and its Message-ID, written directly (faster than `build_message`).

    The same RFC 5322 message `build_message` makes (headers, multipart/alternative,
    inside multipart/mixed when there is an attachment such as the calendar
    invitation, 7bit or 8bit UTF-8 parts, CRLF line endings): tests/test_outbox.py
    parses both and compares them. Anything unusual (a line over 998 bytes, a
    header that is not plain text, an attachment that is not plain UTF-8 text) is
    left to `build_message`, which folds and encodes by the book.
    """
    if any(_LINE_BREAK.search(value) for value in _header_texts(email)):
        return _slow(email)  # which refuses it
    domain = email.sender.email.rpartition("@")[2] or "localhost"
    message_id = make_msgid(idstring=email.send_id, domain=domain)
    headers = [("From", _address(email.sender)), ("To", _address(email.to))]
    if email.reply_to:
        headers.append(("Reply-To", _address(email.reply_to)))
    headers.append(("Subject", _text_header(email.subject)))
    if email.date is not None:
        headers.append(("Date", format_datetime(email.date)))
    headers.append(("Message-ID", message_id))
    headers.extend(email.headers)
    headers.append(("X-Funnel-Send-Id", email.send_id))
    head = _CRLF.join(f"{name}: {value}" for name, value in headers)
    unfolded = (value.replace(_CRLF + " ", "").replace(_CRLF + "\t", "") for _, value in headers)
    if not all(_PLAIN.match(value) for value in unfolded):
        return _slow(email)
    if max(map(len, head.split(_CRLF))) > 998 or any("\r" in v or "\n" in v for _, v in email.headers):
        return _slow(email)
    letter = _letter(email)
    attachments = [_attachment_part(attachment) for attachment in email.attachments]
    if letter is None or None in attachments:
        return _slow(email)
    if attachments:
        boundary = _boundary()
        parts = [letter, *(part for part in attachments if part is not None)]
        if any(boundary.encode() in part for part in parts):
            return _slow(email)
        letter = _multipart("mixed", boundary, parts)
    return head.encode("ascii") + f"{_CRLF}MIME-Version: 1.0{_CRLF}".encode() + letter, message_id


def _letter(email: OutgoingEmail) -> bytes | None:
    """The letter's own part, headers first: text/plain, or multipart/alternative of text and HTML."""
    text = _part_body(email.text)
    if text is None:
        return None
    plain = f"{_part_headers('plain', text)}{_CRLF}{_CRLF}".encode() + text
    if email.html is None:
        return plain
    html = _part_body(email.html)
    if html is None:
        return None
    boundary = _boundary()
    if boundary.encode() in text or boundary.encode() in html:
        return None
    return _multipart(
        "alternative",
        boundary,
        [plain, f"{_part_headers('html', html)}{_CRLF}{_CRLF}".encode() + html],
    )


def _attachment_part(attachment: Attachment) -> bytes | None:
    """An attachment as `add_attachment` writes a text one (7bit/8bit UTF-8); None when it is not plain text."""
    maintype, _, subtype = attachment.content_type.partition("/")
    params = [(name, value) for name, value in attachment.params]
    named = [*params, ("filename", attachment.filename)]
    plain = all(_TOKEN.match(name) and _VALUE.match(value) for name, value in named)
    if maintype != "text" or not _TOKEN.match(subtype) or not plain:
        return None
    try:
        body = _part_body(attachment.content.decode("utf-8"))
    except UnicodeDecodeError:
        return None
    if body is None:
        return None
    kind = f'text/{subtype}; charset="utf-8"' + "".join(f'; {name}="{value}"' for name, value in params)
    encoding = "7bit" if body.isascii() else "8bit"
    return (
        f"Content-Type: {kind}{_CRLF}Content-Transfer-Encoding: {encoding}{_CRLF}"
        f'Content-Disposition: attachment; filename="{attachment.filename}"{_CRLF}{_CRLF}'
    ).encode() + body


#: a MIME token (a subtype, a parameter name) and a parameter value written between quotes as it is
_TOKEN = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}\Z")
_VALUE = re.compile(r"[A-Za-z0-9 !#$%&'()*+,./:;<=>?@\[\]^_`{|}~-]{1,200}\Z")


def _boundary() -> str:
    return "===============" + str(secrets.randbelow(10**19)).zfill(19) + "=="


def _multipart(subtype: str, boundary: str, parts: list[bytes]) -> bytes:
    """A multipart part, its header first: each part after its boundary line, and the closing boundary."""
    separator = f"{_CRLF}--{boundary}{_CRLF}".encode()  # the line break before a boundary belongs to it
    return (
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"{_CRLF}{_CRLF}--{boundary}{_CRLF}'.encode()
        + separator.join(parts)
        + f"{_CRLF}--{boundary}--{_CRLF}".encode()
    )


def _slow(email: OutgoingEmail) -> tuple[bytes, str]:
    message = build_message(email)
    return message.as_bytes(), str(message["Message-ID"])


def _address(address: Address) -> str:
    """A mailbox for a header: a plain name as it is or quoted; any other as the standard library writes it."""
    if not address.name:
        return address.email
    if _PLAIN.match(address.name):
        return formataddr((address.name, address.email))
    return _folded("To", _header_address(address))


def _text_header(value: str) -> str:
    return value if _PLAIN.match(value) else _folded("Subject", value)


def _folded(name: str, value: object) -> str:
    """A header value exactly as `build_message` writes it (RFC 2047 encoded words, folded lines)."""
    line = str(_POLICY.header_factory(name, value).fold(policy=_POLICY))
    return line[len(name) + 2 :].removesuffix(_CRLF)


def _part_body(text: str) -> bytes | None:
    """A text part's body as `set_content` writes it (CRLF lines, a final line break), or None if a line is too long."""
    lines = text.encode("utf-8").splitlines()
    if lines and max(map(len, lines)) > 998:
        return None
    return b"\r\n".join(lines) + b"\r\n"


def _part_headers(subtype: str, body: bytes) -> str:
    encoding = "7bit" if body.isascii() else "8bit"
    return f'Content-Type: text/{subtype}; charset="utf-8"{_CRLF}Content-Transfer-Encoding: {encoding}'


class OutboxTransport(Transport):
    """Writes each email as an .eml file into a folder."""

    name = "outbox"

    def __init__(self, folder: Path, concurrency: int = 1) -> None:
        self.folder = folder
        self.concurrency = concurrency
        self._made = False

    def file_name(self, email: OutgoingEmail) -> str:
        stamp = email.date.strftime("%Y%m%dT%H%M%SZ") if email.date else "undated"
        return f"{stamp}_{email.sequence}_{email.step}_{email.send_id[:12]}.eml"

    def send(self, email: OutgoingEmail) -> SendResult:
        data, message_id = message_bytes(email)
        target = self.folder / self.file_name(email)
        temporary = target.with_suffix(".tmp")
        try:
            if not self._made:
                make_private_dir(self.folder)
                self._made = True
            write_private(temporary, data)  # 0600 whatever the umask: it holds a person's letter and address
            os.replace(temporary, target)
        except OSError as exc:
            raise TransportError(
                f"cannot write to the outbox folder {self.folder} ({exc.strerror}): "
                "check delivery.outbox_dir and its permissions",
                fatal=True,
            ) from exc
        # `path`: where it went, for `send-test` to say it was only written, not sent
        return SendResult(message_id=message_id.strip("<>"), extra={"path": str(target)})

    def close(self) -> None:
        return None
