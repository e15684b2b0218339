"""Who is told that her webinar session moved or was cancelled (`on:` steps, spec section 7).

A step with `on: rescheduled` goes once per move, and `on: cancelled` once, to each
registrant whose confirmation was already sent: someone who never heard of the old date
needs no word about a new one. "At most once" is kept per *change*: the ledger row's step
id is the step's id, `@`, and the start the notice is about. Notices are looked for at
every run, so a retryable failure goes next time, and never once that start has passed.
Paused and suppressed enrollments are not written to. The keys: docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlmodel import Session, col

from funnel.config import Config, Step
from funnel.store.ledger import StepRow
from funnel.store.models import Contact, Enrollment, StepRun

#: why a cancelled session's enrollments end (kept here: both the move and the notice read it)
CANCELLED_REASON = "session cancelled"


@dataclass
class Notice:
    """One letter that answers a change, for one enrollment, with its ledger key."""

    contact: Contact
    enrollment: Enrollment
    step: Step
    key: str
    #: the ledger's row for it when an earlier attempt failed for a passing reason
    row: StepRow | None = None


def notice_key(step: Step, start: datetime) -> str:
    """The ledger step id of the letter `step` about the session starting at `start` (see module)."""
    return f"{step.id}@{start.isoformat()}"


def due_notices(session: Session, config: Config, now: datetime) -> list[Notice]:
    """Every move or cancellation letter not sent yet (nor settled), in enrollment order."""
    found: list[Notice] = []
    for sid, sequence in config.sequences.items():
        confirmation = sequence.confirmation
        moved, called_off = sequence.answer("rescheduled"), sequence.answer("cancelled")
        if confirmation is None or (moved is None and called_off is None):
            continue
        kinds = []
        if moved is not None:
            kinds.append(and_(col(Enrollment.status) == "active", col(Enrollment.moves) > 0))
        if called_off is not None:
            kinds.append(and_(col(Enrollment.status) == "exited", col(Enrollment.end_reason) == CANCELLED_REASON))
        told = (
            select(col(StepRun.enrollment_id))
            .where(and_(col(StepRun.step_id) == confirmation.id, col(StepRun.status) == "sent"))
            .scalar_subquery()
        )
        rows = session.execute(
            select(Enrollment, Contact)
            .join(Contact, col(Contact.id) == col(Enrollment.contact_id))
            .where(
                and_(
                    col(Enrollment.sequence) == sid,
                    or_(*kinds),
                    col(Enrollment.webinar_start) > now,
                    col(Enrollment.id).in_(told),
                    col(Contact.erased_at).is_(None),
                    col(Contact.unsubscribed_at).is_(None),
                    col(Contact.suppressed_reason).is_(None),
                    col(Contact.email).is_not(None),
                )
            )
            .order_by(col(Enrollment.id))
        ).all()
        wanted: list[tuple[Contact, Enrollment, Step, str]] = []
        for enrollment, contact in rows:
            step = moved if enrollment.status == "active" else called_off
            assert step is not None and enrollment.webinar_start is not None
            wanted.append((contact, enrollment, step, notice_key(step, enrollment.webinar_start)))
        if not wanted:
            continue
        existing = {
            (r.enrollment_id, r.step_id): r
            for r in session.scalars(
                select(StepRun).where(
                    and_(
                        col(StepRun.enrollment_id).in_([e.id for _, e, _, _ in wanted]),
                        col(StepRun.step_id).in_(sorted({k for *_, k in wanted})),
                    )
                )
            )
        }
        for contact, enrollment, step, key in wanted:
            row = existing.get((enrollment.id or 0, key))
            if row is None:
                found.append(Notice(contact, enrollment, step, key))
            elif row.status == "failed" and row.retryable:
                plain = StepRow(
                    row.id or 0, row.enrollment_id, row.sequence, row.step_id, row.status, True, row.reason, row.send_id
                )
                found.append(Notice(contact, enrollment, step, key, plain))
    return found
