"""SendGrid's event webhook, pure: signature and freshness checks, and event normalisation.

Nothing here touches the database or the clock (`now` comes in), so every rule can
be tested with fixed bytes and times. The signature is ECDSA (P-256) over the timestamp
and the raw body; a timestamp more than `FRESHNESS` from now is refused, so a captured
post cannot be replayed later (a replay inside it only repeats events, stored once by
`sg_event_id`); an unsigned post passes only with `tracking.webhook_unsigned: true`; an
event we cannot read is skipped with a reason and the rest of the batch kept.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
#: how far a signed timestamp may be from our clock, either way (SendGrid signs as it posts)
FRESHNESS = timedelta(minutes=10)
#: the custom_args the transport puts on every email (funnel.mail.compose.envelope)
SEND_ID_ARG, SEQUENCE_ARG, STEP_ARG = "funnel_send_id", "funnel_sequence", "funnel_step"


class EventKind(StrEnum):
    """Our own names for what SendGrid reports (a `bounce` of type `blocked` becomes BLOCKED)."""

    PROCESSED = "processed"
    DROPPED = "dropped"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCE = "bounce"
    BLOCKED = "blocked"
    OPEN = "open"
    CLICK = "click"
    SPAMREPORT = "spamreport"
    UNSUBSCRIBE = "unsubscribe"
    GROUP_UNSUBSCRIBE = "group_unsubscribe"
    GROUP_RESUBSCRIBE = "group_resubscribe"


#: events after which no more mail may go to the address (the reason is stored with the contact).
#: `blocked` is not here: a block is the receiving server refusing for now (often reputation or
#: content), not a statement about the address, and SendGrid itself does not suppress it.
SUPPRESSING = frozenset(
    {EventKind.BOUNCE, EventKind.DROPPED, EventKind.SPAMREPORT, EventKind.UNSUBSCRIBE, EventKind.GROUP_UNSUBSCRIBE}
)

#: fields of an event that identify a person; `forget` blanks them, and they are never logged
PERSONAL_FIELDS = frozenset({"email", "ip", "useragent", "url", "reason", "response", "status", "url_offset"})


class WebhookRefused(Exception):
    """The post as a whole is refused; `status` is the HTTP answer, `reason` says why (never personal)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Event:
    """One SendGrid event, normalised; `raw` is the event exactly as it came."""

    sg_event_id: str
    kind: EventKind
    occurred_at: datetime
    email: str | None
    send_id: str | None
    sequence: str | None
    step: str | None
    #: a short, human reason for bounces, drops and deferrals ("bounce: 550 5.1.1 ...")
    reason: str | None
    raw: dict[str, Any] = field(compare=False)
    #: its position in the posted list (for the answer's `skipped`, should the database refuse it)
    index: int = field(default=0, compare=False)

    @property
    def suppresses(self) -> bool:
        return self.kind in SUPPRESSING


@dataclass(frozen=True)
class Skipped:
    """An event of a batch that could not be read: its position and why."""

    index: int
    reason: str


# --------------------------------------------------------------------------- signature


def load_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key: base64 DER (as its settings page shows it), or a PEM block.

    Raises ValueError with a sentence naming FUNNEL_SENDGRID_WEBHOOK_KEY.
    """
    text = value.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = load_pem_public_key(text.encode("ascii"))
        else:
            key = load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(
            "FUNNEL_SENDGRID_WEBHOOK_KEY is not a public key: paste the Verification Key from SendGrid's "
            "Event Webhook settings (base64, one line)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("FUNNEL_SENDGRID_WEBHOOK_KEY is not a P-256 (ECDSA) key: paste SendGrid's Verification Key")
    return key


def check_post(
    headers: dict[str, str],
    body: bytes,
    key: ec.EllipticCurvePublicKey | None,
    allow_unsigned: bool,
    now: datetime,
) -> str:
    """Decide whether a webhook post may be read; returns "signed" or "unsigned", or raises WebhookRefused.

    `headers` are matched without regard to case. With a key configured,
    every post must be signed and verify, whatever `allow_unsigned` says: a
    practice that set the key wants its webhook verified, and an unsigned
    post beside it could only be forged (`funnel check` refuses the two
    together). Without a key, signed posts cannot be checked and are treated
    as unsigned.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    signature = lowered.get(SIGNATURE_HEADER.lower(), "").strip()
    timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "").strip()
    if key is not None:
        if not signature or not timestamp:
            raise WebhookRefused(401, "unsigned post refused: the signature or timestamp header is missing")
        _check_fresh(timestamp, now)
        if not verify_signature(key, signature, timestamp, body):
            raise WebhookRefused(403, "signature does not verify")
        return "signed"
    if not allow_unsigned:
        raise WebhookRefused(
            401,
            "unsigned post refused: set FUNNEL_SENDGRID_WEBHOOK_KEY to SendGrid's verification key "
            "(or tracking.webhook_unsigned: true)",
        )
    return "unsigned"


def verify_signature(key: ec.EllipticCurvePublicKey, signature_b64: str, timestamp: str, body: bytes) -> bool:
    """Whether `signature_b64` is SendGrid's ECDSA signature of timestamp + raw body."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        key.verify(signature, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, binascii.Error, UnicodeEncodeError):
        return False
    return True


def _check_fresh(timestamp: str, now: datetime) -> None:
    try:
        signed_at = datetime.fromtimestamp(int(timestamp), UTC)
    except (ValueError, OverflowError, OSError):
        raise WebhookRefused(400, "the timestamp header is not a unix time") from None
    if abs(now - signed_at) > FRESHNESS:
        raise WebhookRefused(403, "stale timestamp: the post was signed too long ago (or the clocks differ)")


# --------------------------------------------------------------------------- events


def parse_events(body: bytes) -> tuple[list[Event], list[Skipped]]:
    """The events of a post, and those skipped with a reason.

    Raises WebhookRefused(400) when the body is not a JSON list: SendGrid
    always posts a list, so anything else is not worth retrying.
    """
    try:
        data = _storable(json.loads(body))
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurd nesting
        raise WebhookRefused(400, "the body is not JSON") from None
    if not isinstance(data, list):
        raise WebhookRefused(400, "the body is not a JSON list of events")
    events: list[Event] = []
    skipped: list[Skipped] = []
    for index, item in enumerate(data):
        try:
            events.append(dataclasses.replace(normalise(item), index=index))
        except ValueError as exc:
            skipped.append(Skipped(index, str(exc)))
    return events, skipped


def _storable(value: Any) -> Any:
    """The decoded post with the text and numbers no database takes made storable.

    A bounce carries the receiving server's own words, which we do not
    control; one unstorable value in one event failed the whole post (and
    SendGrid's retries of it), losing every bounce in it. So: NUL characters
    are removed (PostgreSQL refuses them in text and jsonb); a lone surrogate
    (JSON's "\\ud800", half of a UTF-16 pair) becomes U+FFFD, the replacement
    character (neither database nor UTF-8 can hold it), the same way on every
    retry so the event's id still matches; NaN and Infinity, which Python's
    JSON reads but PostgreSQL's json refuses, become null.
    """
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value.replace("\x00", ""))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    return value


#: half of a UTF-16 pair on its own
_SURROGATE = re.compile("[\ud800-\udfff]")


def normalise(item: Any) -> Event:
    """One raw event to an `Event`; ValueError (saying what is wrong, nothing personal) when unreadable."""
    if not isinstance(item, dict):
        raise ValueError("not a JSON object")
    name = item.get("event")
    if not isinstance(name, str):
        raise ValueError("no `event` name")
    try:
        kind = EventKind(name.strip().lower())
    except ValueError:
        raise ValueError(f"unknown event {name[:40]!r}") from None
    if kind is EventKind.BOUNCE and str(item.get("type", "")).lower() == "blocked":
        kind = EventKind.BLOCKED
    occurred_at = _event_time(item.get("timestamp"))
    event_id = item.get("sg_event_id")
    if event_id is None:
        # very old accounts and some test posts send none: a digest of the event keeps retries apart
        event_id = "sha256:" + hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()
    if not isinstance(event_id, str) or not event_id.strip() or len(event_id) > 200:
        raise ValueError("`sg_event_id` is not a short string")
    email = item.get("email")
    return Event(
        sg_event_id=event_id.strip(),
        kind=kind,
        occurred_at=occurred_at,
        email=email.strip() if isinstance(email, str) and email.strip() else None,
        send_id=_text_arg(item, SEND_ID_ARG),
        sequence=_text_arg(item, SEQUENCE_ARG),
        step=_text_arg(item, STEP_ARG),
        reason=_reason(kind, item),
        raw=item,
    )


def _event_time(value: Any) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("no `timestamp`")
    try:
        return datetime.fromtimestamp(int(float(value)), UTC)
    except (ValueError, OverflowError, OSError):
        raise ValueError("`timestamp` is not a unix time") from None


def _text_arg(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name)
    if isinstance(value, str) and value.strip():
        return value.strip()[:200]
    return None


def _reason(kind: EventKind, item: dict[str, Any]) -> str | None:
    """What a person reading `contacts show` needs: the kind and the server's words, shortened."""
    if kind not in (EventKind.BOUNCE, EventKind.BLOCKED, EventKind.DROPPED, EventKind.DEFERRED):
        return None
    words = item.get("reason") or item.get("response") or ""
    status = item.get("status")
    text = " ".join(str(part) for part in (status, words) if part)
    text = " ".join(text.split())
    return text[:300] or None


def scrubbed(raw: dict[str, Any]) -> dict[str, Any]:
    """An event without the fields that identify a person (for `forget`)."""
    return {name: value for name, value in raw.items() if name not in PERSONAL_FIELDS}
