"""Moving and cancelling webinar sessions (`was:` and `cancelled:` in sequences.yaml, spec section 7).

Applied by `funnel run` when sequences.yaml has changed (the same moment it
wakes every enrollment), before anything is decided:

- a listed session whose start differs from what its enrollments hold (a
  `was:` move, earlier or later, or a date put back) re-times them:
  `ingest.reschedule` sets the new start, so every pending webinar-timed
  step is due by it, and webinar steps skipped only for the old date are
  looked at again; steps already sent are never sent again (the ledger's
  unique (enrollment, step) row stays);
- a cancelled session ends its enrollments that are still going (status
  `exited`, reason "session cancelled"): no pending mail for it goes, and
  they do not go on to the `next` sequence.

Only listed sessions move or are cancelled: a date the `repeat` rule gives
is changed by listing it (`start:` with `was:`, or `cancelled: true`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, select, update
from sqlmodel import Session, col

from funnel.config import Config
from funnel.ingest import reschedule
from funnel.models import Enrollment
from funnel.sessions import listed_sessions

CANCELLED_REASON = "session cancelled"


@dataclass
class SessionChanges:
    moved: int = 0
    cancelled: int = 0


def apply_session_changes(session: Session, config: Config, now: datetime) -> SessionChanges:
    """Re-time the enrollments of moved sessions and end those of cancelled ones; the caller commits."""
    done = SessionChanges()
    for webinar_id, webinar in config.webinars.items():
        listed = {s.id: s for s in listed_sessions(webinar, config.webinar_zone(webinar_id))}
        if not listed:
            continue
        going = session.execute(
            select(col(Enrollment.id), col(Enrollment.sequence), col(Enrollment.session), col(Enrollment.webinar_start))
            .where(
                and_(
                    col(Enrollment.webinar) == webinar_id,
                    col(Enrollment.session).in_(sorted(listed)),
                    col(Enrollment.status).in_(("active", "paused")),
                )
            )
            .order_by(col(Enrollment.id))
        ).all()
        for enrollment_id, sequence, sid, start_at in going:
            found = listed[sid]
            if found.cancelled:
                session.execute(
                    update(Enrollment)
                    .where(col(Enrollment.id) == enrollment_id)
                    .values(status="exited", end_reason=CANCELLED_REASON, ended_at=now, next_due_at=None)
                )
                done.cancelled += 1
            elif start_at != found.start:
                reschedule(session, config, enrollment_id, sequence, webinar_id, found.start, now)
                done.moved += 1
    return done
