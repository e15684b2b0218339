"""The embedded default transport: one RFC 5322 `.eml` file per email.

Files are written to a temporary name and renamed into place, so a killed
run never leaves half an email; names carry the time, sequence, step and
send id, never the address.
"""

from __future__ import annotations

import os
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from pathlib import Path

from funnel.errors import TransportError
from funnel.transports.base import Address, OutgoingEmail, SendResult

#: RFC 5322 allows 998 characters a line; folding the long unsubscribe URL at 78
#: would turn it into an encoded word that mail clients cannot use for RFC 8058
_POLICY = SMTP.clone(max_line_length=998)


def _header_address(address: Address) -> HeaderAddress:
    return HeaderAddress(display_name=address.name or "", addr_spec=address.email)


def build_message(email: OutgoingEmail) -> EmailMessage:
    """The MIME message: multipart/alternative (text, then HTML) or text only.

    With attachments (the calendar invitation) it is multipart/mixed: that
    message first, then each attachment.
    """
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


class OutboxTransport:
    """Writes each email as an .eml file into a folder."""

    name = "outbox"

    def __init__(self, folder: Path, concurrency: int = 1) -> None:
        self.folder = folder
        self.concurrency = concurrency

    def file_name(self, email: OutgoingEmail) -> str:
        stamp = email.date.strftime("%Y%m%dT%H%M%SZ") if email.date else "undated"
        return f"{stamp}_{email.sequence}_{email.step}_{email.send_id[:12]}.eml"

    def send(self, email: OutgoingEmail) -> SendResult:
        message = build_message(email)
        target = self.folder / self.file_name(email)
        temporary = target.with_suffix(".tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(message.as_bytes())
            os.replace(temporary, target)
        except OSError as exc:
            raise TransportError(
                f"cannot write to the outbox folder {self.folder} ({exc.strerror}): "
                "check delivery.outbox_dir and its permissions",
                fatal=True,
            ) from exc
        return SendResult(message_id=str(message["Message-ID"]).strip("<>"))

    def close(self) -> None:
        return None
