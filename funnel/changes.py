"""Edits of sequences.yaml: when each step appeared, and `funnel plan --changes`.

The last run keeps the timing of every step (wait, webinar offset, at,
transactional). Comparing it with the file as it is now gives, per step,
added / removed / retimed, and for each active enrollment whether the person
would get a new email, lose one, or have one move. Steps are matched by id,
exactly as runs match them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel.config import Config, Sequence, Step
from funnel.schedule import due_times, goal_reached
from funnel.store.bulk import insert_ignore
from funnel.store.models import Contact, Enrollment, KnownStep, Run, StepRun, Tag
from funnel.timeutil import isoformat_z, zone


def introduced_steps(session: Session, config: Config, now: datetime, *, write: bool) -> dict[str, dict[str, datetime]]:
    """When each step of the config first appeared, per sequence and step id.

    Steps never seen before are stamped `now` (stored when `write`; a read-only
    caller such as `plan` only assumes it). A step added later thus reaches
    only those whose due time for it has not passed.
    """
    known: dict[str, dict[str, datetime]] = {}
    for row in session.scalars(select(KnownStep)):
        known.setdefault(row.sequence, {})[row.step_id] = row.first_seen_at
    new = [
        (sid, step.id)
        for sid, sequence in config.sequences.items()
        for step in sequence.steps
        if step.id not in known.get(sid, {})
    ]
    if new and write:
        rows = [{"sequence": sid, "step_id": step_id, "first_seen_at": now} for sid, step_id in new]
        insert_ignore(session, KnownStep.__table__, rows, ("sequence", "step_id"))  # type: ignore[attr-defined]
        session.flush()
        return introduced_steps(session, config, now, write=False)
    for sid, step_id in new:
        known.setdefault(sid, {})[step_id] = now
    return known


def _old_sequence(steps: list[dict[str, Any]]) -> Sequence:
    return Sequence(
        steps=tuple(
            Step.model_validate({**{k: v for k, v in s.items() if v is not None}, "subject": "-", "template": "-"})
            for s in steps
        )
    )


def plan_changes(config: Config, engine: Engine, now: datetime) -> dict[str, Any]:
    with Session(engine) as session:
        last = session.scalars(
            select(Run).where(col(Run.finished_at).is_not(None)).order_by(col(Run.id).desc()).limit(1)
        ).first()
        sessions = session_changes(session, config, now)
        if last is None:
            return {"since_run": None, "steps": [], "sessions": sessions}
        before: dict[str, list[dict[str, Any]]] = last.config_timing or {}
        after = config.timing_snapshot()
        changes: list[dict[str, Any]] = []
        for sid in sorted(set(before) | set(after)):
            old_steps = {s["id"]: s for s in before.get(sid, [])}
            new_steps = {s["id"]: s for s in after.get(sid, [])}
            kinds: dict[str, str] = {}
            for step_id in new_steps:
                if step_id not in old_steps:
                    kinds[step_id] = "added"
                elif _timing(new_steps[step_id]) != _timing(old_steps[step_id]):
                    kinds[step_id] = "retimed"
            for step_id in old_steps:
                if step_id not in new_steps:
                    kinds[step_id] = "removed"
            if not kinds:
                continue
            people = _effects(session, config, sid, before.get(sid, []), kinds, now)
            for step_id, kind in kinds.items():
                changes.append({"sequence": sid, "step": step_id, "change": kind, "people": people.get(step_id, [])})
    return {"since_run": isoformat_z(last.started_at), "steps": changes, "sessions": sessions}


def _timing(step: dict[str, Any]) -> dict[str, Any]:
    """A step's snapshot without what is not timing (its template, kept to spot renamed ids)."""
    return {k: v for k, v in step.items() if k != "template"}


def _effects(
    session: Session, config: Config, sid: str, old: list[dict[str, Any]], kinds: dict[str, str], now: datetime
) -> dict[str, list[dict[str, str]]]:
    old_seq = _old_sequence(old) if old else None
    new_seq = config.sequences.get(sid)
    effects: dict[str, list[dict[str, str]]] = {}
    query = (
        select(Enrollment, col(Contact.email), col(Contact.timezone))
        .join(Contact, col(Contact.id) == col(Enrollment.contact_id))
        .where(col(Enrollment.sequence) == sid, col(Enrollment.status) == "active")
    )
    for enrollment, email, tz_name in session.execute(query):
        done = set(session.scalars(select(col(StepRun.step_id)).where(col(StepRun.enrollment_id) == enrollment.id)))
        tags = frozenset(session.scalars(select(col(Tag.tag)).where(col(Tag.contact_id) == enrollment.contact_id)))
        goal = goal_reached(new_seq, tags) if new_seq else None
        try:
            tz = zone(tz_name or config.practice.timezone)
        except ValueError:  # an unusable zone stored by an older version
            tz = zone(config.practice.timezone)
        try:
            old_due = due_times(old_seq, enrollment.enrolled_at, enrollment.webinar_start, tz) if old_seq else {}
            new_due = due_times(new_seq, enrollment.enrolled_at, enrollment.webinar_start, tz) if new_seq else {}
        except (OverflowError, ValueError):
            continue  # times that cannot be computed: the next run stops that enrollment, with the reason
        for step_id, kind in kinds.items():
            if step_id in done:
                continue  # already sent or decided: an edit never sends a step twice
            before, after = old_due.get(step_id), new_due.get(step_id)
            effect = None
            either = (new_seq and new_seq.step(step_id)) or (old_seq and old_seq.step(step_id))
            if goal and either and not (either.transactional or either.after_goal):
                # her goal is reached: the marketing steps are not sent, whatever their timing
                effect = f"{'would not get it' if kind == 'added' else 'not sent either way'}: {goal}"
            elif kind == "added" and after and after >= max(enrollment.enrolled_at, now):
                effect = f"would get it at {isoformat_z(after)}"
            elif kind == "added" and after and after >= enrollment.enrolled_at:
                effect = f"would not get it: its time ({isoformat_z(after)}) has passed for them"
            elif kind == "removed" and before and before >= enrollment.enrolled_at:
                effect = f"would no longer get it (was due {isoformat_z(before)})"
            elif kind == "retimed" and before != after and after:
                effect = f"moves from {isoformat_z(before) if before else 'never'} to {isoformat_z(after)}"
                if after < enrollment.enrolled_at:
                    effect = f"would no longer get it (now due before they enrolled, {isoformat_z(after)})"
            if effect:
                effects.setdefault(step_id, []).append({"email": email or "(erased)", "effect": effect})
    return effects


def session_changes(session: Session, config: Config, now: datetime) -> list[dict[str, Any]]:
    """Person by person, what the next run does for moved (`was:`) and cancelled sessions.

    The enrollments still hold the start the last run applied, so a listed
    session whose start differs is a move the next run makes, and a cancelled
    one ends them (`funnel.webinar.moves`). `told` names the letter she gets (the
    sequence's `on: rescheduled` / `on: cancelled` step), or is None when she
    gets none: her confirmation has not gone out (it will carry the new date),
    or the sequence has no such step. Times are UTC here; the CLI shows them
    in the webinar's zone.
    """
    from funnel.webinar.notices import notice_key
    from funnel.webinar.sessions import listed_sessions

    out: list[dict[str, Any]] = []
    for webinar_id, webinar in config.webinars.items():
        tz = config.webinar_zone(webinar_id)
        listed = {s.id: s for s in listed_sessions(webinar, tz)}
        if not listed:
            continue
        query = (
            select(Enrollment, col(Contact.email))
            .join(Contact, col(Contact.id) == col(Enrollment.contact_id))
            .where(
                col(Enrollment.webinar) == webinar_id,
                col(Enrollment.session).in_(sorted(listed)),
                col(Enrollment.status).in_(("active", "paused")),
            )
            .order_by(col(Enrollment.id))
        )
        for enrollment, email in session.execute(query):
            found = listed[enrollment.session]
            if not found.cancelled and enrollment.webinar_start == found.start:
                continue
            sequence = config.sequences.get(enrollment.sequence)
            change = "cancelled" if found.cancelled else "rescheduled"
            answer = sequence.answer(change) if sequence else None
            confirmation = sequence.confirmation if sequence else None
            confirmed = confirmation is not None and (
                session.scalars(
                    select(col(StepRun.status)).where(
                        col(StepRun.enrollment_id) == enrollment.id, col(StepRun.step_id) == confirmation.id
                    )
                ).first()
                == "sent"
            )
            upcoming = found.start if not found.cancelled else enrollment.webinar_start
            told = None
            if answer is not None and confirmed and enrollment.status == "active" and upcoming and upcoming > now:
                already = session.scalars(
                    select(col(StepRun.id)).where(
                        col(StepRun.enrollment_id) == enrollment.id,
                        col(StepRun.step_id) == notice_key(answer, upcoming),
                    )
                ).first()
                told = None if already else answer.id
            out.append(
                {
                    "email": email or "(erased)",
                    "webinar": webinar_id,
                    "session": enrollment.session,
                    "sequence": enrollment.sequence,
                    "change": "cancelled" if found.cancelled else "moves",
                    "from": isoformat_z(enrollment.webinar_start) if enrollment.webinar_start else None,
                    "to": None if found.cancelled else isoformat_z(found.start),
                    "told": told,
                    "zone": tz.key,
                }
            )
    return out
