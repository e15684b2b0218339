"""`funnel plan`: what would be sent to whom and when in the next days; writes nothing.

It asks the same pure schedule a run asks (`schedule.project`), with each
person's state loaded the way a run loads it (`funnel.run.decide`'s loaders),
so what plan shows is what runs will do, people followed into the `next`
sequence of one they finish within the window included.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel import schedule
from funnel.changes import introduced_steps
from funnel.config import Config
from funnel.run.decide import contact_state, enrollment_state, tags_of
from funnel.store.ledger import step_rows
from funnel.store.models import Contact, Enrollment
from funnel.timeutil import isoformat_z


def plan(config: Config, engine: Engine, now: datetime, days: int, *, goal_skips: bool = False) -> list[dict[str, Any]]:
    """What would be sent to whom and when in the next `days` days (writes nothing).

    People are followed into the `next` sequence of one they finish within the
    window, as a run would enroll them (`via` names the sequence they come from).

    With `goal_skips`, the marketing steps that a reached goal (`exit_on_tags`)
    will skip are listed too, with `skipped` saying why.
    """
    until = now + timedelta(days=days)
    out: list[dict[str, Any]] = []
    with Session(engine) as session:
        introduced = introduced_steps(session, config, now, write=False)
        last_id = 0
        while True:
            contacts = list(
                session.scalars(
                    select(Contact)
                    .where(
                        col(Contact.id) > last_id,
                        col(Contact.id).in_(
                            select(col(Enrollment.contact_id)).where(col(Enrollment.status) == "active")
                        ),
                    )
                    .order_by(col(Contact.id))
                    .limit(500)
                )
            )
            if not contacts:
                break
            last_id = contacts[-1].id or last_id
            out.extend(_plan_page(session, config, contacts, introduced, now, until, goal_skips))
    out.sort(key=lambda item: (item["at"], item["email"] or "", item["sequence"], item["step"]))
    return out


def _plan_page(
    session: Session,
    config: Config,
    contacts: list[Contact],
    introduced: dict[str, dict[str, datetime]],
    now: datetime,
    until: datetime,
    goal_skips: bool = False,
) -> list[dict[str, Any]]:
    ids = [c.id or 0 for c in contacts]
    tags = tags_of(session, ids)
    enrollments: dict[int, list[Enrollment]] = defaultdict(list)
    for enrollment in session.scalars(
        select(Enrollment).where(and_(col(Enrollment.contact_id).in_(ids), col(Enrollment.status) == "active"))
    ):
        enrollments[enrollment.contact_id].append(enrollment)
    entered: dict[int, set[str]] = defaultdict(set)  # any status: a run never enrolls her there again
    for contact_id, sequence_id in session.execute(
        select(col(Enrollment.contact_id), col(Enrollment.sequence)).where(col(Enrollment.contact_id).in_(ids))
    ):
        entered[contact_id].add(sequence_id)
    rows = step_rows(session, [e.id or 0 for group in enrollments.values() for e in group])
    out = []
    for contact in contacts:
        if contact.suppression:
            continue
        state = contact_state(config, contact, tags.get(contact.id or 0, ()))
        sequences = {
            e.sequence: (config.sequences[e.sequence], enrollment_state(e, rows.get(e.id or 0, {}), introduced))
            for e in enrollments[contact.id or 0]
            if e.sequence in config.sequences
        }
        try:
            follow = schedule.Follow(config.sequences, frozenset(entered[contact.id or 0]), introduced)
            items = schedule.project(
                sequences, state, now, until, config.delivery, goal_skips=goal_skips, follow=follow
            )
        except (OverflowError, ValueError, OSError):
            continue  # a value stored by an older version: the next run stops that enrollment, with the reason
        for item in items:
            if item.at <= until:
                planned = {
                    "email": contact.email,
                    "sequence": item.sequence,
                    "step": item.step,
                    "at": isoformat_z(item.at),
                }
                if item.skipped:
                    planned["skipped"] = item.skipped
                if item.via:
                    planned["via"] = item.via
                out.append(planned)
    return out
