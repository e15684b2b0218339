"""One person's state, in one place: find, show, unsubscribe, resubscribe, suppress,
pause, resume, tags, export, forget.

The CLI, the web pages, SendGrid's events and suppression lists and the
Inbound Parse replies all change a person through these functions, so a
rule about her (the first suppression reason stays; an unsubscribe is kept
in her history) holds whichever way the change came. What `forget` keeps,
and why, is in its own docstring.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import String, and_, cast, delete, literal, or_, select, update
from sqlmodel import Session, col

from funnel.config import Config
from funnel.errors import NotFoundError, UsageError
from funnel.schedule import LETTERS_STOPPED, due_times, goal_reached
from funnel.store.models import (
    Consent,
    Contact,
    Enrollment,
    EnrollmentTag,
    Event,
    InboundMessage,
    PendingSignup,
    PendingTag,
    StepRun,
    SubscriptionChange,
    Tag,
)
from funnel.text import email_hash, normalize_email
from funnel.timeutil import isoformat_z, zone


def contact_zone(config: Config, contact: Contact) -> ZoneInfo:
    """The contact's timezone, or the practice's when they have none (or an unknown one)."""
    try:
        return zone(contact.timezone or config.practice.timezone)
    except ValueError:
        return zone(config.practice.timezone)


def find_by_hash(session: Session, digest: str) -> Contact | None:
    """The contact whose address hashes to `digest` (erased ones too: their row keeps the hash), or None."""
    return session.scalars(select(Contact).where(col(Contact.email_hash) == digest)).first()


def find_by_address(session: Session, address: str) -> Contact | None:
    """The contact for an address, any case (erased ones too), or None; ValueError when it is not an address."""
    return find_by_hash(session, email_hash(normalize_email(address)))


def find_contact(session: Session, address: str) -> Contact:
    """The contact for an address (any case), or NotFoundError (exit 1)."""
    try:
        contact = find_by_address(session, address)
    except ValueError as exc:
        raise UsageError(f"{address!r} is not a valid email address ({exc})") from None
    if contact is None or contact.erased_at is not None:
        raise NotFoundError(f"no contact with the address {address}")
    return contact


#: how long "Subscribe again" on the unsubscribe page can undo an unsubscribe made from that email's link
UNDO_DAYS = 30
#: how an unsubscribe made through an email's own link is recorded (the page's button, RFC 8058 one-click)
BY_LINK = ("link", "one-click")


def unsubscribe(
    session: Session, contact: Contact, now: datetime, via: str = "by hand", step_run_id: int | None = None
) -> bool:
    """Stop all mail at once; returns False when they already were unsubscribed.

    `step_run_id` names the email whose link was used (from the token), for
    the report and for undoing it from that same email. Every change is also
    appended to her history (`subscription_changes`).
    """
    if contact.unsubscribed_at is not None:
        return False
    contact.unsubscribed_at, contact.unsubscribed_via, contact.updated_at = now, via, now
    contact.unsubscribed_step_run_id = step_run_id
    session.add(contact)
    _record(session, contact, now, "unsubscribed", via, step_run_id)
    return True


def set_discreet(session: Session, contact: Contact, on: bool, now: datetime) -> bool:
    """Turn discretion on or off by hand, as the person asked; returns False when it already was so.

    Also the pending form posts for her address follow (a post waiting for
    confirmation then applies what she asked now, not what it said).
    """
    if contact.discreet == on:
        return False
    contact.discreet, contact.updated_at = on, now
    session.add(contact)
    session.execute(
        update(PendingSignup)
        .where(col(PendingSignup.email_hash) == contact.email_hash, col(PendingSignup.confirmed_at).is_(None))
        .values(discreet=on)
    )
    return True


def resubscribe(
    session: Session, contact: Contact, now: datetime, via: str = "by hand", step_run_id: int | None = None
) -> bool:
    """Undo an unsubscribe (by hand, or a new form post). Bounces and spam reports stay.

    The contact row then shows her as subscribed; the opt-out stays in her
    history, followed by this opt-in.
    """
    if contact.unsubscribed_at is None:
        return False
    contact.unsubscribed_at, contact.unsubscribed_via, contact.updated_at = None, None, now
    contact.unsubscribed_step_run_id = None
    session.add(contact)
    _record(session, contact, now, "resubscribed", via, step_run_id)
    return True


def undo_from_link(session: Session, contact: Contact, step_run_id: int | None, now: datetime) -> bool:
    """Undo an unsubscribe ("Subscribe again" on the unsubscribe page): True when it was undone.

    Only an unsubscribe made through that same email's link (the page's
    button or one-click, `step_run_id` the same email), at most `UNDO_DAYS`
    days ago. Anything else (by hand, at SendGrid, from another email, a link
    without an email, long ago, or nothing to undo) stays as it is: a
    forwarded or old email must not put anyone back on the list, and an
    opt-out she made elsewhere is hers to take back elsewhere.
    """
    unsubscribed_at = contact.unsubscribed_at
    if (
        unsubscribed_at is None
        or contact.erased_at is not None
        or step_run_id is None
        or contact.unsubscribed_via not in BY_LINK
        or contact.unsubscribed_step_run_id != step_run_id
        or now - unsubscribed_at > timedelta(days=UNDO_DAYS)
        or now < unsubscribed_at
    ):
        return False
    return resubscribe(session, contact, now, via="link", step_run_id=step_run_id)


def _record(session: Session, contact: Contact, now: datetime, change: str, via: str, step_run_id: int | None) -> None:
    if contact.id is None:  # a contact made in this same transaction
        session.flush()
    session.add(
        SubscriptionChange(contact_id=contact.id or 0, changed_at=now, change=change, via=via, step_run_id=step_run_id)
    )


def history(session: Session, contact: Contact) -> list[dict[str, Any]]:
    """Her opt-outs and opt-ins, oldest first (`contacts show` and `export`)."""
    return [
        {"change": row.change, "at": _iso(row.changed_at), "via": row.via}
        for row in session.scalars(
            select(SubscriptionChange)
            .where(col(SubscriptionChange.contact_id) == contact.id)
            .order_by(col(SubscriptionChange.changed_at), col(SubscriptionChange.id))
        )
    ]


#: what a tag may look like: lower case letters, digits, `-`, `_` and `.` (tags are compared exactly)
TAG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def known_tags(config: Config) -> set[str]:
    """Every tag sequences.yaml sets or looks at (sources, exit_on_tags, if_tags, unless_tags)."""
    tags = {tag for source in config.sources.values() for tag in source.tags}
    tags.add(LETTERS_STOPPED)  # "just the webinar emails" on the unsubscribe page (funnel.preferences)
    for sequence in config.sequences.values():
        tags.update(sequence.exit_on_tags)
        for step in sequence.steps:
            tags.update(step.if_tags)
            tags.update(step.unless_tags)
    return tags


def check_tags(config: Config, tags: Iterable[str]) -> list[str]:
    """Validate tags typed by hand (UsageError, exit 2); returns a note for each tag sequences.yaml never uses."""
    notes = []
    known = known_tags(config)
    for tag in tags:
        if not TAG_PATTERN.match(tag):
            raise UsageError(
                f"{tag!r} is not a tag: write it in lower case letters, digits and dashes, e.g. client "
                "(tags are matched exactly)"
            )
        if tag not in known:
            hint = difflib.get_close_matches(tag, sorted(known), n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"the tags it uses: {', '.join(sorted(known)) or 'none'}"
            notes.append(f"note: {config.path.name} does not use the tag {tag!r}: {fix}")
    return notes


def add_tags(session: Session, contact: Contact, tags: Iterable[str], now: datetime) -> list[str]:
    """Tag a contact by hand (e.g. `client`, `consultation-held`); returns the tags that were new."""
    have = set(session.scalars(select(col(Tag.tag)).where(col(Tag.contact_id) == contact.id)))
    added = [tag for tag in dict.fromkeys(tags) if tag not in have]
    for tag in added:
        session.add(Tag(contact_id=contact.id or 0, tag=tag, source="by hand", added_at=now))
    return added


def remove_tags(session: Session, contact: Contact, tags: Iterable[str]) -> list[str]:
    """Take tags off a contact by hand; returns the tags she had. Steps already skipped stay skipped."""
    wanted = list(dict.fromkeys(tags))
    have = set(session.scalars(select(col(Tag.tag)).where(col(Tag.contact_id) == contact.id, col(Tag.tag).in_(wanted))))
    if have:
        session.execute(delete(Tag).where(col(Tag.contact_id) == contact.id, col(Tag.tag).in_(sorted(have))))
    # and from her webinar sessions (attendance taken back: she was not there)
    hers = select(col(Enrollment.id)).where(col(Enrollment.contact_id) == contact.id)
    session.execute(
        delete(EnrollmentTag).where(col(EnrollmentTag.enrollment_id).in_(hers), col(EnrollmentTag.tag).in_(wanted))
    )
    return [tag for tag in wanted if tag in have]


def forget(session: Session, contact: Contact, now: datetime) -> None:
    """Erase personal data; keep only the hash that stops mail to the address.

    Every personal field goes (address, names, extra fields, tags), but the row
    stays, keyed by the address hash and marked erased: it stops all mail to that
    address for good, and an old CSV row hashes to the same key, so nobody comes
    back by re-import. Step rows stay (they hold no personal data) so the
    practice's figures do not change.
    """
    contact_id = contact.id
    session.execute(delete(Tag).where(col(Tag.contact_id) == contact_id))
    session.execute(delete(Consent).where(col(Consent.contact_id) == contact_id))  # IP and browser are personal
    session.execute(delete(PendingTag).where(col(PendingTag.email_hash) == contact.email_hash))
    # form posts waiting for her confirmation hold her address, name and message
    session.execute(delete(PendingSignup).where(col(PendingSignup.email_hash) == contact.email_hash))
    session.execute(
        update(Enrollment)
        .where(col(Enrollment.contact_id) == contact_id, col(Enrollment.status).in_(("active", "paused")))
        .values(status="exited", end_reason="erased", ended_at=now, next_due_at=None)
    )
    # her own join link names her registration: erased with the rest
    session.execute(
        update(Enrollment).where(col(Enrollment.contact_id) == contact_id).values(webinar_start=None, join_url=None)
    )
    # which sessions she came to, and when she registered for which: gone too (each keeps
    # a text of its own, as the enrollment stays unique per contact, sequence and session)
    hers = select(col(Enrollment.id)).where(col(Enrollment.contact_id) == contact_id)
    session.execute(delete(EnrollmentTag).where(col(EnrollmentTag.enrollment_id).in_(hers)))
    session.execute(
        update(Enrollment)
        .where(col(Enrollment.contact_id) == contact_id, col(Enrollment.session) != "")
        .values(session=literal("erased ", String) + cast(col(Enrollment.id), String))
    )
    _forget_events_and_replies(session, contact)
    contact.email = contact.first_name = contact.last_name = contact.timezone = None
    contact.fields = {}
    contact.discreet = False
    contact.first_source = None
    contact.erased_at = contact.suppressed_at = contact.updated_at = now
    contact.suppressed_reason = "erased"
    session.add(contact)


def _forget_events_and_replies(session: Session, contact: Contact) -> None:
    """SendGrid's events keep their kind and time (the figures), not the address, IP, agent or URL;
    replies keep only that they came."""
    from funnel.sendgrid.webhook import scrubbed

    owned = or_(col(Event.contact_id) == contact.id, col(Event.email_hash) == contact.email_hash)
    for event in session.scalars(select(Event).where(owned)):
        event.raw, event.reason, event.email_hash = scrubbed(event.raw or {}), None, None
        session.add(event)
    session.execute(
        update(InboundMessage)
        .where(or_(col(InboundMessage.contact_id) == contact.id, col(InboundMessage.from_hash) == contact.email_hash))
        .values(content={}, from_hash=None)
    )


def describe(session: Session, config: Config, contact: Contact) -> dict[str, Any]:
    """Everything `contacts show --json` prints (and `export` adds to)."""
    tags = session.execute(
        select(col(Tag.tag), col(Tag.source), col(Tag.added_at)).where(col(Tag.contact_id) == contact.id)
    ).all()
    enrollments = list(
        session.scalars(select(Enrollment).where(col(Enrollment.contact_id) == contact.id).order_by(col(Enrollment.id)))
    )
    rows: dict[int, dict[str, StepRun]] = {}
    if enrollments:
        for row in session.scalars(select(StepRun).where(col(StepRun.enrollment_id).in_([e.id for e in enrollments]))):
            rows.setdefault(row.enrollment_id, {})[row.step_id] = row
    tz_name = contact.timezone or config.practice.timezone
    return {
        "email": contact.email,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "timezone": tz_name,
        "discreet": contact.discreet,
        "fields": contact.fields or {},
        "tags": sorted(t.tag for t in tags),
        "unsubscribed": contact.unsubscribed_at is not None,
        "unsubscribed_at": _iso(contact.unsubscribed_at),
        "subscription_history": history(session, contact),
        "suppressed": contact.suppression is not None,
        "suppressed_reason": contact.suppression,
        "created_at": _iso(contact.created_at),
        "first_source": contact.first_source,
        "enrollments": [
            _enrollment(config, e, rows.get(e.id or 0, {}), tz_name, frozenset(t.tag for t in tags))
            for e in enrollments
        ],
        "events": _events(session, contact),
        "replies": [
            {
                "received_at": _iso(r.received_at),
                "status": r.status,
                "auto_reply": r.auto_reply,
                "verified": r.verified,
                "paused": r.paused,
            }
            for r in session.scalars(
                select(InboundMessage)
                .where(col(InboundMessage.contact_id) == contact.id)
                .order_by(col(InboundMessage.received_at), col(InboundMessage.id))
            )
        ],
    }


def _events(session: Session, contact: Contact) -> list[dict[str, Any]]:
    """SendGrid's events about this person, oldest first (kind, time, which email, why)."""
    shown = []
    for event in session.scalars(
        select(Event).where(col(Event.contact_id) == contact.id).order_by(col(Event.occurred_at), col(Event.id))
    ):
        item: dict[str, Any] = {"kind": event.kind, "at": _iso(event.occurred_at)}
        if event.sequence:
            item["sequence"] = event.sequence
        if event.step_id:
            item["step"] = event.step_id
        if event.reason:
            item["reason"] = event.reason
        shown.append(item)
    return shown


def _enrollment(
    config: Config, enrollment: Enrollment, rows: dict[str, StepRun], tz_name: str, tags: frozenset[str] = frozenset()
) -> dict[str, Any]:
    sequence = config.sequences.get(enrollment.sequence)
    steps: list[dict[str, Any]] = []
    dues: dict[str, datetime | None] = {}
    problem = None
    goal = None
    if sequence is not None:
        goal = goal_reached(sequence, tags) if enrollment.status == "active" else None
        try:
            dues = due_times(sequence, enrollment.enrolled_at, enrollment.webinar_start, _zone(config, tz_name))
        except (OverflowError, ValueError) as exc:  # a value stored by an older version: show the rest
            problem = f"due times cannot be computed ({exc})"
        for step in sequence.timed_steps:
            shown = _step(step.id, rows.get(step.id), dues.get(step.id), enrollment)
            if goal and shown["status"] == "pending" and not (step.transactional or step.after_goal):
                # the goal ends the marketing steps at their time; transactional and after_goal ones still go
                shown["reason"] = f"{goal}: will not be sent"
            steps.append(shown)
    # steps that were acted on but are no longer in sequences.yaml
    known = {s["id"] for s in steps}
    steps.extend(_step(sid, row, row.due_at, enrollment) for sid, row in rows.items() if sid not in known)
    return {
        "sequence": enrollment.sequence,
        "status": enrollment.status,
        "reason": enrollment.end_reason or enrollment.pause_reason or problem,
        "paused_at": _iso(enrollment.paused_at),
        "enrolled_at": _iso(enrollment.enrolled_at),
        "webinar": enrollment.webinar,
        "webinar_start": _iso(enrollment.webinar_start),
        "join_url": enrollment.join_url,
        # the webinar session (its local start as first written); '' when none
        "session": enrollment.session,
        "next_due_at": _iso(enrollment.next_due_at),
        "goal": goal,
        "steps": steps,
    }


def _zone(config: Config, name: str) -> ZoneInfo:
    """The contact's zone, or the practice's when the stored name is unusable."""
    try:
        return zone(name)
    except ValueError:
        return zone(config.practice.timezone)


def _step(step_id: str, row: StepRun | None, due: datetime | None, enrollment: Enrollment) -> dict[str, Any]:
    if row is None:
        if enrollment.status in ("active", "paused"):
            return {"id": step_id, "status": "pending", "due_at": _iso(due)}
        return {
            "id": step_id,
            "status": "skipped",
            "reason": enrollment.end_reason or "sequence ended",
            "due_at": _iso(due),
        }
    status = row.status
    reason = row.reason
    if status == "sending":
        status, reason = "unknown", "being sent right now"
    elif status == "claimed":  # taken by a run that has not handed it to the transport yet
        status, reason = "pending", "about to be sent"
    shown: dict[str, Any] = {"id": step_id, "status": status, "due_at": _iso(row.due_at or due)}
    if reason:
        shown["reason"] = reason
    if row.sent_at:
        shown["sent_at"] = _iso(row.sent_at)
    if row.message_id:
        shown["message_id"] = row.message_id
    return shown


def export(session: Session, config: Config, contact: Contact) -> dict[str, Any]:
    """Everything held about a person (GDPR access request), as JSON-able data."""
    data = describe(session, config, contact)
    tags = session.execute(
        select(col(Tag.tag), col(Tag.source), col(Tag.added_at)).where(col(Tag.contact_id) == contact.id)
    ).all()
    data["tag_details"] = [{"tag": t.tag, "source": t.source, "added_at": _iso(t.added_at)} for t in tags]
    data["consent"] = {"source": contact.first_source, "first_seen_at": _iso(contact.created_at)}
    data["unsubscribed_via"] = contact.unsubscribed_via
    data["consents"] = [
        {
            "source": c.source,
            "given_at": _iso(c.given_at),
            "ip": c.ip,
            "user_agent": c.user_agent,
            **(
                {
                    "confirmed_at": _iso(c.confirmed_at),
                    "confirm_ip": c.confirm_ip,
                    "confirm_user_agent": c.confirm_user_agent,
                }
                if c.confirmed_at
                else {}
            ),
        }
        for c in session.scalars(select(Consent).where(col(Consent.contact_id) == contact.id).order_by(col(Consent.id)))
    ]
    data["pending_signups"] = pending_of(session, contact.email_hash)
    data["event_details"] = [
        {"kind": e.kind, "at": _iso(e.occurred_at), "received_at": _iso(e.received_at), "raw": e.raw}
        for e in session.scalars(select(Event).where(col(Event.contact_id) == contact.id).order_by(col(Event.id)))
    ]
    data["reply_details"] = [
        {"received_at": _iso(r.received_at), "status": r.status, "content": r.content}
        for r in session.scalars(
            select(InboundMessage).where(col(InboundMessage.contact_id) == contact.id).order_by(col(InboundMessage.id))
        )
    ]
    return data


def _iso(value: datetime | None) -> str | None:
    return isoformat_z(value) if value else None


def suppress(session: Session, contact: Contact, reason: str, now: datetime) -> bool:
    """Stop all mail to her for `reason` (a bounce, a spam report, ...); False when she already was.

    The first reason stays: what stopped her mail first is what `contacts show` says.
    """
    if contact.suppressed_reason is not None:
        return False
    contact.suppressed_reason, contact.suppressed_at = reason, now
    contact.updated_at = now
    session.add(contact)
    return True


def pause(session: Session, contact: Contact, now: datetime, reason: str) -> int:
    """Pause every active enrollment of a contact (a reply, by hand); the number paused."""
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


def apply_suppressions(session: Session, entries: Iterable[tuple[str, str, Any]], now: datetime) -> dict[str, int]:
    """Stop mail to each (address, kind, when) of SendGrid's suppression lists; counts by kind.

    An address funnel does not know is kept as its hash only: enough to
    refuse a later import, nothing personal. The caller commits.
    """
    counts: dict[str, int] = {}
    for address, kind, _created in entries:
        try:
            digest = email_hash(normalize_email(address))
        except ValueError:
            counts["unreadable"] = counts.get("unreadable", 0) + 1
            continue
        contact = find_by_hash(session, digest)
        if contact is None:
            session.add(
                Contact(email_hash=digest, created_at=now, updated_at=now, suppressed_reason=kind, suppressed_at=now)
            )
            changed = True
        elif kind == "unsubscribe":
            changed = contact.unsubscribed_at is None
            if changed:
                unsubscribe(session, contact, now, via="sendgrid")  # also kept in her history
        else:
            changed = suppress(session, contact, kind, now)
        if changed:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def pending_of(session: Session, digest: str) -> list[dict[str, Any]]:
    """A person's pending posts, for `contacts export` (what is held about her, also unconfirmed)."""
    return [
        {
            "source": p.source,
            "posted_at": isoformat_z(p.posted_at),
            "ip": p.ip,
            "user_agent": p.user_agent,
            "values": p.values,
            "confirmation": p.mail_status,
            "confirmed_at": isoformat_z(p.confirmed_at) if p.confirmed_at else None,
            "expires_at": isoformat_z(p.expires_at),
        }
        for p in session.scalars(
            select(PendingSignup).where(col(PendingSignup.email_hash) == digest).order_by(col(PendingSignup.id))
        )
    ]
