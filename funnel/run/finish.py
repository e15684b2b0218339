"""Finishing enrollments, and starting the `next` sequence, once every step has an outcome.

An enrollment whose due steps are claimed waits for their outcomes: each
claimed email counts one; each outcome (sent, failed, skipped, given back)
counts one less. At none left it is settled: tried again next run when an
email was withheld, given back or failed in a way worth retrying; else
finished when the schedule said this was its last step, and its `next`
sequence starts (not when its goal was reached: it exits instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from funnel import schedule
from funnel.config import Sequence
from funnel.run.state import RunContext
from funnel.store.bulk import insert_ignore
from funnel.store.models import Enrollment


@dataclass
class Pending:
    """Bookkeeping for an enrollment whose sends are in flight."""

    enrollment: Enrollment
    sequence_id: str
    outstanding: int
    finished_if_sent: bool
    retry_later: bool = False
    #: the sequence's goal was reached: finishing ends it as exited, without `next`
    goal: str | None = None
    #: her time zone (the `next` sequence starts at the last step's due time on her wall clock)
    tz: ZoneInfo | None = None


class Outstanding:
    """The enrollments of one run with emails in flight, by enrollment id."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._pending: dict[int, Pending] = {}

    def expect(self, enrollment: Enrollment, finished: bool, goal: str | None, tz: ZoneInfo) -> None:
        """Her due steps are about to be claimed: wait for their outcomes before finishing her."""
        self._pending[enrollment.id or 0] = Pending(enrollment, enrollment.sequence, 0, finished, goal=goal, tz=tz)

    def one_more(self, enrollment_id: int) -> None:
        """One of her emails was claimed by this run."""
        pending = self._pending.get(enrollment_id)
        if pending is not None:
            pending.outstanding += 1

    def one_less(self, enrollment_id: int, *, retry: bool = False) -> None:
        """One of her emails has its outcome (`retry`: the next run looks at her again)."""
        pending = self._pending.get(enrollment_id)
        if pending is None:
            return
        if retry:
            pending.retry_later = True
        pending.outstanding -= 1
        if pending.outstanding == 0:
            self._settle(pending)

    def settle_idle(self) -> None:
        """Settle those none of whose claims this run got (every one went to another worker)."""
        for pending in [p for p in self._pending.values() if p.outstanding == 0]:
            self._settle(pending)

    def _settle(self, pending: Pending) -> None:
        enrollment = pending.enrollment
        self._pending.pop(enrollment.id or 0, None)
        if pending.retry_later:
            self.ctx.writes.set(enrollment, next_due_at=self.ctx.now)  # the next run tries again (within max_late)
            return
        if pending.finished_if_sent:
            sequence = self.ctx.config.sequences.get(pending.sequence_id)
            if sequence is not None:
                complete(self.ctx, enrollment, sequence, pending.goal, pending.tz)


def complete(
    ctx: RunContext, enrollment: Enrollment, sequence: Sequence, goal: str | None = None, tz: ZoneInfo | None = None
) -> None:
    """Every step has an outcome: finish, and start the `next` sequence (not when its goal was reached)."""
    if goal:
        ctx.end(enrollment, "exited", goal)
        ctx.summary.exited += 1
        return
    ctx.end(enrollment, "finished", None)
    ctx.summary.finished += 1
    if sequence.next and sequence.next in ctx.config.sequences:
        start_next(ctx, enrollment, sequence, tz)


def start_next(ctx: RunContext, enrollment: Enrollment, sequence: Sequence, tz: ZoneInfo | None) -> None:
    """Enroll her in `sequence.next` (once per person), as `funnel plan` shows it.

    She enters at the last step's due time (`schedule.next_enrolled_at`) on her wall clock.
    """
    entered = ctx.now
    if tz is not None:
        try:
            entered = schedule.next_enrolled_at(
                sequence,
                schedule.EnrollmentState(enrollment.enrolled_at, enrollment.webinar_start),
                tz,
                ctx.now,
                ctx.config.delivery,
            )
        except (OverflowError, ValueError):  # a stored date beyond what a zone can show: now, as before
            entered = ctx.now
    insert_ignore(
        ctx.session,
        Enrollment.__table__,  # type: ignore[attr-defined]  # SQLModel does not declare __table__ for mypy
        [
            {
                "contact_id": enrollment.contact_id,
                "sequence": sequence.next,
                "status": "active",
                "enrolled_at": entered,
                "source": f"after {enrollment.sequence}",
                "webinar": enrollment.webinar,
                "webinar_start": enrollment.webinar_start,
                # once per person, whichever session led her there
                "session": "",
                "next_due_at": ctx.now,
            }
        ],
        ("contact_id", "sequence", "session"),
    )
