"""SendGrid's events, stored: each once, tied to its send, and suppressing where it must.

The web layer checks the signature and parses the post (funnel.sendgrid.webhook,
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
from sqlmodel import Session, col

from funnel.contacts import find_by_hash, unsubscribe
from funnel.contacts import suppress as suppress_contact
from funnel.sendgrid.webhook import Event, EventKind, Skipped, scrubbed
from funnel.store.bulk import insert_ignore
from funnel.store.models import Contact, Enrollment, StepRun
from funnel.store.models import Event as EventRow
from funnel.text import email_hash, normalize_email

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
    """Store new events, suppress where they say so; the caller commits.

    A post carries up to about a thousand events: the sends, contacts and
    already-stored ids they refer to are read in a few queries, and the new
    rows go in with one insert that ignores any duplicate a concurrent post
    stored meanwhile.
    """
    result = StoreResult(skipped=[{"index": s.index, "reason": s.reason} for s in skipped])
    ordered = sorted(events, key=lambda e: e.occurred_at)
    seen = _stored_ids(session, [e.sg_event_id for e in ordered])
    sends = _sends(session, {e.send_id for e in ordered if e.send_id})
    digests = {e.email: _hash(e.email) for e in ordered if e.email}
    holders = _holders(session, {d for d in digests.values() if d})
    rows: list[dict[str, object]] = []
    suppressing: list[tuple[int | None, str | None, EventKind, str | None]] = []
    for event in ordered:
        if event.sg_event_id in seen:
            result.duplicates += 1
            continue
        seen.add(event.sg_event_id)
        send = sends.get(event.send_id or "")
        digest = digests.get(event.email) if event.email else None
        contact_id: int | None
        if send is not None:
            contact_id, erased = send.contact_id, send.erased
        else:
            contact_id, erased = holders.get(digest or "", (None, False))
        # nothing personal is kept about someone erased, or about an address we do not hold
        keep = contact_id is not None and not erased
        raw, reason = (event.raw, event.reason) if keep else (scrubbed(event.raw), None)
        rows.append(
            {
                "sg_event_id": event.sg_event_id,
                "kind": event.kind.value,
                "occurred_at": event.occurred_at,
                "received_at": now,
                "contact_id": contact_id,
                "step_run_id": send.id if send else None,
                "send_id": event.send_id,
                "sequence": send.sequence if send else event.sequence,
                "step_id": send.step_id if send else event.step,
                "email_hash": digest if keep else None,
                "reason": reason,
                "raw": raw,
            }
        )
        if event.suppresses:
            suppressing.append((contact_id, digest, event.kind, reason))
    table = EventRow.__table__  # type: ignore[attr-defined]  # SQLModel does not declare __table__ for mypy
    for start in range(0, len(rows), 500):
        insert_ignore(session, table, rows[start : start + 500], ("sg_event_id",))
    result.stored = len(rows)
    for contact_id, digest, kind, reason in suppressing:
        if suppress(session, contact_id, digest, kind, reason, now):
            result.suppressed += 1
    return result


def store_each(session: Session, events: list[Event], skipped: list[Skipped], now: datetime) -> StoreResult:
    """`store_events` one event at a time, each committed alone; an event the database refuses is skipped.

    The way out when the database refused a whole batch: SendGrid would post
    the same batch again and again, and each time a bounce in it would be
    lost with the rest. Each event is idempotent (its `sg_event_id`), so
    storing them one by one is the same as storing them together. Only a
    database that cannot be used at all (OperationalError: gone, locked for
    30 seconds) is raised, so that the post fails and SendGrid retries it.
    The reason given for a refused event names no value of it.
    """
    from sqlalchemy.exc import OperationalError

    from funnel.logsafe import safe_message

    result = StoreResult(skipped=[{"index": s.index, "reason": s.reason} for s in skipped])
    for event in sorted(events, key=lambda e: e.occurred_at):
        try:
            one = store_events(session, [event], [], now)
            session.commit()
        except OperationalError:
            raise
        except Exception as exc:  # noqa: BLE001  # whatever the database made of it, the others go on
            session.rollback()
            result.skipped.append({"index": event.index, "reason": f"the database refused it: {safe_message(exc)}"})
            continue
        result.stored += one.stored
        result.duplicates += one.duplicates
        result.suppressed += one.suppressed
    result.skipped.sort(key=lambda item: int(str(item["index"])))
    return result


@dataclass(frozen=True)
class _Send:
    """The step run an event is about, and its person."""

    id: int
    sequence: str
    step_id: str
    contact_id: int
    erased: bool


def _stored_ids(session: Session, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found.update(session.scalars(select(col(EventRow.sg_event_id)).where(col(EventRow.sg_event_id).in_(chunk))))
    return found


def _sends(session: Session, send_ids: set[str]) -> dict[str, _Send]:
    """By send id (the `funnel_send_id` custom arg): the step run, its contact, whether she was erased."""
    wanted = sorted(send_ids)
    found: dict[str, _Send] = {}
    for start in range(0, len(wanted), 500):
        query = (
            select(
                col(StepRun.send_id),
                col(StepRun.id),
                col(StepRun.sequence),
                col(StepRun.step_id),
                col(Contact.id),
                col(Contact.erased_at),
            )
            .join(Enrollment, col(Enrollment.id) == col(StepRun.enrollment_id))
            .join(Contact, col(Contact.id) == col(Enrollment.contact_id))
            .where(col(StepRun.send_id).in_(wanted[start : start + 500]))
        )
        for send_id, run_id, sequence, step_id, contact_id, erased_at in session.execute(query):
            found[send_id] = _Send(run_id, sequence, step_id, contact_id, erased_at is not None)
    return found


def _holders(session: Session, digests: set[str]) -> dict[str, tuple[int | None, bool]]:
    """By address hash: the contact holding the address, and whether she was erased."""
    wanted = sorted(digests)
    found: dict[str, tuple[int | None, bool]] = {}
    for start in range(0, len(wanted), 500):
        query = select(col(Contact.email_hash), col(Contact.id), col(Contact.erased_at)).where(
            col(Contact.email_hash).in_(wanted[start : start + 500])
        )
        for digest, contact_id, erased_at in session.execute(query):
            found[digest] = (contact_id, erased_at is not None)
    return found


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
        contact = find_by_hash(session, digest)
    if contact is None:
        assert digest is not None
        contact = Contact(email_hash=digest, created_at=now, updated_at=now)
        session.add(contact)
        session.flush()
    if kind in (EventKind.UNSUBSCRIBE, EventKind.GROUP_UNSUBSCRIBE):
        via = "SendGrid unsubscribe" if kind is EventKind.UNSUBSCRIBE else "SendGrid group unsubscribe"
        return unsubscribe(session, contact, now, via=via)
    words = _SUPPRESSION_WORDS.get(kind, kind.value)
    return suppress_contact(session, contact, f"{words}: {reason}"[:200] if reason else words, now)


def _hash(address: str | None) -> str | None:
    if not address:
        return None
    try:
        return email_hash(normalize_email(address))
    except ValueError:
        return None
