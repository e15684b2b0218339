"""Confirmed consent on public forms (double opt-in, spec section 9).

A form post is not proof that the mailbox owner asked: the person most likely to
post a woman's address is the partner she is hiding these emails from. So a post to
a `confirm: true` source (the default) changes nothing about anyone; it is stored as
a *pending signup* and one discreet confirmation email goes at once from `funnel
serve`; only the click on its link (`POST /c/{token}`) applies what was posted. Every
write for one address runs in `funnel.store.personlock.with_person`, so an erasure at the
same moment comes first or waits. The rules, and why: docs/decisions.md, "Double opt-in".
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel.config import Config
from funnel.contacts import resubscribe, unsubscribe
from funnel.errors import TransportError
from funnel.mail.unsubscribe import unsubscribe_headers
from funnel.signups.sources import SignupRow
from funnel.signups.store import apply_rows
from funnel.store.models import Consent, Contact, Enrollment, PendingSignup, SubscriptionChange
from funnel.store.personlock import lock_contact, with_person
from funnel.text import email_hash
from funnel.timeutil import isoformat_z
from funnel.transports.base import Address, OutgoingEmail, Transport

log = logging.getLogger("funnel.signups.consent")

#: how long the emailed link works
CONFIRM_DAYS = 7
#: no second confirmation email to one address within this time
RESEND_AFTER = timedelta(hours=1)
#: `Contact.unsubscribed_via` values she made herself through the links of her own emails:
#: a confirmed post lifts only these (not "by hand", not SendGrid's, whose own list still holds)
OWN_UNSUBSCRIBES = ("link", "one-click")
#: `Contact.unsubscribed_via` of someone who said "not me, do not ask again" on a confirmation email
DECLINED = "declined a confirmation"
#: longest user agent kept as evidence (some are padded to kilobytes)
MAX_USER_AGENT = 400
#: attempts at a confirmation email's request (429/5xx/timeouts), with a short pause between
_ATTEMPTS = 3


@dataclass(frozen=True)
class Evidence:
    """Where a post or a click came from, kept as proof of consent."""

    ip: str | None
    user_agent: str | None

    @property
    def agent(self) -> str | None:
        return (self.user_agent or "")[:MAX_USER_AGENT] or None


@dataclass(frozen=True)
class ToSend:
    """A confirmation email to hand to the transport: the pending row and the token its link holds."""

    pending_id: int
    token: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def confirm_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/c/{token}"


def decline_url(base_url: str, token: str) -> str:
    return f"{confirm_url(base_url, token)}/stop"


# --------------------------------------------------------------------------- the post


def request_confirmation(
    config: Config, engine: Engine, source_name: str, row: SignupRow, now: datetime, evidence: Evidence
) -> ToSend | None:
    """Store a post as pending (one transaction for the address); the confirmation to send, or None.

    None when nothing is to be sent: an erased address (nothing stored), an
    address no form can bring back (bounce, spam report, unsubscribed by
    hand), or another confirmation went to it within the hour (nothing
    stored). The caller answers the same in every case.
    """
    digest = email_hash(row.email)
    token = new_token()

    def work(session: Session) -> ToSend | None:
        expire(session, now)
        contact = lock_contact(session, digest)
        if contact is not None and contact.erased_at is not None:
            return None  # erased stays erased: nothing about the post is kept
        asks_discretion = row.discreet is True
        if asks_discretion:
            # the one thing a post changes at once: it can only protect her
            if contact is not None and not contact.discreet:
                contact.discreet, contact.updated_at = True, now
                session.add(contact)
            session.execute(
                update(PendingSignup)
                .where(col(PendingSignup.email_hash) == digest, col(PendingSignup.confirmed_at).is_(None))
                .values(discreet=True)
            )
        if contact is not None and not can_lift(contact):
            return None
        recent = session.execute(
            select(col(PendingSignup.id))
            .where(
                col(PendingSignup.email_hash) == digest,
                col(PendingSignup.confirmed_at).is_(None),  # "while one is pending"
                or_(
                    col(PendingSignup.confirmation_sent_at) > now - RESEND_AFTER,
                    col(PendingSignup.mail_status).in_(("new", "sending"))
                    & (col(PendingSignup.posted_at) > now - RESEND_AFTER),
                ),
            )
            .limit(1)
        ).first()
        if recent:
            return None  # nothing kept: it could never be confirmed (its link is never sent)
        pending = PendingSignup(
            token_hash=token_hash(token),
            email_hash=digest,
            source=source_name,
            values=row_values(row),
            discreet=asks_discretion or bool(contact is not None and contact.discreet),
            posted_at=now,
            ip=evidence.ip,
            user_agent=evidence.agent,
            expires_at=now + timedelta(days=CONFIRM_DAYS),
            mail_status="new",
        )
        session.add(pending)
        session.flush()
        assert pending.id is not None
        return ToSend(pending.id, token)

    return with_person(engine, digest, work)


def can_lift(contact: Contact) -> bool:
    """Whether a confirmed post could bring this contact back (else no confirmation is even sent)."""
    if contact.erased_at is not None or contact.suppressed_reason:
        return False
    return contact.unsubscribed_at is None or contact.unsubscribed_via in OWN_UNSUBSCRIBES


def row_values(row: SignupRow) -> dict[str, Any]:
    """A post's row as JSON, to be applied on confirmation."""
    return {
        "email": row.email,
        "first_name": row.first_name,
        "last_name": row.last_name,
        "timezone": row.timezone,
        "webinar_start": isoformat_z(row.webinar_start) if row.webinar_start else None,
        "discreet": row.discreet,
        "fields": dict(row.fields),
    }


def _row_from(values: dict[str, Any], discreet: bool) -> SignupRow:
    start = values.get("webinar_start")
    said = values.get("discreet")
    return SignupRow(
        line=0,
        email=values["email"],
        first_name=values.get("first_name"),
        last_name=values.get("last_name"),
        timezone=values.get("timezone"),
        webinar_start=datetime.fromisoformat(start.replace("Z", "+00:00")) if start else None,
        # a later post asking for discretion wins over this one's no; her own explicit no lowers it
        discreet=True if discreet else said,
        fields=dict(values.get("fields") or {}),
    )


# --------------------------------------------------------------------------- the click


@dataclass(frozen=True)
class Lookup:
    """What a token names, for the pages: `state` is valid | expired | confirmed | invalid."""

    state: str
    discreet: bool = True


def look_up(engine: Engine, token: str, now: datetime) -> Lookup:
    """What the page for `token` shows; reads only (link scanners open it)."""
    with Session(engine) as session:
        pending = session.scalars(
            select(PendingSignup).where(col(PendingSignup.token_hash) == token_hash(token))
        ).first()
        if pending is None:
            return Lookup("invalid")
        discreet = pending.discreet or bool(
            session.scalars(select(col(Contact.discreet)).where(col(Contact.email_hash) == pending.email_hash)).first()
        )
        if pending.confirmed_at is not None:
            return Lookup("confirmed", discreet)
        if pending.expires_at <= now:
            return Lookup("expired", discreet)
        return Lookup("valid", discreet)


@dataclass(frozen=True)
class Confirmed:
    """The outcome of a click: the page to show and the enrollments whose first step goes out now."""

    state: str  # confirmed | expired | invalid
    discreet: bool = True
    enrollment_ids: tuple[int, ...] = ()


def confirm(
    config: Config, engine: Engine, token: str, now: datetime, evidence: Evidence, *, keep_discreet: bool = False
) -> Confirmed:
    """Apply a pending post: contact, tags, consent (both halves), her own unsubscribe lifted, enrollment.

    `keep_discreet`: the page's "keep my emails plain and discreet" box, ticked
    for her whenever she is discreet. Ticked, the post cannot lower her
    discretion, whatever it said (it may be a stranger's, made before she asked
    for discretion, that she confirms believing it hers); unticked, a post that
    said no lowers it: her own choice, made on the page (spec section 9).

    Idempotent: a second click finds the row confirmed and changes nothing.
    """
    digest_of_token = token_hash(token)
    with Session(engine) as session:
        found = session.execute(
            select(col(PendingSignup.email_hash)).where(col(PendingSignup.token_hash) == digest_of_token)
        ).first()
    if found is None:
        return Confirmed("invalid")

    def work(session: Session) -> Confirmed:
        pending = session.scalars(
            select(PendingSignup)
            .where(col(PendingSignup.token_hash) == digest_of_token)
            .execution_options(populate_existing=True)
        ).first()
        if pending is None:
            return Confirmed("invalid")  # erased meanwhile, or a link that was never sent
        contact = lock_contact(session, pending.email_hash)
        discreet = pending.discreet or bool(contact is not None and contact.discreet)
        if pending.confirmed_at is not None:
            return Confirmed("confirmed", discreet)
        if pending.expires_at <= now:
            return Confirmed("expired", discreet)
        source = config.sources.get(pending.source)
        if source is None or source.format != "form" or not pending.values:
            return Confirmed("invalid")
        # with the box ticked her discretion as it is now wins over the post's "no" (see above)
        row = _row_from(pending.values, discreet and keep_discreet)
        pending.values, pending.confirmed_at = {}, now
        session.add(pending)
        if contact is not None and contact.erased_at is not None:
            return Confirmed("confirmed", discreet)  # the same page; nothing is kept
        if contact is not None and contact.unsubscribed_at is not None and can_lift(contact):
            resubscribe(session, contact, now, via="confirmed form")  # her own unsubscribe: she is asking again
            session.flush()
        apply_rows(session, config, pending.source, source, [row], now)
        contact = lock_contact(session, pending.email_hash)
        if contact is None or contact.id is None or contact.erased_at is not None:
            return Confirmed("confirmed", discreet)  # a `create: false` form for a stranger
        session.add(
            Consent(
                contact_id=contact.id,
                source=pending.source,
                given_at=pending.posted_at,
                ip=pending.ip,
                user_agent=pending.user_agent,
                confirmed_at=now,
                confirm_ip=evidence.ip,
                confirm_user_agent=evidence.agent,
            )
        )
        enrollments: tuple[int, ...] = ()
        if source.enroll:
            enrollments = tuple(
                session.scalars(
                    select(col(Enrollment.id)).where(
                        col(Enrollment.contact_id) == contact.id,
                        col(Enrollment.sequence) == source.enroll,
                        col(Enrollment.status) == "active",
                    )
                )
            )
        return Confirmed("confirmed", bool(contact.discreet), enrollments)

    return with_person(engine, found[0], work)


def decline(engine: Engine, token: str, now: datetime) -> bool:
    """ "Not me, do not ask again": the address's pending posts go, an unsubscribe no form lifts is recorded.

    False for a token that names nothing (a link cut short); an erased
    address stays as it is. A stranger's address is kept as its hash only,
    as `suppressions sync` does: enough to refuse the next request.
    """
    digest_of_token = token_hash(token)
    with Session(engine) as session:
        found = session.execute(
            select(col(PendingSignup.email_hash)).where(col(PendingSignup.token_hash) == digest_of_token)
        ).first()
    if found is None:
        return False

    def work(session: Session) -> bool:
        digest = found[0]
        session.execute(
            delete(PendingSignup).where(
                col(PendingSignup.email_hash) == digest, col(PendingSignup.confirmed_at).is_(None)
            )
        )
        contact = lock_contact(session, digest)
        if contact is None:
            session.add(
                Contact(
                    email_hash=digest,
                    created_at=now,
                    updated_at=now,
                    unsubscribed_at=now,
                    unsubscribed_via=DECLINED,
                )
            )
        elif contact.erased_at is None and contact.unsubscribed_via in OWN_UNSUBSCRIBES:
            # already out by her own link, an opt-out a confirmed post may lift (so requests still
            # came): "not me" turns it into one that no form lifts, or a stranger could go on asking
            contact.unsubscribed_via, contact.unsubscribed_step_run_id, contact.updated_at = DECLINED, None, now
            session.add(contact)
            session.add(
                SubscriptionChange(contact_id=contact.id or 0, changed_at=now, change="unsubscribed", via=DECLINED)
            )
        elif contact.erased_at is None:
            unsubscribe(session, contact, now, via=DECLINED)
        return True

    return with_person(engine, found[0], work)


# --------------------------------------------------------------------------- the email


def confirmation_email(config: Config, address: str, token: str, send_id: str, now: datetime) -> OutgoingEmail:
    """The confirmation: discreet whoever she is, plain text, the link, the postal address."""
    practice = config.practice
    sender_address = practice.discreet_from_email or practice.from_email
    reply_to = practice.discreet_reply_to or practice.reply_to
    postal = practice.discreet_postal_address or practice.postal_address
    url = confirm_url(practice.base_url, token)
    text = (
        "Hello,\n\n"
        "A request was just made to receive emails at this address.\n"
        f"If it was you, please open this link within {CONFIRM_DAYS} days and press the button:\n\n"
        f"{url}\n\n"
        "If it was not you, you can simply ignore this email, and nothing will change.\n"
        "If you would rather not be asked again at this address, open this link instead:\n\n"
        f"{decline_url(practice.base_url, token)}\n\n"
        f"{postal}\n"
    )
    return OutgoingEmail(
        send_id=send_id,
        sender=Address(sender_address, practice.discreet_from_name),
        to=Address(address),
        subject=practice.confirm_subject,
        text=text,
        html=None,
        headers=unsubscribe_headers(decline_url(practice.base_url, token)),
        reply_to=Address(reply_to) if reply_to else None,
        custom_args=(("funnel_send_id", send_id), ("funnel_kind", "confirmation")),
        categories=("confirmation",),
        tracking_opens=False,
        tracking_clicks=False,
        date=now,
        sequence="confirmation",
        step="confirmation",
    )


def send_confirmation(config: Config, engine: Engine, transport: Transport, job: ToSend, now: datetime) -> str:
    """Claim, send and record one confirmation email; returns its status (sent, failed, or `skipped`).

    Claimed with a conditional update committed before the request starts,
    so it goes at most once: a second caller (the sweep) finds it taken, and
    a serve killed mid-request leaves it `sending`, never sent again.
    """
    with Session(engine, expire_on_commit=False) as session:
        taken = session.execute(
            update(PendingSignup)
            .where(
                col(PendingSignup.id) == job.pending_id,
                col(PendingSignup.token_hash) == token_hash(job.token),
                col(PendingSignup.mail_status) == "new",
                col(PendingSignup.expires_at) > now,
            )
            .values(mail_status="sending")
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            return "skipped"
        values = session.execute(
            select(col(PendingSignup.values)).where(col(PendingSignup.id) == job.pending_id)
        ).scalar_one()
        session.commit()
    email = confirmation_email(config, values["email"], job.token, uuid.uuid4().hex, now)
    status, error, sent_at = "sent", None, None
    try:
        _send_with_retries(transport, email)
        sent_at = now
    except TransportError as exc:
        status, error = "failed", str(exc)[:300]
        log.warning("a confirmation email could not be sent (%s)", exc.status or exc.__class__.__name__)
    except Exception as exc:  # noqa: BLE001  # a bug in a transport must not leave the row unrecorded
        status, error = "failed", f"unexpected {exc.__class__.__name__}"
        log.warning("a confirmation email could not be sent (unexpected %s)", exc.__class__.__name__)
    with Session(engine) as session:
        session.execute(
            update(PendingSignup)
            .where(col(PendingSignup.id) == job.pending_id, col(PendingSignup.mail_status) == "sending")
            .values(mail_status=status, mail_error=error, confirmation_sent_at=sent_at)
        )
        session.commit()
    return status


def _send_with_retries(transport: Transport, email: OutgoingEmail) -> None:
    """One request, and a couple more on 429/5xx/timeouts (SendGrid's hint honoured up to 5 s)."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            transport.send(email)
            return
        except TransportError as exc:
            if not exc.retryable or exc.fatal or attempt == _ATTEMPTS:
                raise
            wait = exc.retry_after if exc.retry_after is not None else 0.25 * 2**attempt
            if wait > 5:
                raise
            time.sleep(wait)


def stale_confirmations(engine: Engine, now: datetime, older_than: timedelta) -> list[ToSend]:
    """Confirmations stored but never claimed (the serve stopped in between), each with a fresh token.

    The old token was never sent, so replacing it is harmless; the
    conditional update keeps a sender that still holds the old one from
    sending too.
    """
    found: list[ToSend] = []
    with Session(engine) as session:
        ids: list[int] = list(
            session.scalars(
                select(col(PendingSignup.id)).where(
                    col(PendingSignup.mail_status) == "new",
                    col(PendingSignup.posted_at) < now - older_than,
                    col(PendingSignup.expires_at) > now,
                )
            )
        )
        for pending_id in ids:
            token = new_token()
            changed = session.execute(
                update(PendingSignup)
                .where(col(PendingSignup.id) == pending_id, col(PendingSignup.mail_status) == "new")
                .values(token_hash=token_hash(token))
            )
            if changed.rowcount == 1:  # type: ignore[attr-defined]
                found.append(ToSend(pending_id, token))
        session.commit()
    return found


def forget_pending(session: Session, digest: str, now: datetime) -> bool:
    """Erasure of someone known only by unconfirmed posts: they go, and the address is kept out as erased.

    False when there were none (nothing is held about the address).
    """
    gone = session.execute(delete(PendingSignup).where(col(PendingSignup.email_hash) == digest))
    if not gone.rowcount:  # type: ignore[attr-defined]
        return False
    session.add(
        Contact(
            email_hash=digest,
            created_at=now,
            updated_at=now,
            erased_at=now,
            suppressed_at=now,
            suppressed_reason="erased",
        )
    )
    return True


#: how long an expired request's bare row (no address, no values) is kept, so its link says "expired"
KEEP_EXPIRED = timedelta(days=30)


def expire(session: Session, now: datetime) -> None:
    """Pending posts past their time lose what was posted (values, IP, browser) at once; their bare
    rows (two hashes and times) go `KEEP_EXPIRED` later, so an old link says "expired", not "broken"."""
    session.execute(
        update(PendingSignup)
        .where(col(PendingSignup.expires_at) <= now, col(PendingSignup.mail_status) != "expired")
        .values(values={}, ip=None, user_agent=None, mail_status="expired")
    )
    session.execute(delete(PendingSignup).where(col(PendingSignup.expires_at) <= now - KEEP_EXPIRED))


def drop_expired(engine: Engine, now: datetime) -> None:
    """`expire`, in a transaction of its own (the serve's sweep, each minute)."""
    with Session(engine) as session:
        expire(session, now)
        session.commit()
