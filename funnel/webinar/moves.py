"""Moving and cancelling webinar sessions (`was:` and `cancelled:` in sequences.yaml, spec section 7).

Applied by `funnel run` when sequences.yaml has changed, before anything is decided: a
listed session whose start moved re-times its enrollments (steps already sent are never
sent again), a cancelled one ends them (`exited`, "session cancelled"), and each move is
recorded on the enrollment for the `on:` letters (`funnel.webinar.notices`). Only listed
sessions move. A session taken out of the file while people are registered for it is
refused (`removed_sessions`). The rules: docs/architecture.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import and_, func, select, update
from sqlmodel import Session, col

from funnel.config import Config
from funnel.signups.store import reschedule
from funnel.store.db import put_setting
from funnel.store.models import Enrollment, Setting
from funnel.webinar.notices import CANCELLED_REASON
from funnel.webinar.sessions import LOOK_AHEAD, LOOK_BACK, listed_sessions, sessions_between


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
                session.execute(
                    update(Enrollment)
                    .where(col(Enrollment.id) == enrollment_id)
                    .values(previous_start=start_at, moves=col(Enrollment.moves) + 1)
                )
                done.moved += 1
    return done


#: the settings row holding, by webinar, the session ids the last sequences.yaml a run saw had
KNOWN_SESSIONS = "webinar_sessions"


def configured_ids(config: Config, now: datetime) -> dict[str, list[str]]:
    """By webinar with sessions: the ids it lists or its rule gives (within the look-back and look-ahead)."""
    out: dict[str, list[str]] = {}
    for webinar_id, webinar in config.webinars.items():
        if not webinar.has_sessions:
            continue
        tz = config.webinar_zone(webinar_id)
        ids = {s.id for s in listed_sessions(webinar, tz)}
        ids |= {s.id for s in sessions_between(webinar, tz, now - LOOK_BACK, now + LOOK_AHEAD)}
        out[webinar_id] = sorted(ids)
    return out


def remember_sessions(session: Session, config: Config, now: datetime) -> None:
    """Keep the sessions of this sequences.yaml, for `removed_sessions` at the next change."""
    put_setting(session, KNOWN_SESSIONS, json.dumps(configured_ids(config, now), sort_keys=True))


def removed_sessions(session: Session, config: Config, now: datetime) -> list[str]:
    """Sessions taken out of sequences.yaml (not moved, not cancelled) while people are registered for them.

    Each as `file:line: message` naming how many are registered and both ways
    to say what happened. Compared with the sessions the last run saw
    (`remember_sessions`); a session already over does not count.
    """
    stored = session.get(Setting, KNOWN_SESSIONS)
    if stored is None:
        return []
    try:
        before: dict[str, list[str]] = json.loads(stored.value)
    except ValueError:
        return []
    current = configured_ids(config, now)
    problems = []
    for webinar_id, ids in sorted(before.items()):
        if webinar_id not in config.webinars:
            continue
        gone = sorted(set(ids) - set(current.get(webinar_id, ())))
        if not gone:
            continue
        counts = session.execute(
            select(col(Enrollment.session), func.count())
            .where(
                and_(
                    col(Enrollment.webinar) == webinar_id,
                    col(Enrollment.session).in_(gone),
                    col(Enrollment.status).in_(("active", "paused")),
                    col(Enrollment.webinar_start) > now,
                )
            )
            .group_by(col(Enrollment.session))
            .order_by(col(Enrollment.session))
        ).all()
        line = config.line_of("webinars", webinar_id, "sessions") or config.line_of("webinars", webinar_id) or 1
        for sid, count in counts:
            who = "1 person is" if count == 1 else f"{count} people are"
            problems.append(
                f"{config.path.name}:{line}: webinars.{webinar_id}.sessions: the session of {sid} is gone from the "
                f"list while {who} registered for it: to move them, list it as `- start: <the new time>` with "
                f"`was: {sid}`; to call it off, as `- start: {sid}` with `cancelled: true`"
            )
    return problems


def removed_sessions_on_disk(config: Config, now: datetime) -> list[str]:
    """`removed_sessions` for `funnel check`: against the practice's database, read only, when there is one.

    No database yet (no SQLite file): nothing to compare, nothing said. The
    database is opened without upgrading it (check changes nothing: SQLite is
    opened read-only); one that cannot be read as it is (an older schema, a
    server that is down) is skipped too, as `funnel run` will say what is wrong.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from funnel.store.db import database_url

    url = make_url(database_url(config.path.parent))
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:" or not Path(url.database).is_file():
            return []
        url = url.set(database=f"file:{Path(url.database).resolve()}?mode=ro", query={"uri": "true"})
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            return removed_sessions(session, config, now)
    except SQLAlchemyError:
        return []
    finally:
        engine.dispose()
