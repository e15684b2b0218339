"""What a letter can see of its reader: `contact` and `webinar` in templates.

Plain frozen values, built per email by `funnel.mail.compose` and read by the
renderer; `funnel.mail.hints` lists their fields for "did you mean". A field
added here is printed per reader: the renderer keeps no memo of results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class TemplateContact:
    email: str
    first_name: str | None = None
    last_name: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    #: she asked for discretion: templates can leave out what would reveal the subject
    discreet: bool = False


@dataclass(frozen=True)
class TemplateWebinar:
    """`webinar` in templates: the reader's own session of it."""

    id: str
    title: str
    #: the registrant's own link when her export row had one, else the webinar's
    join_url: str | None
    replay_url: str | None
    #: this session's start, in the reader's zone
    start: datetime | None
    #: the session's id: its local start as first written (`funnel.webinar.sessions`); None without one
    session: str | None = None
    #: in a `rescheduled` step: where the session was before the move, in the reader's zone
    previous_start: datetime | None = None
    #: whether the webinar is recorded (`webinars.<id>.recorded`): false, no replay is promised
    recorded: bool = True
    #: hours from the moment the email is written to the start; None when either is unknown
    hours_until: float | None = None
    #: the next date of the webinar, for "sorry we missed you" letters
    next_start: datetime | None = None
