"""Webinar sessions: the dates of a webinar that runs again and again (spec section 7).

Pure functions of (webinar, zone, moments): no database, no clock. A session's id is
its local start as first written (the `was` text for a moved one), so a move keeps its
enrollments attached. Listed sessions come first; a `repeat` RRULE adds its dates, and
a rule date that equals a listed session is that session (listing is how one date is
moved or cancelled). Expansion is bounded (a window, at most daily), so no rule loops
for long. The rules: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from funnel.config import session_id
from funnel.timeutil import read_rule

if TYPE_CHECKING:
    from funnel.config import Config, Webinar

#: how far ahead "the next session after she signed up" is looked for
LOOK_AHEAD = timedelta(days=2 * 366)
#: how far back "the latest session that had started" is looked for
LOOK_BACK = timedelta(days=2 * 366)
#: the most rule dates one window may hold (a daily rule over the look-ahead is ~730)
MAX_RULE_DATES = 2000
_DEFAULT_ANCHOR = datetime(2020, 1, 1)


@dataclass(frozen=True)
class Session:
    """One session of a webinar."""

    #: the local start as first written (`YYYY-MM-DD HH:MM`)
    id: str
    #: when it starts now (aware UTC)
    start: datetime
    cancelled: bool = False
    #: where it was before a move (aware UTC), None when never moved
    previous_start: datetime | None = None
    #: False for a start a row named that no configured session has (taken as given)
    configured: bool = True

    @property
    def revision(self) -> int:
        """How many times the session changed: its calendar event's SEQUENCE (a move, a cancellation)."""
        return (1 if self.previous_start is not None else 0) + (1 if self.cancelled else 0)


def local_id(start: datetime, tz: ZoneInfo) -> str:
    """The id of a start that is an aware instant (a row's start, a stored one)."""
    return session_id(start.astimezone(tz).replace(tzinfo=None))


def to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    """A naive local wall time in `tz` as aware UTC (gap: forward by the jump; overlap: the first)."""
    return local.replace(tzinfo=tz).astimezone(UTC)


def sessions_between(webinar: Webinar, tz: ZoneInfo, lo: datetime, hi: datetime) -> list[Session]:
    """Every session of `webinar` starting in [lo, hi] (aware), listed and by rule, in time order."""
    listed = listed_sessions(webinar, tz)
    found = [s for s in listed if lo <= s.start <= hi]
    if webinar.repeat and webinar.repeat_at is not None:
        taken = {s.id for s in listed} | {session_id(item.start) for item in webinar.sessions}
        for local in _rule_dates(webinar, tz, lo, hi):
            sid = session_id(local)
            if sid not in taken:
                found.append(Session(sid, to_utc(local, tz)))
    return sorted(found, key=lambda s: (s.start, s.id))


def listed_sessions(webinar: Webinar, tz: ZoneInfo) -> list[Session]:
    """The sessions written under `sessions:` (no rule)."""
    out = []
    for item in webinar.sessions:
        first = item.was or item.start
        out.append(
            Session(
                session_id(first),
                to_utc(item.start, tz),
                cancelled=item.cancelled,
                previous_start=to_utc(item.was, tz) if item.was else None,
            )
        )
    return out


def _rule_dates(webinar: Webinar, tz: ZoneInfo, lo: datetime, hi: datetime) -> Iterator[datetime]:
    """The rule's local starts inside [lo, hi], at most `MAX_RULE_DATES` of them."""
    assert webinar.repeat is not None and webinar.repeat_at is not None
    firsts = [item.was or item.start for item in webinar.sessions]
    anchor = min(firsts) if firsts else _DEFAULT_ANCHOR
    anchor = datetime.combine(anchor.date(), webinar.repeat_at)
    # a day of slack each side: the window is in UTC, the rule in local dates
    lo_local = lo.astimezone(tz).replace(tzinfo=None) - timedelta(days=1)
    hi_local = hi.astimezone(tz).replace(tzinfo=None) + timedelta(days=1)
    made = 0
    for day in read_rule(webinar.repeat, anchor):
        local = datetime.combine(day.date(), webinar.repeat_at)
        if local > hi_local:
            return
        if local < lo_local:
            continue
        start = to_utc(local, tz)
        if lo <= start <= hi:
            yield local
            made += 1
            if made >= MAX_RULE_DATES:
                return


def pick_session(webinar: Webinar, tz: ZoneInfo, row_start: datetime | None, signed_up_at: datetime) -> Session | None:
    """The session a registrant joins.

    The row's start when it has one: the session starting then (or one that
    was moved away from then: an old export names the old time); a start that
    no session has is taken as given, as before sessions existed (its id is
    its local text), so a one-off date in an export still works. Without a
    start: the first session, not cancelled, starting after she signed up.
    None when there is none (no sessions, or none ahead).
    """
    if row_start is not None:
        near = sessions_between(webinar, tz, row_start - timedelta(days=1), row_start + timedelta(days=1))
        for found in near:
            if found.start == row_start:
                return found
        for found in listed_sessions(webinar, tz):
            if found.previous_start == row_start:
                return found
        return Session(local_id(row_start, tz), row_start, configured=False)
    for found in sessions_between(webinar, tz, signed_up_at + timedelta(seconds=1), signed_up_at + LOOK_AHEAD):
        if not found.cancelled:
            return found
    return None


def latest_started(webinar: Webinar, tz: ZoneInfo, now: datetime) -> Session | None:
    """The latest session, not cancelled, that had started by `now` (attendance read without a join time)."""
    started = [s for s in sessions_between(webinar, tz, now - LOOK_BACK, now) if not s.cancelled]
    return started[-1] if started else None


def find_session(webinar: Webinar, tz: ZoneInfo, sid: str, near: datetime | None) -> Session | None:
    """The configured session with id `sid` (looked for around `near`, a stored start), or None."""
    for found in listed_sessions(webinar, tz):
        if found.id == sid:
            return found
    if webinar.repeat and near is not None:
        for found in sessions_between(webinar, tz, near - timedelta(days=2), near + timedelta(days=2)):
            if found.id == sid:
                return found
    return None


def past_sessions(webinar: Webinar, tz: ZoneInfo, now: datetime) -> list[tuple[int, str]]:
    """Listed sessions already over at `now` (a warning: they are history, kept for who came)."""
    return [
        (index, session_id(item.start)) for index, item in enumerate(webinar.sessions) if to_utc(item.start, tz) < now
    ]


def session_warnings(config: Config, now: datetime) -> list[str]:
    """`funnel check`'s warnings about sessions: listed ones that are over (kept as history)."""
    out = []
    for wid, webinar in config.webinars.items():
        tz = config.webinar_zone(wid)
        for index, sid in past_sessions(webinar, tz, now):
            line = config.line_of("webinars", wid, "sessions", index) or 1
            out.append(
                f"{config.path.name}:{line}: warning: webinars.{wid}.sessions: {sid} is over; it stays as "
                "history (who registered and came), and nobody new joins it"
            )
    return out


def session_scoped_tags(config: Config) -> dict[str, frozenset[str]]:
    """By webinar: the tags that belong to one session, those its attendance sources set.

    An attendance source is one with `webinar:` set and `create: false`; a zoom
    source's `attended_tags` are attendance too.
    """
    found: dict[str, set[str]] = {}
    for source in config.sources.values():
        if source.webinar and not source.create and source.tags:
            found.setdefault(source.webinar, set()).update(source.tags)
        if source.webinar and source.format == "zoom" and source.attended_tags:
            found.setdefault(source.webinar, set()).update(source.attended_tags)
    return {wid: frozenset(tags) for wid, tags in found.items()}


def tags_in_session(contact_tags: frozenset[str], scoped: frozenset[str], own: frozenset[str]) -> frozenset[str]:
    """The tags a session's enrollment sees: the contact's, with the session-scoped ones only from `own`.

    February's enrollment of a woman who came in January but not in February
    sees no `webinar-attended`; her other sequences still see the contact's tag.
    """
    if not scoped:
        return contact_tags
    return (contact_tags - scoped) | (own & scoped)


#: a join time up to this long before a session's start belongs to it (people come early)
EARLY_JOIN = timedelta(hours=1)


def attended_session(webinar: Webinar, tz: ZoneInfo, joined_at: datetime | None, read_at: datetime) -> Session | None:
    """The session an attendance row belongs to: its join time's (if mapped), else the latest that had started."""
    if joined_at is not None:
        return latest_started(webinar, tz, joined_at + EARLY_JOIN)
    return latest_started(webinar, tz, read_at)
