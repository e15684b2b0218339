"""Storing signups: contacts, tags and enrollments, in bulk.

Rows are applied in batches with a handful of set-based statements, so a first import
costs a few statements a batch and an append of ten rows costs ten rows. A batch is
inserted first ("insert or ignore", answering which rows it made: `funnel.store.bulk`)
and only people already there are read back to apply changes. The rules kept here
(one contact per address, one enrollment per session, blanks never overwrite) are in
docs/architecture.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Table, and_, delete, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel.config import Config, Source
from funnel.schedule import first_look
from funnel.signups.sources import FileRead, SignupRow
from funnel.store.bulk import InsertIgnore, insert_ignore, probe_in, roomy_cache
from funnel.store.models import Contact, Enrollment, EnrollmentTag, PendingTag, StepRun, Tag, new_token_key
from funnel.text import email_hash
from funnel.timeutil import zone
from funnel.webinar.sessions import EARLY_JOIN, attended_session, local_id, pick_session, session_scoped_tags

_BATCH = 1000
#: how long a tag for someone who has not signed up (yet) is kept
PENDING_DAYS = 90


@dataclass
class IngestResult:
    imported: int = 0
    created: int = 0
    enrolled: int = 0
    rescheduled: int = 0
    #: rows for people who are not contacts while the source has `create: false`
    unknown: int = 0
    #: of those, rows whose tags are kept until the person appears
    pending: int = 0
    #: pending tags (from earlier rows) applied to people who appeared now
    pending_applied: int = 0
    #: rows for erased addresses (kept out for good)
    erased: int = 0
    sequences: dict[str, int] = field(default_factory=dict)

    def add(self, other: IngestResult) -> None:
        for name in (
            "imported",
            "created",
            "enrolled",
            "rescheduled",
            "unknown",
            "pending",
            "pending_applied",
            "erased",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _table(model: Any) -> Table:
    return model.__table__  # type: ignore[no-any-return]


def apply_rows(
    session: Session, config: Config, source_name: str, source: Source, rows: Iterable[SignupRow], now: datetime
) -> IngestResult:
    """Apply accepted rows of one source; the caller commits.

    Every way people come in (a run's file sources, `funnel import`, a form
    post) goes through here, so they all follow the same rules.
    """
    result = IngestResult()
    if source.enroll:
        # every command that enrolls people (run, import, the web form) records the
        # steps it knows first, so only a step that appears after someone's
        # enrollment counts as "added after its time" for them
        from funnel.changes import introduced_steps

        introduced_steps(session, config, now, write=True)
    pending = _pending_exist(session, now)
    writers = _Writers(session, config, source, now)
    batch: list[SignupRow] = []
    with roomy_cache(session):
        for row in rows:
            batch.append(row)
            if len(batch) >= _BATCH:
                result.add(_apply_batch(session, config, source_name, source, batch, now, writers, pending))
                batch = []
        if batch:
            result.add(_apply_batch(session, config, source_name, source, batch, now, writers, pending))
    return result


class _Writers:
    """The inserts of one import, prepared once (see `funnel.store.bulk`), and its first-look answers.

    Kept for the whole import so that values repeated on every row (`now`,
    the webinar start, the first look per zone) are converted once.
    """

    def __init__(self, session: Session, config: Config, source: Source, now: datetime) -> None:
        self.contacts = InsertIgnore(session, _table(Contact), _CONTACT_COLUMNS, ("email_hash",))
        self.tags = InsertIgnore(
            session, _table(Tag), ("contact_id", "tag", "source", "added_at"), ("contact_id", "tag")
        )
        self.enrollments = InsertIgnore(
            session, _table(Enrollment), _ENROLLMENT_COLUMNS, ("contact_id", "sequence", "session")
        )
        self.look = _first_looks(config, source.enroll, now) if source.enroll else None
        self.session_of = session_chooser(config, source, now)
        if source.enroll and source.webinar:
            adopt_legacy_sessions(session, config, source.enroll, source.webinar)


_CONTACT_COLUMNS = (
    "email_hash",
    "email",
    "first_name",
    "last_name",
    "timezone",
    "discreet",
    "fields",
    "created_at",
    "updated_at",
    "first_source",
    "token_key",
)
_ENROLLMENT_COLUMNS = (
    "contact_id",
    "sequence",
    "status",
    "enrolled_at",
    "source",
    "webinar",
    "webinar_start",
    "session",
    "join_url",
    "next_due_at",
    "imported_at",
)


def _pending_exist(session: Session, now: datetime) -> bool:
    """Drop pending tags past their time; are any left? (Skips the look-up for most imports.)"""
    table = _table(PendingTag)
    if session.execute(select(table.c.email_hash).limit(1)).first() is None:
        return False
    session.execute(delete(PendingTag).where(col(PendingTag.received_at) < now - timedelta(days=PENDING_DAYS)))
    return session.execute(select(table.c.email_hash).limit(1)).first() is not None


def _apply_batch(
    session: Session,
    config: Config,
    source_name: str,
    source: Source,
    rows: list[SignupRow],
    now: datetime,
    writers: _Writers,
    pending: bool = False,
) -> IngestResult:
    result = IngestResult()
    # the last row for an address wins (dedupe within the batch, keeping order)
    latest: dict[str, SignupRow] = {}
    for row in rows:
        key = email_hash(row.email)
        previous = latest.get(key)
        latest[key] = _merge(previous, row) if previous else row
    created: dict[str, dict[str, Any]] = {}
    #: ids of the contacts this batch itself inserted (they cannot be enrolled yet)
    fresh: set[int] = set()
    inserted = _insert_returning(writers, latest, source_name, now) if source.create else None
    if inserted is not None:
        created = inserted
        fresh = {c["id"] for c in created.values()}
        result.created = len(created)
        contacts = _existing(session, [key for key in latest if key not in created])
        contacts.update(created)
    else:
        contacts = _existing(session, list(latest))
        new_rows = []
        keep: list[dict[str, Any]] = []
        for key, row in latest.items():
            if key in contacts:
                continue
            if not source.create:
                result.unknown += 1
                keep.extend(
                    {"email_hash": key, "tag": tag, "source": source_name, "origin": row.origin, "received_at": now}
                    for tag in source.tags
                )
                result.pending += 1 if source.tags else 0
                continue
            new_rows.append(_new_contact(key, row, source_name, now, new_token_key()))
        # she may sign up later (the attendance export came first): keep the tags until then
        insert_ignore(session, _table(PendingTag), keep, ("email_hash", "tag"))
        if new_rows:
            # insert-or-ignore: a concurrent worker may be creating the same people
            writers.contacts.run(new_rows)
            created = _created(session, latest, [r[0] for r in new_rows])
            result.created = len(created)
            contacts.update(created)
    updates = []
    for key, row in latest.items():
        found = contacts.get(key)
        if found is None:
            continue
        if found["erased_at"] is not None:
            result.erased += 1
            continue
        result.imported += 1
        change = None if key in created else _changes(found, row)  # just made from this very row
        if change:
            updates.append({"id": found["id"], "updated_at": now, **change})
    if updates:
        session.execute(update(Contact), updates)
    live = {k: c for k, c in contacts.items() if c["erased_at"] is None and k in latest}
    writers.tags.run([(c["id"], tag, source_name, now) for c in live.values() for tag in source.tags])
    if pending and live:
        applied = _apply_pending(session, live)
        result.pending_applied = len(applied)
    else:
        applied = []
    if source.enroll:
        _enroll(session, config, source_name, source, source.enroll, live, latest, now, result, writers, fresh)
        if applied:
            _mark_pending(session, config, applied, now)
    elif source.webinar and source.tags and live:
        mark_sessions(session, config, source_name, source, live, latest, now)
    return result


def mark_sessions(
    session: Session,
    config: Config,
    source_name: str,
    source: Source,
    live: dict[str, dict[str, Any]],
    latest: dict[str, SignupRow],
    now: datetime,
) -> int:
    """Attendance: tag the enrollment of the session each row belongs to (`EnrollmentTag`).

    The session: with configured sessions, the one the row's join time
    (mapped as `webinar_start`) falls in, else the latest that had started
    when the file was read (`sessions.attended_session`). Without sessions:
    her webinar enrollment whose start is the latest by then. Nothing when
    she has no enrollment for it (she keeps the contact's tag). How many marked.
    """
    marks = [
        _Mark(c["id"], latest[key].webinar_start, now, tag, source_name)
        for key, c in live.items()
        for tag in source.tags
    ]
    return _mark(session, config, source.webinar or "", marks, now)


@dataclass(frozen=True)
class _Mark:
    """One session-scoped tag to put on the enrollment of the session it belongs to."""

    contact_id: int
    joined_at: datetime | None
    read_at: datetime
    tag: str
    source: str


def _mark(session: Session, config: Config, webinar_id: str, marks: list[_Mark], now: datetime) -> int:
    webinar = config.webinars.get(webinar_id)
    if webinar is None or not marks:
        return 0
    tz = config.webinar_zone(webinar_id)
    ids = sorted({m.contact_id for m in marks})
    held: dict[int, list[tuple[int, datetime | None, str]]] = {}
    for start in range(0, len(ids), _BATCH):
        chunk = ids[start : start + _BATCH]
        query = select(
            col(Enrollment.contact_id), col(Enrollment.id), col(Enrollment.webinar_start), col(Enrollment.session)
        ).where(
            and_(
                col(Enrollment.contact_id).in_(chunk),
                col(Enrollment.webinar) == webinar_id,
                col(Enrollment.session) != "",
            )
        )
        for contact_id, enrollment_id, start_at, sid in session.execute(query):
            held.setdefault(contact_id, []).append((enrollment_id, start_at, sid))
    rows: list[dict[str, Any]] = []
    for mark in marks:
        mine = held.get(mark.contact_id, [])
        if webinar.has_sessions:
            found = attended_session(webinar, tz, mark.joined_at, mark.read_at)
            chosen = [e for e, _, sid in mine if found is not None and sid == found.id]
        else:
            until = mark.joined_at + EARLY_JOIN if mark.joined_at is not None else mark.read_at
            started = [(s, e) for e, s, _ in mine if s is not None and s <= until]
            chosen = [max(started)[1]] if started else []
        rows.extend({"enrollment_id": e, "tag": mark.tag, "source": mark.source, "added_at": now} for e in chosen)
    insert_ignore(session, _table(EnrollmentTag), rows, ("enrollment_id", "tag"))
    return len(rows)


def _mark_pending(
    session: Session, config: Config, applied: list[tuple[int, str, str | None, datetime]], now: datetime
) -> None:
    """Attendance read before she registered: once enrolled, it belongs to the session that had started then."""
    by_webinar: dict[str, list[_Mark]] = {}
    for contact_id, tag, source_name, received in applied:
        found = config.sources.get(source_name or "")
        if found is not None and found.webinar and not found.create and tag in found.tags:
            by_webinar.setdefault(found.webinar, []).append(_Mark(contact_id, None, received, tag, source_name or ""))
    for webinar_id, marks in by_webinar.items():
        _mark(session, config, webinar_id, marks, now)


def _apply_pending(session: Session, live: dict[str, dict[str, Any]]) -> list[tuple[int, str, str | None, datetime]]:
    """Tags kept for people who were not contacts yet: theirs now, with their source and time.

    Returns what was applied: (contact id, tag, source, when it was read).
    """
    found = list(
        session.execute(
            select(
                col(PendingTag.email_hash), col(PendingTag.tag), col(PendingTag.source), col(PendingTag.received_at)
            ).where(col(PendingTag.email_hash).in_(list(live)))
        )
    )
    if not found:
        return []
    applied = [(live[key]["id"], tag, source, received) for key, tag, source, received in found]
    tag_rows = [
        {"contact_id": contact_id, "tag": tag, "source": source, "added_at": received}
        for contact_id, tag, source, received in applied
    ]
    insert_ignore(session, _table(Tag), tag_rows, ("contact_id", "tag"))
    session.execute(delete(PendingTag).where(col(PendingTag.email_hash).in_({key for key, *_ in found})))
    return applied


def _merge(older: SignupRow, newer: SignupRow) -> SignupRow:
    """Two rows for one address in one batch: newer values win, blanks do not erase."""
    return SignupRow(
        line=newer.line,
        email=newer.email,
        first_name=newer.first_name or older.first_name,
        last_name=newer.last_name or older.last_name,
        timezone=newer.timezone or older.timezone,
        webinar_start=max(filter(None, (older.webinar_start, newer.webinar_start)), default=None),
        discreet=newer.discreet if newer.discreet is not None else older.discreet,
        fields={**older.fields, **newer.fields},
        file=newer.file,
        signed_up_at=newer.signed_up_at or older.signed_up_at,
        join_url=newer.join_url or older.join_url,
        keeps_known_names=newer.keeps_known_names or older.keeps_known_names,
    )


def _insert_returning(
    writers: _Writers, latest: dict[str, SignupRow], source_name: str, now: datetime
) -> dict[str, dict[str, Any]] | None:
    """Insert everyone of the batch who is not a contact yet; those inserted, by hash (None: not supported).

    Insert first, then read only those who were there already: a first
    import then reads nothing back. An erased or known address conflicts on
    its hash and is left as it is (read by `_existing`, like a contact a
    concurrent worker made a moment ago).
    """
    keys = token_keys(len(latest))
    rows = [_new_contact(key, row, source_name, now, next(keys)) for key, row in latest.items()]
    returned = writers.contacts.returning(rows, ("email_hash", "id"))
    if returned is None:
        return None
    return {key: _fresh(contact_id, latest[key]) for key, contact_id in returned}


def _fresh(contact_id: int, row: SignupRow) -> dict[str, Any]:
    """A contact just made from `row`: what the rest of the batch needs of it."""
    return {
        "id": contact_id,
        "timezone": row.timezone,
        "erased_at": None,
        "unsubscribed_at": None,
        "suppressed_reason": None,
    }


def _existing(session: Session, hashes: list[str]) -> dict[str, dict[str, Any]]:
    """Known contacts among `hashes`, with what a row may change and what keeps mail from them.

    A bare probe by hash first: on a first import nobody is known, and the
    typed query (with its per-value work) is then never made.
    """
    known = [key for (key,) in probe_in(session, "SELECT email_hash FROM contacts WHERE email_hash IN", hashes)]
    found: dict[str, dict[str, Any]] = {}
    columns = (
        col(Contact.id),
        col(Contact.email_hash),
        col(Contact.email),
        col(Contact.first_name),
        col(Contact.last_name),
        col(Contact.timezone),
        col(Contact.discreet),
        col(Contact.fields),
        col(Contact.erased_at),
        col(Contact.unsubscribed_at),
        col(Contact.suppressed_reason),
    )
    for start in range(0, len(known), _BATCH):
        chunk = known[start : start + _BATCH]
        for record in session.execute(select(*columns).where(col(Contact.email_hash).in_(chunk))):
            found[record.email_hash] = dict(record._mapping)
    return found


def _created(session: Session, latest: dict[str, SignupRow], hashes: list[str]) -> dict[str, dict[str, Any]]:
    """The contacts just inserted, with their ids: one narrow query, the rest is what was inserted.

    (A concurrent worker may have inserted one of them first: it is taken as
    found, with the values this batch brings, as if this row had come last.)
    """
    found = probe_in(session, "SELECT email_hash, id FROM contacts WHERE email_hash IN", hashes)
    return {key: _fresh(contact_id, latest[key]) for key, contact_id in found}


#: the `fields` of a row that has none: one object, so its JSON is made once a batch (never changed)
_NO_FIELDS: dict[str, str] = {}


def token_keys(count: int) -> Iterator[str]:
    """`count` token keys (see `models.new_token_key`) from one read of the system's randomness:
    a first import of 100,000 people would otherwise spend a fifth of a second asking for each."""
    pool = os.urandom(16 * count).hex()
    return (pool[start : start + 32] for start in range(0, len(pool), 32))


def _new_contact(key: str, row: SignupRow, source_name: str, now: datetime, token_key: str) -> tuple[Any, ...]:
    """A contacts row in `_CONTACT_COLUMNS` order."""
    return (
        key,
        row.email,
        row.first_name,
        row.last_name,
        row.timezone,
        bool(row.discreet),
        row.fields or _NO_FIELDS,
        now,
        now,
        source_name,
        token_key,
    )


def _changes(found: dict[str, Any], row: SignupRow) -> dict[str, Any]:
    """What a new row changes on a known contact: given values replace, blanks keep."""
    change: dict[str, Any] = {}
    if found["email"] is None:  # known only as a suppressed address until now
        change["email"] = row.email
    for name in ("first_name", "last_name", "timezone"):
        value = getattr(row, name)
        if row.keeps_known_names and name != "timezone":
            continue  # an unconfirmed public registration names only new people
        if value and value != found[name]:
            change[name] = value
    if row.discreet is not None and row.discreet != found["discreet"]:
        change["discreet"] = row.discreet
    if row.fields:
        merged = {**(found["fields"] or {}), **row.fields}
        if merged != found["fields"]:
            change["fields"] = merged
    return change


def _enroll(
    session: Session,
    config: Config,
    source_name: str,
    source: Source,
    sequence: str,
    live: dict[str, dict[str, Any]],
    latest: dict[str, SignupRow],
    now: datetime,
    result: IngestResult,
    writers: _Writers,
    fresh: set[int],
) -> None:
    """Enroll the batch's eligible people; for a webinar, into the session each row belongs to.

    Per (person, sequence, session) there is one enrollment. For someone
    already in the sequence: the same session again changes nothing; another
    session while her current one is still ahead moves her (`reschedule`);
    another session once hers is over (or ended) is a new enrollment, with
    its own confirmation, reminders and join link.
    """
    eligible = {
        c["id"]: latest[key]
        for key, c in live.items()
        if c["unsubscribed_at"] is None and c["suppressed_reason"] is None
    }
    if not eligible:
        return
    existing = _enrolled(session, sequence, [i for i in eligible if i not in fresh])
    zones = {c["id"]: c["timezone"] for c in live.values()}
    look = writers.look if writers.look is not None else _first_looks(config, sequence, now)
    chosen = {contact_id: writers.session_of(row) for contact_id, row in eligible.items()}
    new = []
    for contact_id, row in eligible.items():
        sid, start_at = chosen[contact_id]
        mine = existing.get(contact_id, [])
        if any(found.session == sid for found in mine):
            continue  # the same signup again
        current = _current(mine, now)
        if current is not None:
            if start_at is not None:
                reschedule(session, config, current.id, sequence, source.webinar, start_at, now, sid, row.join_url)
                result.rescheduled += 1
            continue
        enrolled_at = signed_up(row, now)
        new.append(
            (
                contact_id,
                sequence,
                "active",
                enrolled_at,
                source_name,
                source.webinar,
                start_at,
                sid,
                row.join_url,
                look(start_at, row.timezone or zones.get(contact_id), enrolled_at),
                now,
            )
        )
    writers.enrollments.run(new)
    result.enrolled += len(new)
    if new:
        result.sequences[sequence] = result.sequences.get(sequence, 0) + len(new)


@dataclass(frozen=True)
class _Held:
    """An enrollment someone already has in a sequence (what `_enroll` decides on)."""

    id: int
    status: str
    webinar_start: datetime | None
    session: str


def _current(held: list[_Held], now: datetime) -> _Held | None:
    """Her enrollment that a new signup moves: going on, its webinar still ahead (or with no date).

    Without a webinar (a plain sequence) every enrollment is ''-session and
    is caught as "the same signup again" before this is asked.
    """
    going = [h for h in held if h.status in ("active", "paused") and (h.webinar_start is None or h.webinar_start > now)]
    return max(going, key=lambda h: (h.webinar_start is not None, h.webinar_start or now, h.id), default=None)


def _enrolled(session: Session, sequence: str, ids: list[int]) -> dict[int, list[_Held]]:
    """Enrollments in `sequence` of these contacts (one per session), by contact.

    A bare probe first (new contacts have none); the typed query only for those it found.
    """
    known = sorted(
        {
            contact_id
            for (contact_id,) in probe_in(
                session, "SELECT contact_id FROM enrollments WHERE sequence = {mark} AND contact_id IN", ids, sequence
            )
        }
    )
    existing: dict[int, list[_Held]] = {}
    for start in range(0, len(known), _BATCH):
        chunk = known[start : start + _BATCH]
        query = select(
            col(Enrollment.contact_id),
            col(Enrollment.id),
            col(Enrollment.status),
            col(Enrollment.webinar_start),
            col(Enrollment.session),
        ).where(and_(col(Enrollment.sequence) == sequence, col(Enrollment.contact_id).in_(chunk)))
        for contact_id, enrollment_id, status, start_at, sid in session.execute(query):
            existing.setdefault(contact_id, []).append(_Held(enrollment_id, status, start_at, sid))
    return existing


def session_chooser(
    config: Config, source: Source, now: datetime
) -> Callable[[SignupRow], tuple[str, datetime | None]]:
    """(session id, start) of the session a row of `source` joins (`funnel.webinar.sessions.pick_session`).

    A webinar with `sessions`/`repeat`: the row's start matched to a session,
    else the next session after she signed up (`signed_up_at`, else now).
    Without them: the row's own start (its id its local text), as before
    sessions existed. No start and no session ahead: ('', None), the
    enrollment of old with no webinar date.
    """
    webinar = config.webinars.get(source.webinar or "")
    if webinar is None:
        return lambda row: ("", None)
    tz = config.webinar_zone(source.webinar)

    # rows of one export mostly name the same start: pick each (start, signup time) once
    picked: dict[tuple[datetime | None, datetime], tuple[str, datetime | None]] = {}

    def choose(row: SignupRow) -> tuple[str, datetime | None]:
        signed_up = row.signed_up_at or now
        if webinar.has_sessions:
            key = (row.webinar_start, signed_up)
            if key not in picked:
                if len(picked) >= 10_000:
                    picked.clear()
                found = pick_session(webinar, tz, row.webinar_start, signed_up)
                picked[key] = (found.id, found.start) if found is not None else ("", None)
            return picked[key]
        if row.webinar_start is None:
            return ("", None)
        return (local_id(row.webinar_start, tz), row.webinar_start)

    return choose


def adopt_legacy_sessions(session: Session, config: Config, sequence: str, webinar_id: str | None) -> int:
    """Give webinar enrollments made before sessions existed (migration 0009) their session id.

    The configured session starting at the stored webinar start (or moved
    away from it), else the start's local text in the webinar's zone: the id
    a new signup for that start would get, so she is not enrolled twice.
    Only those with a start; one query when there are none. How many it set.
    """
    webinar = config.webinars.get(webinar_id or "")
    if webinar is None:
        return 0
    found = list(
        session.execute(
            select(col(Enrollment.id), col(Enrollment.webinar_start)).where(
                and_(
                    col(Enrollment.sequence) == sequence,
                    col(Enrollment.session) == "",
                    col(Enrollment.webinar).is_not(None),
                    col(Enrollment.webinar_start).is_not(None),
                )
            )
        )
    )
    if not found:
        return 0
    tz = config.webinar_zone(webinar_id)
    updates = []
    for enrollment_id, start_at in found:
        picked = pick_session(webinar, tz, start_at, start_at) if webinar.has_sessions else None
        updates.append({"id": enrollment_id, "session": picked.id if picked else local_id(start_at, tz)})
    session.execute(update(Enrollment), updates)
    # attendance recorded before sessions existed was the contact's tag: it belongs to her only session
    scoped = session_scoped_tags(config).get(webinar_id or "", frozenset())
    if scoped:
        ids = [enrollment_id for enrollment_id, _ in found]
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            query = (
                select(col(Enrollment.id), col(Tag.tag), col(Tag.source), col(Tag.added_at))
                .join(Tag, col(Tag.contact_id) == col(Enrollment.contact_id))
                .where(and_(col(Enrollment.id).in_(chunk), col(Tag.tag).in_(sorted(scoped))))
            )
            rows = [
                {"enrollment_id": e, "tag": tag, "source": source, "added_at": added}
                for e, tag, source, added in session.execute(query)
            ]
            insert_ignore(session, _table(EnrollmentTag), rows, ("enrollment_id", "tag"))
    return len(updates)


def signed_up(row: SignupRow, now: datetime) -> datetime:
    """When an enrollment from `row` begins: when she signed up (the export says), never later than now.

    Waits count from it, so a weekly export does not send "Your message
    arrived safely" a week late as if it were new: a step already later than
    `max_late` is skipped ("late by 6 days"). A moment in the future (a clock
    set wrong where the export was made) is taken as now; `funnel.signups.sources`
    has already refused the impossible ones.
    """
    if row.signed_up_at is None or row.signed_up_at > now:
        return now
    return row.signed_up_at


def _first_looks(
    config: Config, sequence: str, now: datetime
) -> Callable[[datetime | None, str | None, datetime], datetime]:
    """`schedule.first_look` for new enrollments in `sequence`, once per webinar start, timezone and signup.

    A run then looks at a new enrollment only when one of its steps can
    happen; the answers repeat (one webinar, a few zones), so they are kept.
    """
    found = config.sequences.get(sequence)
    known: dict[tuple[datetime | None, str | None, datetime], datetime] = {}

    def look(start: datetime | None, timezone: str | None, enrolled_at: datetime) -> datetime:
        if found is None:
            return enrolled_at
        key = (start, timezone, enrolled_at)
        if key not in known:
            try:
                tz = zone(timezone or config.practice.timezone)
            except ValueError:
                tz = zone(config.practice.timezone)
            try:
                known[key] = first_look(found, enrolled_at, start, tz, config.delivery)
            except (OverflowError, ValueError):
                known[key] = enrolled_at  # the run decides, and says why it cannot
        return known[key]

    return look


def reschedule(
    session: Session,
    config: Config,
    enrollment_id: int,
    sequence: str,
    webinar: str | None,
    start: datetime,
    now: datetime,
    session_id: str | None = None,
    join_url: str | None = None,
) -> None:
    """Move an active enrollment to another webinar start (and session, when given).

    Steps already sent stay sent (at most once, whatever happens); webinar
    steps skipped only because of the old date are looked at again.
    """
    values: dict[str, Any] = {"webinar_start": start, "next_due_at": now}
    if session_id is not None:
        values["session"] = session_id
    if join_url:  # her link for the new session (a blank keeps the one she has)
        values["join_url"] = join_url
    if webinar:
        values["webinar"] = webinar
    session.execute(update(Enrollment).where(col(Enrollment.id) == enrollment_id).values(**values))
    webinar_steps = (
        [s.id for s in config.sequences[sequence].steps if s.webinar is not None]
        if sequence in config.sequences
        else []
    )
    if webinar_steps:
        session.execute(
            delete(StepRun).where(
                and_(
                    col(StepRun.enrollment_id) == enrollment_id,
                    col(StepRun.status) == "skipped",
                    col(StepRun.step_id).in_(webinar_steps),
                )
            )
        )


def import_file(
    config: Config, engine: Engine, source_name: str, path: Path, now: datetime
) -> tuple[FileRead, IngestResult]:
    """`funnel import`: read one file through a source's mapping now (whatever its fingerprint)."""
    from funnel.errors import ConfigError
    from funnel.signups.sources import read_source_file

    source = config.sources.get(source_name)
    if source is None:
        raise ConfigError(f"no source {source_name!r} in {config.path.name}: known: {', '.join(config.sources)}")
    if source.format == "form":
        raise ConfigError(f"source {source_name!r} is a form: its rows arrive through `funnel serve`")
    if source.format == "zoom":
        raise ConfigError(f"source {source_name!r} reads Zoom's API: `funnel run` reads it, no file is imported")
    read = read_source_file(
        source_name, source, path, zone(config.practice.timezone), None, webinar_tz=config.start_zone(source), now=now
    )
    with Session(engine, expire_on_commit=False) as session:
        result = apply_rows(session, config, source_name, source, read.rows, now)
        session.commit()
    return read, result
