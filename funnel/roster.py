"""`funnel contacts list`: who is where, filtered by tag, sequence, status and a search.

The filters combine (all must hold). Status words as a practice reads them:
`active` (not suppressed, in a sequence that is going on), `paused` (she replied;
`contacts resume`), `unsubscribed` (asked to stop; an unsubscribe later undone does
not count). `--search` looks, in any case, inside the address, first name and last
name. Erased people are never listed: nothing is left to show.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, exists, func, or_, select
from sqlmodel import Session, col

from funnel.config import Config
from funnel.errors import UsageError
from funnel.store.models import Contact, Enrollment, StepRun, Tag
from funnel.timeutil import isoformat_z

STATUSES = ("active", "paused", "unsubscribed")
#: more than this many people is a page no one reads in a terminal; --json has them all
TERMINAL_LIMIT = 500


@dataclass(frozen=True)
class Filters:
    tag: str | None = None
    sequence: str | None = None
    status: str | None = None
    search: str | None = None


def check_filters(config: Config, filters: Filters) -> None:
    """An unknown sequence or status is a typo: say so (exit 2) rather than list nobody."""
    if filters.sequence is not None and filters.sequence not in config.sequences:
        known = ", ".join(sorted(config.sequences)) or "none"
        raise UsageError(f"--sequence {filters.sequence!r} is not in {config.path.name}: the sequences are {known}")
    if filters.status is not None and filters.status not in STATUSES:
        raise UsageError(f"--status {filters.status!r}: use one of {', '.join(STATUSES)}")


def _query(filters: Filters) -> Select[Any]:
    query = select(Contact).where(col(Contact.erased_at).is_(None))
    if filters.tag:
        query = query.where(exists().where(and_(col(Tag.contact_id) == Contact.id, col(Tag.tag) == filters.tag)))
    in_sequence = [col(Enrollment.contact_id) == Contact.id]
    if filters.sequence:
        in_sequence.append(col(Enrollment.sequence) == filters.sequence)
    if filters.status == "unsubscribed":
        query = query.where(col(Contact.unsubscribed_at).is_not(None))
    elif filters.status in ("active", "paused"):
        in_sequence.append(col(Enrollment.status) == filters.status)
    if filters.sequence or filters.status in ("active", "paused"):
        query = query.where(exists().where(and_(*in_sequence)))
    if filters.status == "active":
        query = query.where(
            col(Contact.unsubscribed_at).is_(None),
            col(Contact.suppressed_reason).is_(None),
        )
    if filters.search:
        needle = filters.search.strip().lower()
        fields = (col(Contact.email), col(Contact.first_name), col(Contact.last_name))
        query = query.where(or_(*(func.lower(field).contains(needle, autoescape=True) for field in fields)))
    return query.order_by(col(Contact.created_at), col(Contact.id))


def list_contacts(session: Session, filters: Filters) -> list[dict[str, Any]]:
    """The people the filters select, oldest first, each with her tags and where she is in each sequence."""
    people: list[Contact] = list(session.scalars(_query(filters)))
    ids = [p.id for p in people]
    tags: dict[int, list[str]] = defaultdict(list)
    enrollments: dict[int, list[Enrollment]] = defaultdict(list)
    last_sent: dict[int, tuple[str, datetime]] = {}
    for chunk in _chunks(ids):
        for contact_id, tag in session.execute(
            select(col(Tag.contact_id), col(Tag.tag)).where(col(Tag.contact_id).in_(chunk)).order_by(col(Tag.tag))
        ):
            tags[contact_id].append(tag)
        chunk_enrollments = list(
            session.scalars(
                select(Enrollment).where(col(Enrollment.contact_id).in_(chunk)).order_by(col(Enrollment.id))
            )
        )
        for enrollment in chunk_enrollments:
            enrollments[enrollment.contact_id].append(enrollment)
        enrollment_ids = [e.id for e in chunk_enrollments]
        for enrollment_id, step_id, sent_at in session.execute(
            select(col(StepRun.enrollment_id), col(StepRun.step_id), col(StepRun.sent_at))
            .where(col(StepRun.enrollment_id).in_(enrollment_ids), col(StepRun.status) == "sent")
            .order_by(col(StepRun.sent_at), col(StepRun.id))
        ):
            if sent_at is not None:
                last_sent[enrollment_id] = (step_id, sent_at)  # ordered: the latest wins
    return [_row(p, tags[p.id or 0], enrollments[p.id or 0], last_sent) for p in people]


def _chunks(ids: list[int | None], size: int = 500) -> list[list[int]]:
    """IN lists of a size every database takes."""
    clean = [i for i in ids if i is not None]
    return [clean[i : i + size] for i in range(0, len(clean), size)]


def _row(
    contact: Contact, tags: list[str], enrollments: list[Enrollment], last_sent: dict[int, tuple[str, datetime]]
) -> dict[str, Any]:
    sequences = []
    for enrollment in enrollments:
        item: dict[str, Any] = {"sequence": enrollment.sequence, "status": enrollment.status}
        sent = last_sent.get(enrollment.id or 0)
        item["last_sent"] = sent[0] if sent else None
        item["last_sent_at"] = isoformat_z(sent[1]) if sent else None
        reason = enrollment.pause_reason if enrollment.status == "paused" else enrollment.end_reason
        if reason:
            item["reason"] = reason
        sequences.append(item)
    return {
        "email": contact.email,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "tags": tags,
        "discreet": contact.discreet,
        "unsubscribed": contact.unsubscribed_at is not None,
        "suppressed": contact.suppression is not None,
        "suppressed_reason": contact.suppression,
        "created_at": isoformat_z(contact.created_at),
        "enrollments": sequences,
    }
