"""SendGrid's events, stored: each once, tied to its send, and suppressing where it must.

The web layer checks the signature and parses the post (funnel.tracking,
pure); this module writes what it found. SendGrid delivers at least once and
in no particular order, so events are stored by `sg_event_id` with an
insert that ignores a duplicate, in time order within a post. A bounce, a
drop, a spam report or an unsubscribe stops all mail to the address at once
(the next run exits the person's sequences), with the reason kept on the
contact. Nothing personal is logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from funnel.contacts import unsubscribe
from funnel.models import Contact, Enrollment, StepRun
from funnel.models import Event as EventRow
from funnel.sources import email_hash, normalize_email
from funnel.tracking import Event, EventKind, Skipped, scrubbed

_SUPPRESSION_WORDS = {
    EventKind.BOUNCE: "bounced",
    EventKind.DROPPED: "dropped by SendGrid",
    EventKind.SPAMREPORT: "marked as spam",
}


@dataclass
class StoreResult:
    """What one webhook post did; the web layer answers with it (counts only, nothing personal)."""

    stored: int = 0
    duplicates: int = 0
    suppressed: int = 0
    skipped: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "stored": self.stored,
            "duplicates": self.duplicates,
            "suppressed": self.suppressed,
            "skipped": self.skipped,
        }


def store_events(session: Session, events: list[Event], skipped: list[Skipped], now: datetime) -> StoreResult:
    """Store new events, suppress where they say so; the caller commits."""
    result = StoreResult(skipped=[{"index": s.index, "reason": s.reason} for s in skipped])
    for event in sorted(events, key=lambda e: e.occurred_at):
        step_run = _step_run(session, event.send_id)
        digest = _hash(event.email)
        contact_id, erased = _contact_id(session, step_run, digest)
        # nothing personal is kept about someone erased, or about an address we do not hold
        keep = contact_id is not None and not erased
        raw, reason = (event.raw, event.reason) if keep else (scrubbed(event.raw), None)
        inserted = _insert(
            session,
            {
                "sg_event_id": event.sg_event_id,
                "kind": event.kind.value,
                "occurred_at": event.occurred_at,
                "received_at": now,
                "contact_id": contact_id,
                "step_run_id": step_run.id if step_run else None,
                "send_id": event.send_id,
                "sequence": step_run.sequence if step_run else event.sequence,
                "step_id": step_run.step_id if step_run else event.step,
                "email_hash": digest if keep else None,
                "reason": reason,
                "raw": raw,
            },
        )
        if not inserted:
            result.duplicates += 1
            continue
        result.stored += 1
        if event.suppresses and suppress(session, contact_id, digest, event.kind, reason, now):
            result.suppressed += 1
    return result


def suppress(
    session: Session, contact_id: int | None, digest: str | None, kind: EventKind, reason: str | None, now: datetime
) -> bool:
    """Stop mail to the event's address at once; True when that changed something.

    An address we do not hold (mail sent by other means on the same account)
    is kept as a hash only, like `funnel suppressions sync` does: enough to
    refuse a later import, nothing personal.
    """
    contact = session.get(Contact, contact_id) if contact_id is not None else None
    if contact is None:
        if digest is None:
            return False
        contact = Contact(email_hash=digest, created_at=now, updated_at=now)
        session.add(contact)
        session.flush()
    if kind in (EventKind.UNSUBSCRIBE, EventKind.GROUP_UNSUBSCRIBE):
        via = "SendGrid unsubscribe" if kind is EventKind.UNSUBSCRIBE else "SendGrid group unsubscribe"
        return unsubscribe(session, contact, now, via=via)
    if contact.suppressed_reason is not None:
        return False  # the first reason stays
    words = _SUPPRESSION_WORDS.get(kind, kind.value)
    contact.suppressed_reason = f"{words}: {reason}"[:200] if reason else words
    contact.suppressed_at = contact.updated_at = now
    session.add(contact)
    return True


def _insert(session: Session, values: dict[str, object]) -> bool:
    """INSERT ... ON CONFLICT (sg_event_id) DO NOTHING; True when the row is new."""
    builder = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    table = EventRow.__table__  # type: ignore[attr-defined]  # SQLModel does not declare __table__ for mypy
    outcome = session.execute(builder(table).values(**values).on_conflict_do_nothing(index_elements=["sg_event_id"]))
    return bool(outcome.rowcount)  # type: ignore[attr-defined]  # an INSERT gives a CursorResult


def _step_run(session: Session, send_id: str | None) -> StepRun | None:
    if not send_id:
        return None
    return session.scalars(select(StepRun).where(col(StepRun.send_id) == send_id)).first()


def _hash(address: str | None) -> str | None:
    if not address:
        return None
    try:
        return email_hash(normalize_email(address))
    except ValueError:
        return None


def _contact_id(session: Session, step_run: StepRun | None, digest: str | None) -> tuple[int | None, bool]:
    """The send's contact (through its enrollment), else the contact holding the address; and whether erased.

    An erased person's events keep no personal field: `forget` must not be undone by a late event.
    """
    query = None
    if step_run is not None:
        query = select(col(Contact.id), col(Contact.erased_at)).where(
            col(Contact.id)
            == select(col(Enrollment.contact_id)).where(col(Enrollment.id) == step_run.enrollment_id).scalar_subquery()
        )
    elif digest is not None:
        query = select(col(Contact.id), col(Contact.erased_at)).where(col(Contact.email_hash) == digest)
    found = session.execute(query).first() if query is not None else None
    if found is None and step_run is not None and digest is not None:
        found = session.execute(
            select(col(Contact.id), col(Contact.erased_at)).where(col(Contact.email_hash) == digest)
        ).first()
    if found is None:
        return None, False
    return int(found[0]), found[1] is not None
