"""Deciding a page of due enrollments: what to skip, whom to exit, what to claim.

For each person of the page (locked on PostgreSQL, so that one worker at a
time decides her: the gap between marketing emails counts what another
worker just sent) the pure schedule (`funnel.schedule`) looks at each of her
due enrollments in turn; this module acts on its answers. Skips and failures
are written through the ledger, exits and wake-up times as deferred column
writes; steps to send come back as `Claim`s, which the hand-over stage
claims and sends.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import Select, and_, select
from sqlmodel import Session, col

from funnel import schedule
from funnel.config import Config, Sequence
from funnel.contacts import contact_zone
from funnel.run.finish import Outstanding, complete
from funnel.run.state import RunContext
from funnel.store.ledger import StepRow
from funnel.store.models import Contact, Enrollment, EnrollmentTag, Tag
from funnel.store.workers import lock_contacts
from funnel.webinar.sessions import session_scoped_tags, tags_in_session


@dataclass
class Claim:
    """A step the schedule says to send now, before this run has taken it."""

    contact: Contact
    enrollment: Enrollment
    sequence: Sequence
    send: schedule.Send
    row: StepRow | None
    rows: dict[str, StepRow] = field(default_factory=dict)
    #: the ledger's step id when it is not the step's own: a letter answering a change (`funnel.webinar.notices`)
    key: str | None = None


def tags_of(session: Session, contact_ids: list[int]) -> dict[int, set[str]]:
    """Each person's tags, by contact id."""
    tags: dict[int, set[str]] = defaultdict(set)
    for contact_id, tag in session.execute(
        select(col(Tag.contact_id), col(Tag.tag)).where(col(Tag.contact_id).in_(contact_ids))
    ):
        tags[contact_id].add(tag)
    return tags


def contact_state(config: Config, contact: Contact, tags: Iterable[str]) -> schedule.ContactState:
    """A person as the schedule sees her: time zone, tags, suppression, last marketing email."""
    return schedule.ContactState(
        tz=contact_zone(config, contact),
        tags=frozenset(tags),
        suppressed=contact.suppression,
        last_marketing_at=contact.last_marketing_at,
    )


def enrollment_state(
    enrollment: Enrollment, rows: dict[str, StepRow], introduced: dict[str, dict[str, datetime]]
) -> schedule.EnrollmentState:
    """An enrollment as the schedule sees it: when she came, her webinar, what each step came to."""
    return schedule.EnrollmentState(
        enrolled_at=enrollment.enrolled_at,
        webinar_start=enrollment.webinar_start,
        recorded={k: schedule.Recorded(r.status, r.retryable, r.reason) for k, r in rows.items()},
        introduced=introduced.get(enrollment.sequence, {}),
        imported_at=enrollment.imported_at,
    )


def due_page(now: datetime, after_id: int, size: int) -> Select[Enrollment]:  # type: ignore[type-var]
    """The next `size` active enrollments due by `now`, in id order after `after_id`."""
    return (
        select(Enrollment)
        .where(
            and_(
                col(Enrollment.status) == "active",
                col(Enrollment.next_due_at) <= now,
                col(Enrollment.id) > after_id,
            )
        )
        .order_by(col(Enrollment.id))
        .limit(size)
    )


class Decider:
    """Decides pages of due enrollments for one run."""

    def __init__(self, ctx: RunContext, outstanding: Outstanding, introduced: dict[str, dict[str, datetime]]) -> None:
        self.ctx = ctx
        self.outstanding = outstanding
        self.introduced = introduced
        #: by webinar, the tags that belong to one session (attendance), and the page's own of them
        self._scoped = session_scoped_tags(ctx.config)
        self._session_tags: dict[int, frozenset[str]] = {}

    def page(self, page: list[Enrollment]) -> list[Claim]:
        """Decide every enrollment of the page, person by person; the steps to claim now."""
        session = self.ctx.session
        contact_ids = sorted({e.contact_id for e in page})
        # PostgreSQL workers: one person is decided by one worker at a time, locked in id order
        contacts = {c.id: c for c in session.scalars(lock_contacts(contact_ids, self.ctx.engine))}
        tags = tags_of(session, contact_ids)
        recorded = self.ctx.ledger.rows_of([e.id or 0 for e in page])
        self._session_tags = self._own_session_tags(page)
        by_contact: dict[int, list[Enrollment]] = defaultdict(list)
        for enrollment in page:
            by_contact[enrollment.contact_id].append(enrollment)
        claims: list[Claim] = []
        for contact_id, enrollments in by_contact.items():
            contact = contacts[contact_id]
            state = contact_state(self.ctx.config, contact, tags.get(contact_id, ()))
            for enrollment in enrollments:
                state = self._decide(contact, enrollment, state, recorded.get(enrollment.id or 0, {}), claims)
            if state.last_marketing_at != contact.last_marketing_at:
                self.ctx.writes.set(contact, last_marketing_at=state.last_marketing_at)
        return claims

    def _own_session_tags(self, page: list[Enrollment]) -> dict[int, frozenset[str]]:
        """The session-scoped tags of the page's webinar-session enrollments (none asked for when none can be)."""
        ids = [e.id or 0 for e in page if e.session and e.webinar in self._scoped]
        if not ids:
            return {}
        found: dict[int, set[str]] = defaultdict(set)
        for enrollment_id, tag in self.ctx.session.execute(
            select(col(EnrollmentTag.enrollment_id), col(EnrollmentTag.tag)).where(
                col(EnrollmentTag.enrollment_id).in_(ids)
            )
        ):
            found[enrollment_id].add(tag)
        return {e: frozenset(tags) for e, tags in found.items()}

    def _decide(
        self,
        contact: Contact,
        enrollment: Enrollment,
        state: schedule.ContactState,
        rows: dict[str, StepRow],
        claims: list[Claim],
    ) -> schedule.ContactState:
        sequence = self.ctx.config.sequences.get(enrollment.sequence)
        if sequence is None:
            # the sequence was removed from sequences.yaml: nothing of it is sent
            self.ctx.end(enrollment, "exited", "sequence removed from sequences.yaml")
            return state
        scoped = self._scoped.get(enrollment.webinar or "") if enrollment.session else None
        if scoped:
            # within a webinar session's enrollment, attendance tags are that session's own
            seen = tags_in_session(state.tags, scoped, self._session_tags.get(enrollment.id or 0, frozenset()))
            after = self._evaluate_and_act(contact, enrollment, sequence, replace(state, tags=seen), rows, claims)
            return replace(after, tags=state.tags)
        return self._evaluate_and_act(contact, enrollment, sequence, state, rows, claims)

    def _evaluate_and_act(
        self,
        contact: Contact,
        enrollment: Enrollment,
        sequence: Sequence,
        state: schedule.ContactState,
        rows: dict[str, StepRow],
        claims: list[Claim],
    ) -> schedule.ContactState:
        ctx = self.ctx
        try:
            evaluation = schedule.evaluate(
                sequence,
                enrollment_state(enrollment, rows, self.introduced),
                state,
                ctx.now,
                ctx.config.delivery,
            )
        except (OverflowError, ValueError, OSError) as exc:
            # a value no import accepts today but an older version stored (a webinar in
            # the year 9999, say): this person's enrollment stops, with the reason; the run goes on
            self._unschedulable(contact, enrollment, sequence, rows, exc)
            return state
        for skip in evaluation.skips:
            self._record_skip(enrollment, skip, rows)
        if evaluation.exit_reason:
            ctx.end(enrollment, "exited", evaluation.exit_reason)
            ctx.summary.exited += 1
            return evaluation.contact or state
        if enrollment.next_due_at != evaluation.wake_at:
            ctx.writes.set(enrollment, next_due_at=evaluation.wake_at)
        if evaluation.sends:
            self.outstanding.expect(enrollment, evaluation.finished, evaluation.goal, state.tz)
            claims.extend(
                Claim(contact, enrollment, sequence, send, rows.get(send.step.id), rows) for send in evaluation.sends
            )
        elif evaluation.finished:
            complete(ctx, enrollment, sequence, evaluation.goal, state.tz)
        return evaluation.contact or state

    def _unschedulable(
        self, contact: Contact, enrollment: Enrollment, sequence: Sequence, rows: dict[str, StepRow], exc: Exception
    ) -> None:
        """Fail the next step of an enrollment whose times cannot be computed, and stop it."""
        start = enrollment.webinar_start.isoformat() if enrollment.webinar_start else "none"
        zone_name = (contact.timezone or "the practice's")[:40]
        reason = f"its times cannot be computed ({exc}; webinar start {start}, timezone {zone_name}): stopped"
        step = next((s for s in sequence.steps if s.id not in rows), None)
        if step is not None:
            self.ctx.ledger.decided(
                enrollment.id or 0, enrollment.sequence, step.id, "failed", reason, transactional=step.transactional
            )
            self.ctx.summary.count_step(enrollment.sequence, step.id, "failed")
        self.ctx.end(enrollment, "exited", reason)
        self.ctx.summary.fail(contact.email, enrollment.sequence, step.id if step else "", reason)

    def _record_skip(self, enrollment: Enrollment, skip: schedule.Skip, rows: dict[str, StepRow]) -> None:
        row = rows.get(skip.step.id)
        if row is None:
            self.ctx.ledger.decided(
                enrollment.id or 0,
                enrollment.sequence,
                skip.step.id,
                "skipped",
                skip.reason,
                transactional=skip.step.transactional,
                due_at=skip.due_at,
            )
        else:  # a failed step that is now too late, say: keep why it failed
            reason = f"{skip.reason} (last attempt: {row.reason})" if row.reason else skip.reason
            self.ctx.ledger.too_late(row, reason)
        self.ctx.summary.skipped += 1
        self.ctx.summary.count_step(enrollment.sequence, skip.step.id, "skipped")
