"""A `format: zoom` source: Zoom's registrants and participants as signups (spec section 11).

Each `funnel run` reads, per zoom source, the webinar's upcoming occurrences, their
approved registrants, and the participants of sessions over in the last
`ATTENDANCE_DAYS`. Registrants become `SignupRow`s with the occurrence's start, so
they go through `funnel.signups.store` like any export. Reads are incremental
(`ZoomCursor`), and the webhook's events (`receive_event`) map to the same rows.
How occurrences match sessions, and when a read stops: docs/zoom.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import and_, select
from sqlmodel import Session, col

from funnel.config import Config, Source
from funnel.signups.sources import MAX_JOIN_URL, SignupRow
from funnel.signups.store import IngestResult, _Mark, _mark, apply_rows
from funnel.signups.zoom_api import ZoomClient, ZoomError, ZoomSettings, quote_uuid
from funnel.store.bulk import insert_ignore
from funnel.store.models import Contact, Enrollment, Tag, ZoomCursor, ZoomEvent
from funnel.text import clean_line, email_hash, normalize_email
from funnel.webinar.sessions import listed_sessions, local_id, pick_session, sessions_between

#: a count unchanged this long is trusted; after it, the whole list is read again (cancellations, edits)
FULL_READ_EVERY = timedelta(days=1)
#: participants are read for sessions that ended within this many days
ATTENDANCE_DAYS = 14
#: Zoom's participant lists settle some time after a session ends; read until then
SETTLE = timedelta(hours=2)
#: Zoom's recurring webinar types (6: no fixed time, 9: fixed time); 5 is a one-off
RECURRING = (6, 9)


@dataclass(frozen=True)
class Occurrence:
    """One session of the webinar in Zoom."""

    id: str  # Zoom's occurrence_id ('' for a one-off webinar)
    start: datetime
    duration: timedelta

    @property
    def end(self) -> datetime:
        return self.start + self.duration


@dataclass
class ZoomRead:
    """What reading one zoom source did: for the run's summary."""

    report: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    result: IngestResult = field(default_factory=IngestResult)
    rejected: int = 0
    requests: int = 0


def parse_time(text: Any) -> datetime | None:
    """Zoom's times: ISO 8601 in UTC (`2027-01-14T02:00:00Z`); None when missing or unreadable."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def occurrences_of(webinar: dict[str, Any]) -> list[Occurrence]:
    """A webinar's occurrences (recurring), else its one start; deleted occurrences left out."""
    minutes = int(webinar.get("duration") or 60)
    found = []
    for item in webinar.get("occurrences") or []:
        if not isinstance(item, dict) or str(item.get("status", "available")).lower() == "deleted":
            continue
        start = parse_time(item.get("start_time"))
        if start is not None:
            found.append(
                Occurrence(
                    str(item.get("occurrence_id") or ""), start, timedelta(minutes=int(item.get("duration") or minutes))
                )
            )
    if not found and webinar.get("type") not in RECURRING:
        start = parse_time(webinar.get("start_time"))
        if start is not None:
            found.append(Occurrence("", start, timedelta(minutes=minutes)))
    return sorted(found, key=lambda o: o.start)


def registrant_row(
    registrant: dict[str, Any], start: datetime, where: str, problems: list[str], warnings: list[str]
) -> SignupRow | None:
    """One registrant as a signup row, or None with the reason in `problems`.

    `where` names her for a message without personal data (Zoom's registrant id).
    A name's control characters are removed (with a warning); a join link that
    is not https is left out (her letters use the webinar's own link).
    """
    raw_email = str(registrant.get("email") or "").strip()
    if not raw_email:
        problems.append(f"{where}: no email address: left out")
        return None
    try:
        address = normalize_email(raw_email)
    except ValueError as exc:
        problems.append(f"{where}: the email address is not valid ({exc}): left out")
        return None
    names = []
    for key in ("first_name", "last_name"):
        value = str(registrant.get(key) or "")
        cleaned = clean_line(value)[:200]
        if cleaned != value.strip():
            warnings.append(f"{where}: {key} held control characters or stray spaces: removed")
        names.append(cleaned or None)
    join_url = str(registrant.get("join_url") or "").strip() or None
    if join_url is not None:
        parsed = urlsplit(join_url) if len(join_url) <= MAX_JOIN_URL and join_url.isprintable() else None
        if parsed is None or parsed.scheme.lower() != "https" or not parsed.hostname or " " in join_url:
            warnings.append(
                f"{where}: her join link is not an https address: left out (the webinar's join_url is used)"
            )
            join_url = None
    return SignupRow(
        line=0,
        email=address,
        first_name=names[0],
        last_name=names[1],
        webinar_start=start,
        file=where.split(":", 1)[0],
        signed_up_at=parse_time(registrant.get("create_time")),
        join_url=join_url,
        keeps_known_names=True,
    )


def session_warning(config: Config, source: Source, occurrence: Occurrence) -> str | None:
    """When sequences.yaml lists sessions and this occurrence is none of them: a warning naming both."""
    webinar = config.webinars.get(source.webinar or "")
    if webinar is None or not webinar.has_sessions:
        return None
    tz = config.webinar_zone(source.webinar)
    found = pick_session(webinar, tz, occurrence.start, occurrence.start)
    if found is None or found.configured:
        return None
    near = sessions_between(webinar, tz, occurrence.start - timedelta(days=40), occurrence.start + timedelta(days=40))
    near = near or listed_sessions(webinar, tz)
    nearest = min(near, key=lambda s: abs(s.start - occurrence.start), default=None)
    named = f"the nearest in sequences.yaml is {nearest.id}" if nearest else "sequences.yaml lists none near it"
    return (
        f"Zoom's occurrence at {local_id(occurrence.start, tz)} ({tz.key}) matches no session of webinars."
        f"{source.webinar} ({named}): its registrants join it as its own session; correct the date in Zoom "
        "or in sequences.yaml"
    )


# --------------------------------------------------------------------------- a run


def read_zoom_sources(session: Session, config: Config, now: datetime) -> dict[str, ZoomRead]:
    """Read every zoom source; a failure of one is its problem, the others go on. The caller commits."""
    found = {}
    for name, source in config.sources.items():
        if source.format != "zoom":
            continue
        read = ZoomRead(report={"zoom": source.webinar_id})
        try:
            client = ZoomClient(ZoomSettings.from_env())
        except ZoomError as exc:
            read.problems.append(f"source {name}: {exc}")
            read.report["status"] = "error"
            found[name] = read
            continue
        try:
            _read_one(session, config, name, source, now, client, read)
            read.report["status"] = "read"
        except ZoomError as exc:
            read.problems.append(f"source {name}: {exc}")
            read.report["status"] = "error"
            read.report["problem"] = str(exc)
        read.requests = client.requests
        read.report["requests"] = client.requests
        found[name] = read
    return found


def _read_one(
    session: Session, config: Config, name: str, source: Source, now: datetime, client: ZoomClient, read: ZoomRead
) -> None:
    webinar_id = source.webinar_id or ""
    # past occurrences too: when the last one began decides how a later one's letters are timed
    webinar = client.get(f"/webinars/{webinar_id}", {"show_previous_occurrences": "true"})
    occurrences = occurrences_of(webinar)
    ahead = [o for o in occurrences if o.start > now]
    past = len(occurrences) - len(ahead)
    if past:
        # not a warning on every run: a session that took place is no mistake
        read.report["past_occurrences"] = f"{past} begun or over: nobody new is enrolled for them"
    for occurrence in ahead:
        warning = session_warning(config, source, occurrence)
        if warning:
            read.warnings.append(f"source {name}: {warning}")
    # per person, the earliest session she registered for (one registration for all occurrences
    # lists her in each: she is enrolled for the next, and for the one after once it is over)
    rows: dict[str, SignupRow] = {}
    seen = 0
    begun = max((o.start for o in occurrences if o.start <= now), default=None)
    # how far each occurrence was read: written only once its rows are applied, so a read that
    # fails half-way leaves the counts as they were and the next run reads it all again
    counts: dict[str, int] = {}
    for occurrence in ahead:
        for row in _registrants(session, name, webinar_id, occurrence, now, client, read, counts):
            seen += 1
            if begun is not None and row.signed_up_at is not None and row.signed_up_at < begun:
                # registered for every occurrence: this one's letters count from now, not from
                # a signup before the last session (its confirmation would be "late")
                row.signed_up_at = None
            if row.email not in rows:
                rows[row.email] = row
    read.report["registrants"] = seen
    if rows:
        result = apply_rows(session, config, name, source, list(rows.values()), now)
        read.result.add(result)
        read.report.update(imported=result.imported, enrolled=result.enrolled, rescheduled=result.rescheduled)
    _remember_counts(session, name, counts, now)
    read.report["attended"] = _attendance(session, config, name, source, now, client, webinar, read)


def _registrants(
    session: Session,
    name: str,
    webinar_id: str,
    occurrence: Occurrence,
    now: datetime,
    client: ZoomClient,
    read: ZoomRead,
    counts: dict[str, int],
) -> list[SignupRow]:
    """The approved registrants of one occurrence, or none when Zoom's count is the one read last time.

    A full read puts Zoom's count in `counts` (by occurrence key) for `_remember_counts`.
    """
    key = occurrence.id or "-"
    cursor = session.get(ZoomCursor, (name, key))
    params = {"status": "approved", "occurrence_id": occurrence.id or None}
    rows: list[SignupRow] = []
    total = 0
    for index, page in enumerate(client.pages(f"/webinars/{webinar_id}/registrants", "registrants", params)):
        total = int(page.get("total_records") or 0)
        if (
            index == 0
            and cursor is not None
            and cursor.full_read_at is not None
            and cursor.registrants == total
            and now - cursor.full_read_at < FULL_READ_EVERY
        ):
            return []  # nothing new since the last full read
        for registrant in page.get("registrants") or []:
            if not isinstance(registrant, dict):
                continue
            if str(registrant.get("status") or "approved").lower() != "approved":
                continue
            where = f"zoom:{webinar_id}: registrant {str(registrant.get('id') or '?')[:40]}"
            row = registrant_row(registrant, occurrence.start, where, read.problems, read.warnings)
            if row is None:
                read.rejected += 1
            else:
                rows.append(row)
    counts[key] = total
    return rows


def _remember_counts(session: Session, name: str, counts: dict[str, int], now: datetime) -> None:
    """After the rows are applied: each occurrence read in full, with Zoom's count then."""
    for key, total in counts.items():
        cursor = session.get(ZoomCursor, (name, key))
        if cursor is None:
            insert_ignore(
                session,
                ZoomCursor.__table__,  # type: ignore[attr-defined]  # SQLModel does not declare it for mypy
                [{"source": name, "occurrence": key, "registrants": 0, "full_read_at": None, "attendance_done": False}],
                ("source", "occurrence"),
            )
            cursor = session.get(ZoomCursor, (name, key))
            assert cursor is not None
        cursor.registrants, cursor.full_read_at = total, now
        session.add(cursor)


def _attendance(
    session: Session,
    config: Config,
    name: str,
    source: Source,
    now: datetime,
    client: ZoomClient,
    webinar: dict[str, Any],
    read: ZoomRead,
) -> int:
    """Participants of sessions over in the last days, as attendance; 0 requests when none is due."""
    lo = now - timedelta(days=ATTENDANCE_DAYS)
    recent = session.execute(
        select(col(Enrollment.id))
        .where(
            and_(
                col(Enrollment.source) == name,
                col(Enrollment.webinar_start) >= lo,
                col(Enrollment.webinar_start) <= now,
            )
        )
        .limit(1)
    ).first()
    if recent is None:
        return 0
    duration = timedelta(minutes=int(webinar.get("duration") or 60))
    instances = client.get(f"/past_webinars/{source.webinar_id}/instances").get("webinars") or []
    marked = 0
    for instance in instances:
        uuid = str(instance.get("uuid") or "") if isinstance(instance, dict) else ""
        started = parse_time(instance.get("start_time")) if isinstance(instance, dict) else None
        if not uuid or started is None or started < lo or started > now:
            continue
        key = "uuid:" + hashlib.sha256(uuid.encode()).hexdigest()[:32]
        cursor = session.get(ZoomCursor, (name, key))
        if cursor is not None and cursor.attendance_done:
            continue
        people: list[tuple[str, datetime | None]] = []
        guests = 0
        for page in client.pages(f"/past_webinars/{quote_uuid(uuid)}/participants", "participants"):
            for person in page.get("participants") or []:
                address = str(person.get("user_email") or "").strip() if isinstance(person, dict) else ""
                if not address:
                    guests += 1
                    continue
                people.append((address, started))
        if guests:
            read.warnings.append(
                f"source {name}: {guests} participant(s) of the session of {started:%Y-%m-%d} gave no email: ignored"
            )
        found, unknown = mark_attendance(session, config, name, source, people, now)
        marked += found
        if unknown:
            read.warnings.append(
                f"source {name}: {unknown} participant(s) of the session of {started:%Y-%m-%d} were not registered "
                "for it through funnel: ignored"
            )
        done = now >= started + duration + SETTLE
        if cursor is None:
            session.add(ZoomCursor(source=name, occurrence=key, registrants=0, attendance_done=done))
        else:
            cursor.attendance_done = done
            session.add(cursor)
    return marked


def mark_attendance(
    session: Session,
    config: Config,
    name: str,
    source: Source,
    people: list[tuple[str, datetime | None]],
    now: datetime,
) -> tuple[int, int]:
    """Mark these participants (address, join time) as attendance; (enrollments marked, people not matched).

    As an attendance export does: a participant who is a contact gets
    `attended_tags` on the enrollment of the session she joined (what the
    replay or thank-you of that session reads) and on herself (what other
    sequences read). Someone who is no contact changes nothing; she and
    anyone without an enrollment for that session count as not matched.
    """
    tags = source.attended_tags
    by_hash: dict[str, datetime | None] = {}
    for address, joined in people:
        try:
            by_hash.setdefault(email_hash(normalize_email(address)), joined)
        except ValueError:
            continue
    if not by_hash or not tags:
        return 0, len(people)
    contacts = {
        h: cid
        for cid, h in session.execute(
            select(col(Contact.id), col(Contact.email_hash)).where(
                and_(col(Contact.email_hash).in_(list(by_hash)), col(Contact.erased_at).is_(None))
            )
        )
    }
    marks = [_Mark(cid, by_hash[h], now, tag, name) for h, cid in contacts.items() for tag in tags]
    marked = _mark(session, config, source.webinar or "", marks, now)
    people_marked = marked // len(tags)
    if contacts:
        rows = [
            {"contact_id": cid, "tag": tag, "source": name, "added_at": now}
            for cid in contacts.values()
            for tag in tags
        ]
        insert_ignore(session, Tag.__table__, rows, ("contact_id", "tag"))  # type: ignore[attr-defined]
    return people_marked, len(by_hash) - people_marked


# --------------------------------------------------------------------------- webhook events


@dataclass
class EventOutcome:
    """What one webhook event did: `status` stored | duplicate | ignored, and why; enrollments to send to."""

    status: str
    reason: str = ""
    enrollment_ids: list[int] = field(default_factory=list)


def zoom_source_for(config: Config, webinar_id: str) -> tuple[str, Source] | None:
    for name, source in config.sources.items():
        if source.format == "zoom" and source.webinar_id == webinar_id:
            return name, source
    return None


def receive_event(session: Session, config: Config, payload: dict[str, Any], now: datetime) -> EventOutcome:
    """Apply one signed event (the caller commits): a registration enrolls, a join marks attendance."""
    kind = str(payload.get("event") or "")
    obj = (payload.get("payload") or {}).get("object") or {}
    if not isinstance(obj, dict):
        return EventOutcome("ignored", "the event holds no object")
    webinar_id = str(obj.get("id") or "").replace(" ", "")
    found = zoom_source_for(config, webinar_id)
    if kind not in ("webinar.registration_created", "webinar.participant_joined"):
        return EventOutcome("ignored", f"funnel does not act on {kind or 'an unnamed event'}")
    if found is None:
        return EventOutcome("ignored", "the webinar is not a zoom source's webinar_id in sequences.yaml")
    name, source = found
    person = obj.get("registrant") if kind == "webinar.registration_created" else obj.get("participant")
    if not isinstance(person, dict):
        return EventOutcome("ignored", "the event names no registrant or participant")
    identity = "|".join(
        str(x)
        for x in (
            kind,
            webinar_id,
            person.get("id") or person.get("registrant_id") or "",
            person.get("email") or "",
            person.get("join_time") or "",
            obj.get("uuid") or "",
        )
    )
    key = "event:" + hashlib.sha256(identity.encode()).hexdigest()
    if session.get(ZoomEvent, key) is not None:
        return EventOutcome("duplicate", "this event was stored before")
    if kind == "webinar.registration_created":
        outcome = _registration(session, config, name, source, obj, person, now)
    else:
        joined = parse_time(person.get("join_time")) or parse_time(obj.get("start_time")) or now
        address = str(person.get("email") or "").strip()
        if not address:
            outcome = EventOutcome("ignored", "the participant gave no email")
        else:
            marked, _unknown = mark_attendance(session, config, name, source, [(address, joined)], now)
            outcome = (
                EventOutcome("stored", "attendance marked")
                if marked
                else EventOutcome("ignored", "no registration for the session she joined")
            )
    session.add(ZoomEvent(key=key, kind=kind, received_at=now, outcome=outcome.status))
    return outcome


def _registration(
    session: Session,
    config: Config,
    name: str,
    source: Source,
    obj: dict[str, Any],
    registrant: dict[str, Any],
    now: datetime,
) -> EventOutcome:
    occurrences = occurrences_of(obj)
    if not occurrences:
        return EventOutcome("ignored", "the event names no start time for the webinar")
    ahead = [o for o in occurrences if o.start > now]
    if not ahead:
        return EventOutcome("ignored", "the occurrence she registered for is in the past")
    problems: list[str] = []
    warnings: list[str] = []
    row = registrant_row(registrant, ahead[0].start, f"zoom:{source.webinar_id}: a registration", problems, warnings)
    if row is None:
        return EventOutcome("ignored", problems[0] if problems else "unreadable registrant")
    if str(registrant.get("status") or "approved").lower() not in ("approved", ""):
        return EventOutcome("ignored", "the registration is not approved (yet)")
    apply_rows(session, config, name, source, [row], now)
    session.flush()
    ids = [
        eid
        for (eid,) in session.execute(
            select(col(Enrollment.id))
            .join(Contact, col(Contact.id) == col(Enrollment.contact_id))
            .where(
                and_(
                    col(Contact.email_hash) == email_hash(row.email),
                    col(Enrollment.status) == "active",
                    col(Enrollment.webinar) == source.webinar,
                )
            )
        )
    ]
    return EventOutcome("stored", "; ".join(warnings) or "enrolled", ids)


def seen_signature(session: Session, signature: str, now: datetime) -> bool:
    """Record a post's signature; True when it was recorded before (a replay). The caller commits."""
    key = "sig:" + hashlib.sha256(signature.encode()).hexdigest()
    if session.get(ZoomEvent, key) is not None:
        return True
    session.add(ZoomEvent(key=key, kind="signature", received_at=now, outcome=""))
    return False
