"""The webinar as a calendar event (`invite.ics`) for steps with `calendar: true`.

An attached `METHOD:PUBLISH` event, not a `METHOD:REQUEST` invitation: a REQUEST
carries her address as ATTENDEE and makes mail clients offer Accept/Decline, whose
answers would land in the practice's inbox, pause her letters and say whether she
comes. A PUBLISH event is a plain "add to calendar" in Gmail, Apple Mail and Outlook.
The event's title is the quiet `event_title`, and discreet readers get neither link
nor location (see docs/decisions.md, "The calendar invitation").
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from funnel.config import Config, Step
from funnel.transports.base import Attachment

FILENAME = "invite.ics"
CONTENT_TYPE = "text/calendar"
METHOD = "PUBLISH"
PRODID = "-//funnel//webinar invitation//EN"


#: the whole description of a discreet reader's event: no title, no link, no name
DISCREET_DESCRIPTION = "Your link is in the email."


def event_title(config: Config, webinar_id: str) -> str:
    """The event's title (SUMMARY) for everyone but discreet readers: `webinars.<id>.event_title`, else
    "Webinar with" the sender's name as she signs (before any comma and credentials), else "Webinar".

    Never the webinar's full title: lock screens, watches and shared family
    calendars show the SUMMARY to whoever is near.
    """
    webinar = config.webinars[webinar_id]
    if webinar.event_title and webinar.event_title.strip():
        return webinar.event_title.strip()
    name = (config.practice.from_name or "").split(",")[0].strip()
    return f"Webinar with {name}" if name else "Webinar"


def event_uid(person_key: str, webinar_id: str, domain: str, session: str = "") -> str:
    """A UID that is the same for one person and one webinar session, and says nothing about either.

    The session id (`funnel.webinar.sessions`: the date as first written) stays the
    same when the session moves, so a new time updates the same event; a
    returning registrant's next session is an event of its own. Without a
    session (a webinar with no `sessions:`) the UID is what it always was.
    """
    key = f"funnel-webinar\x00{webinar_id}\x00{person_key}" + (f"\x00{session}" if session else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{digest}@{domain}"


def webinar_event(
    *,
    uid: str,
    title: str,
    start: datetime,
    length: timedelta,
    join_url: str | None,
    description: str,
    now: datetime,
    location: bool = True,
    sequence: int = 0,
    cancelled: bool = False,
) -> bytes:
    """The iCalendar file (RFC 5545) for one event: pure, no clock of its own.

    `sequence` counts the changes to the event (a calendar takes the file with
    the same UID and a higher SEQUENCE as the newer version); `cancelled`
    writes STATUS:CANCELLED, which calendars show as called off.
    """
    # imported here: icalendar takes a noticeable time to load, and most runs send no invitation
    from icalendar import Calendar, Event

    calendar = Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    calendar.add("method", METHOD)
    event = Event()
    event.add("uid", uid)
    event.add("dtstamp", now.astimezone(UTC))
    event.add("dtstart", start.astimezone(UTC))
    event.add("dtend", (start + length).astimezone(UTC))
    event.add("summary", title)
    if description:
        event.add("description", description)
    if join_url:
        event.add("url", join_url)
        if location:
            event.add("location", join_url)
    event.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    event.add("transp", "OPAQUE")
    event.add("sequence", sequence)
    calendar.add_component(event)
    return calendar.to_ical()


def invitation(
    config: Config,
    step: Step,
    *,
    person_key: str,
    discreet: bool,
    webinar_id: str | None,
    start: datetime | None,
    now: datetime,
    session: str = "",
    join_url: str | None = None,
    moves: int = 0,
) -> tuple[Attachment, ...]:
    """The `invite.ics` attachment for a `calendar: true` step, or nothing.

    Nothing when the step does not ask for it, or when the contact has no
    webinar date (the email then goes without it; `funnel check` refuses
    `calendar: true` where no contact could have a webinar).
    """
    webinar = config.webinars.get(webinar_id or "")
    if not step.calendar or webinar is None or start is None:
        return ()
    practice = config.practice
    link = join_url or webinar.join_url  # her own link (from the export) before the webinar's shared one
    if discreet:  # nothing that names the subject or leads to it: her link is in the email
        title, description, link = practice.discreet_event_title, DISCREET_DESCRIPTION, None
    else:  # the quiet title on lock screens and shared calendars; the full one only inside the event
        title = event_title(config, webinar_id or "")
        lines = [webinar.title, f"Join: {link}" if link else "", practice.name]
        description = "\n\n".join(line for line in lines if line)
    content = _event_for(
        event_uid(person_key, webinar_id or "", practice.from_email.rpartition("@")[2] or "funnel", session),
        title=title,
        start=start,
        length=webinar.duration.approx,
        join_url=link,
        description=description,
        now=now,
        # calendars show LOCATION on shared screens and lock-screen alerts; the link can name the subject
        location=not discreet,
        **_session_state(config, webinar_id or "", session, start, moves),
    )
    # `name` too: older Outlook names the file from the content type, not the disposition
    return (Attachment(FILENAME, content, CONTENT_TYPE, params=(("method", METHOD), ("name", FILENAME))),)


def _session_state(config: Config, webinar_id: str, session: str, start: datetime, moves: int = 0) -> dict[str, Any]:
    """SEQUENCE and STATUS of a session's event: one change per move, one more if cancelled.

    `was:` keeps only where a session was first, so the moves counted are the
    ones runs applied to her enrollment (`moves`, stored with each move: a
    session moved twice counts 2), or the one `was:` says when that is more
    (an enrollment made after the move, at the new time, still gets a SEQUENCE
    above the one her calendar may hold from a shared invitation).
    """
    from funnel.webinar.sessions import find_session

    webinar = config.webinars.get(webinar_id)
    if not session or webinar is None or not webinar.has_sessions:
        return {}
    found = find_session(webinar, config.webinar_zone(webinar_id), session, start)
    if found is None:
        return {}
    moved = max(moves, 1 if found.previous_start is not None else 0)
    return {"sequence": moved + (1 if found.cancelled else 0), "cancelled": found.cancelled}


#: events already written this process, with a stand-in UID: (domain, the event's other values) -> bytes
_EVENTS: dict[tuple[Any, ...], bytes | None] = {}
_MAX_EVENTS = 256
#: a UID's digest as `event_uid` writes it: 32 hex digits
_DIGEST = re.compile(r"[0-9a-f]{32}\Z")
#: the digest the file is written with once, replaced by each person's (the same length: the same folds)
_STAND_IN = "f" * 32


def _event_for(uid: str, **event: Any) -> bytes:
    """`webinar_event(uid=uid, **event)`, from a copy written once per run for everyone with the same webinar.

    Writing the file with icalendar costs about half of a confirmation's CPU,
    and only the UID differs from one person to the next. So the file is
    written once with a stand-in digest of the same length (its lines fold at
    the same places) and each person's digest takes its place; a file where the
    stand-in does not appear exactly once as written (a domain icalendar
    escapes, say) is written for every person as before. A test compares both
    ways of writing it.
    """
    digest, _at, domain = uid.partition("@")
    if not _DIGEST.match(digest):
        return webinar_event(uid=uid, **event)
    stand_in = f"{_STAND_IN}@{domain}"
    key = (domain, *sorted(event.items()))
    if key not in _EVENTS:
        written = webinar_event(uid=stand_in, **event)
        if len(_EVENTS) >= _MAX_EVENTS:
            _EVENTS.clear()
        _EVENTS[key] = written if written.count(stand_in.encode()) == 1 else None
    cached = _EVENTS[key]
    if cached is None:
        return webinar_event(uid=uid, **event)
    return cached.replace(stand_in.encode(), uid.encode())
