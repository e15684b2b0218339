"""The choices on the unsubscribe page besides "stop everything" (spec section 12).

"Just the webinar emails" tags her `letters-stopped`, which the schedule reads as
every sequence's goal; "pause for a month" pauses her enrollments the way a reply
does, until a run resumes them. Both are kept on the contact's own rows (a tag, the
enrollments): no new table, and `funnel contacts show` shows them as it shows any tag
or pause. The rules: docs/decisions.md, "Choices on the unsubscribe page".
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, delete, select, update
from sqlmodel import Session, col

from funnel.schedule import LETTERS_STOPPED
from funnel.store.models import Contact, Enrollment, Tag

__all__ = ["LETTERS_STOPPED", "MONTH_PAUSE", "PAUSE_LENGTH"]
#: why her enrollments are paused after "pause for a month"
MONTH_PAUSE = "paused for a month from the email page"
#: how long "pause for a month" lasts
PAUSE_LENGTH = timedelta(days=30)


def letters_stopped(session: Session, contact: Contact) -> bool:
    return (
        session.scalars(select(Tag).where(col(Tag.contact_id) == contact.id, col(Tag.tag) == LETTERS_STOPPED)).first()
        is not None
    )


def stop_letters(session: Session, contact: Contact, now: datetime) -> bool:
    """Keep only the webinar emails; False when she already had."""
    if letters_stopped(session, contact):
        return False
    session.add(Tag(contact_id=contact.id or 0, tag=LETTERS_STOPPED, source="email page", added_at=now))
    _wake(session, contact, now)
    return True


def restart_letters(session: Session, contact: Contact, now: datetime) -> bool:
    """Undo `stop_letters`; False when there was nothing to undo."""
    gone = session.execute(delete(Tag).where(and_(col(Tag.contact_id) == contact.id, col(Tag.tag) == LETTERS_STOPPED)))
    if not gone.rowcount:  # type: ignore[attr-defined]  # a DELETE gives a CursorResult
        return False
    _wake(session, contact, now)
    return True


def pause_for_a_month(session: Session, contact: Contact, now: datetime) -> int:
    """Pause her active enrollments for `PAUSE_LENGTH`; how many were paused."""
    outcome = session.execute(
        update(Enrollment)
        .where(and_(col(Enrollment.contact_id) == contact.id, col(Enrollment.status) == "active"))
        .values(status="paused", paused_at=now, pause_reason=MONTH_PAUSE)
    )
    return int(outcome.rowcount)  # type: ignore[attr-defined]


def is_paused_for_a_month(session: Session, contact: Contact) -> bool:
    return (
        session.scalars(
            select(Enrollment).where(
                col(Enrollment.contact_id) == contact.id,
                col(Enrollment.status) == "paused",
                col(Enrollment.pause_reason) == MONTH_PAUSE,
            )
        ).first()
        is not None
    )


def end_pause(session: Session, contact: Contact, now: datetime) -> int:
    """Undo `pause_for_a_month` now; a pause made by a reply stays."""
    return _resume(session, now, Enrollment.contact_id == contact.id)


def resume_finished_pauses(session: Session, now: datetime) -> int:
    """Resume every month's pause whose month is over (each run, before it sends)."""
    return _resume(session, now, col(Enrollment.paused_at) <= now - PAUSE_LENGTH)


def _resume(session: Session, now: datetime, which: object) -> int:
    outcome = session.execute(
        update(Enrollment)
        .where(
            and_(
                col(Enrollment.status) == "paused",
                col(Enrollment.pause_reason) == MONTH_PAUSE,
                which,  # type: ignore[arg-type]
            )
        )
        .values(status="active", paused_at=None, pause_reason=None, next_due_at=now)
    )
    return int(outcome.rowcount)  # type: ignore[attr-defined]


def _wake(session: Session, contact: Contact, now: datetime) -> None:
    """Her active enrollments are looked at again by the next run (a tag changes what is due)."""
    session.execute(
        update(Enrollment)
        .where(and_(col(Enrollment.contact_id) == contact.id, col(Enrollment.status) == "active"))
        .values(next_due_at=now)
    )
