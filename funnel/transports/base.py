"""The one interface every transport implements.

Transports never see database rows: they get a frozen `OutgoingEmail` and
return a `SendResult` or raise `TransportError` (with `retryable`/`fatal`).
A transport is a context manager, as httpx's are: `with transport:` closes
it at the end, whatever happened. Implementations subclass `Transport` to
get that for free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, Self


@dataclass(frozen=True)
class Address:
    """A mailbox: address plus optional display name."""

    email: str
    name: str | None = None


@dataclass(frozen=True)
class Attachment:
    """A file sent with an email (the webinar's `invite.ics`).

    `params` are extra MIME parameters of its content type in the .eml
    (`method=PUBLISH` for a calendar event).
    """

    filename: str
    content: bytes
    content_type: str
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class OutgoingEmail:
    """One rendered email, ready to go out.

    `html` is None for plain-text-only mail (discreet contacts). `headers`
    carries List-Unsubscribe and List-Unsubscribe-Post. `custom_args` are
    string key/values that identify the send (sequence, step, send id) and
    never contain personal data. `tracking_opens`/`tracking_clicks` are the
    effective settings for this email (always off for discreet contacts).
    """

    send_id: str
    sender: Address
    to: Address
    subject: str
    text: str
    html: str | None
    headers: tuple[tuple[str, str], ...]
    reply_to: Address | None = None
    custom_args: tuple[tuple[str, str], ...] = ()
    categories: tuple[str, ...] = ()
    tracking_opens: bool = False
    tracking_clicks: bool = False
    date: datetime | None = None
    sequence: str = ""
    step: str = ""
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class SendResult:
    """What the provider told us: its message id, if any."""

    message_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


class Transport(Protocol):
    """Delivers one email per call; safe to call from several threads at once."""

    name: str
    #: how many `send` calls may run in parallel
    concurrency: int

    def send(self, email: OutgoingEmail) -> SendResult:
        """Deliver `email` or raise `funnel.errors.TransportError`."""
        ...

    def close(self) -> None:
        """Release resources at the end of a run."""
        ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
