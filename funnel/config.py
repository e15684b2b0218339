"""`sequences.yaml`: pydantic models, and loading that names the line of every mistake.

The YAML is read with ruamel.yaml so that every mapping and list keeps the
line it came from; pydantic validates the plain data, and each validation
error is turned back into `sequences.yaml:LINE: what is wrong and what to
write`. Cross-references (an `enroll` naming an unknown sequence, a missing
template, duplicate step ids, ...) are checked afterwards with the same
line lookup. All problems are reported together, not one per attempt.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from funnel.errors import ConfigError
from funnel.timeutil import Duration, parse_clock, parse_duration, read_rule, zone

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: step and sequence ids name files (`preview`), links and report rows: letters, digits, - and _
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: fields a source may map that mean something to funnel; any other field goes to contact.fields
KNOWN_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "webinar_start",
    "timezone",
    "discreet",
    "signed_up_at",
    "join_url",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Practice(_Model):
    """Who sends the mail; `postal_address` is required by CAN-SPAM."""

    name: str
    from_email: str
    from_name: str | None = None
    reply_to: str | None = None
    postal_address: str
    timezone: str = "UTC"
    base_url: str = "http://127.0.0.1:8025"
    discreet_from_name: str | None = None
    #: From address for discreet contacts (an address on a neutral domain); unset: `from_email`
    discreet_from_email: str | None = None
    #: Reply-To for discreet contacts; it wins over `inbound.reply_address` for them (see the README)
    discreet_reply_to: str | None = None
    #: postal address in a discreet contact's footer (a PO box or mailbox service); unset: `postal_address`
    discreet_postal_address: str | None = None
    discreet_subject: str = "A note for you"
    #: subject of the email that asks a form's poster to confirm (spec 9): no word of the subject matter
    confirm_subject: str = "Please confirm your request"
    #: title of the calendar event for discreet contacts (never the webinar's title)
    discreet_event_title: str = "Appointment"
    #: extension: named URLs the templates use, e.g. practice.links.consultation
    links: dict[str, str] = Field(default_factory=dict)
    # extension: optional facts only the practice can state. The letters show each one only when it
    # is filled in, and read well without it, so nothing is promised that the practice has not said.
    #: where the therapist may practice, one sentence shown in the invitations to book
    licensure: str | None = None
    #: how soon a consultation request is answered, e.g. "within two business days"
    response_time: str | None = None
    #: how the free consultation takes place, one sentence, e.g. "It takes about twenty minutes, by phone or video."
    consultation_details: str | None = None
    #: who reads replies, one sentence, e.g. "I read every reply myself."
    reply_note: str | None = None
    #: the practice's own facts for the letters, named freely: {{ practice.details.phone }},
    #: {{ practice.details.office_hours }}; a name the letters use but this does not hold is a `funnel check` error
    details: dict[str, str] = Field(default_factory=dict)
    #: a line under the signature, e.g. "Alex Example, LPC · Colorado license 0000" (never for discreet readers)
    signature_line: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone(value)
        return value.strip()

    @field_validator("postal_address")
    @classmethod
    def _address_present(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "postal_address is empty: write the practice's mailing address (CAN-SPAM requires it in every email)"
            )
        return value.strip()

    @field_validator("from_email", "reply_to", "discreet_from_email", "discreet_reply_to")
    @classmethod
    def _looks_like_address(cls, value: str | None) -> str | None:
        if value is not None and "@" not in value:
            raise ValueError(f"{value!r} is not an email address")
        return value

    @field_validator("discreet_postal_address")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


class SendWindow(_Model):
    """Local hours in which non-transactional mail may go out; may wrap past midnight."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


class Delivery(_Model):
    """How and when mail leaves."""

    transport: Literal["outbox", "sendgrid"] = "outbox"
    outbox_dir: str = "outbox"
    send_window: SendWindow = SendWindow(start=time(8), end=time(20))
    send_days: tuple[str, ...] = DAY_NAMES
    min_gap: Duration = Duration(minutes=20 * 60)
    max_late: Duration = Duration(days=2)
    concurrency: int = Field(default=8, ge=1, le=64)
    sandbox: bool = False
    #: extension: seconds before a SendGrid request is abandoned (the client has no default)
    request_timeout: float = Field(default=30.0, gt=0, le=300)
    #: extension: attempts per email within one run for 429/5xx/timeouts
    max_attempts: int = Field(default=4, ge=1, le=10)
    #: extension: a reminder (a step timed before the webinar, `webinar: -...`) due less than this
    #: after she signed up is skipped ("too soon after the confirmation"): someone who registers
    #: 65 minutes before does not get "Your place is saved" and "Starting in an hour" together
    reminder_gap: Duration = Duration(minutes=0)

    @field_validator("send_window", mode="before")
    @classmethod
    def _parse_window(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = value.split("-")
            if len(parts) != 2:
                raise ValueError(f'{value!r} is not a window: write two times like "08:00-20:00"')
            start, end = (parse_clock(p) for p in parts)
            if start == end:
                raise ValueError(f"{value!r} is an empty window: the two times must differ")
            return {"start": start, "end": end}
        return value

    @field_validator("send_days", mode="before")
    @classmethod
    def _parse_days(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not value:
            raise ValueError("send_days needs a list of days like [mon, tue, wed, thu, fri]")
        days: set[str] = set()
        for item in value:
            days.update(_day_or_range(item))
        return tuple(day for day in DAY_NAMES if day in days)

    @field_validator("min_gap", "max_late", "reminder_gap", mode="before")
    @classmethod
    def _parse_span(cls, value: Any) -> Any:
        return value if isinstance(value, Duration) else parse_duration(value)


_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(text: str, item: Any) -> str:
    """`mon`, `Monday`, `tues`, `THU` ... as the three-letter name; anything else is refused."""
    word = text.strip().lower()
    for short, full in zip(DAY_NAMES, _FULL_DAY_NAMES, strict=True):
        if len(word) >= 3 and full.startswith(word):
            return short
    raise ValueError(f"{item!r} is not a day: use mon, tue, wed, thu, fri, sat or sun, or a range like mon-fri")


def _day_or_range(item: Any) -> list[str]:
    """One day, or every day of a range such as `mon-fri` (`fri-mon` wraps over the weekend)."""
    text = str(item)
    if "-" not in text:
        return [_day(text, item)]
    parts = text.split("-")
    if len(parts) != 2:
        raise ValueError(f"{item!r} is not a range of days: write two days like mon-fri")
    first, last = (DAY_NAMES.index(_day(part, item)) for part in parts)
    count = (last - first) % 7 + 1
    return [DAY_NAMES[(first + offset) % 7] for offset in range(count)]


class Tracking(_Model):
    """Open and click tracking are off unless the practice asks for them."""

    opens: bool = False
    clicks: bool = False
    webhook_unsigned: bool = False


class Alerts(_Model):
    """Who hears about a run that went wrong (spec 10), and the heartbeat a monitor expects.

    `email` gets one plain-words email per new problem, at most one a day per
    problem (see `funnel.ops.alerts`); `heartbeat_url` is asked (GET) after every
    good run and `{heartbeat_url}/fail` after a bad one, the convention of
    healthchecks.io and its kin.
    """

    email: str | None = None
    heartbeat_url: str | None = None

    @field_validator("email")
    @classmethod
    def _alert_address(cls, value: str | None) -> str | None:
        if value is not None and "@" not in value:
            raise ValueError(f"{value!r} is not an email address: write the address that should hear of problems")
        return value.strip() if value else None

    @field_validator("heartbeat_url")
    @classmethod
    def _heartbeat(cls, value: str | None) -> str | None:
        if value is not None and not value.strip().startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not a web address: write the ping URL your monitor gave (https://...)")
        return value.strip().rstrip("/") if value else None


class Inbound(_Model):
    """Replies through SendGrid Inbound Parse (`POST /webhooks/inbound`).

    `reply_address` (an address at the hostname SendGrid receives mail for)
    becomes the Reply-To of every email; each reply is forwarded to
    `forward_to` (default: practice.reply_to, else practice.from_email).
    """

    forward_to: str | None = None
    reply_address: str | None = None

    @field_validator("forward_to", "reply_address")
    @classmethod
    def _looks_like_address(cls, value: str | None) -> str | None:
        if value is not None and "@" not in value:
            raise ValueError(f"{value!r} is not an email address")
        return value.strip() if value is not None else None


#: a session's local start as written in sequences.yaml (also its id: `funnel.webinar.sessions`)
_SESSION_TEXT = re.compile(r"^\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{1,2}):(\d{2})\s*$")
#: rule frequencies a webinar may repeat at (finer ones would make thousands of sessions a year)
_REPEAT_FREQS = ("DAILY", "WEEKLY", "MONTHLY", "YEARLY")


def parse_session_time(value: Any) -> datetime:
    """A session's local start, `YYYY-MM-DD HH:MM` (naive: it is read in the webinar's zone)."""
    if isinstance(value, datetime):  # YAML may hand a timestamp over as one
        return value.replace(tzinfo=None, second=0, microsecond=0)
    if isinstance(value, date):
        raise ValueError(f"{value.isoformat()!r} has no time of day: write it as {value.isoformat()} 18:30")
    match = _SESSION_TEXT.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a session time: write the local date and time as YYYY-MM-DD HH:MM")
    year, month, day, hour, minute = (int(g) for g in match.groups())
    try:
        return datetime(year, month, day, hour, minute)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a session time ({exc}): write YYYY-MM-DD HH:MM") from None


class WebinarSession(_Model):
    """One listed session: a local start, what it `was` when moved, whether it is `cancelled`."""

    start: datetime
    was: datetime | None = None
    cancelled: bool = False

    @field_validator("start", "was", mode="before")
    @classmethod
    def _local_time(cls, value: Any) -> Any:
        return None if value is None else parse_session_time(value)


class Webinar(_Model):
    """A webinar contacts register for; the start comes from its `sessions`/`repeat`, else from each signup.

    A live webinar is one moment for everyone: a start without an offset in an
    export is read in `timezone` (default: the practice's). An `evergreen`
    webinar is each registrant's own session at her local time instead.
    """

    title: str
    #: the calendar event's title for everyone (SUMMARY): quiet, never the full title (see `invitation`)
    event_title: str | None = None
    join_url: str | None = None
    replay_url: str | None = None
    timezone: str | None = None
    evergreen: bool = False
    #: length of the event in the calendar invitation (`calendar: true` steps)
    duration: Duration = Duration(minutes=60)
    #: local starts in `timezone` (see `funnel.webinar.sessions`): a text, or {start, was, cancelled}
    sessions: tuple[WebinarSession, ...] = ()
    #: an RFC 5545 RRULE (read by python-dateutil) giving sessions beyond the list, at `repeat_at`
    repeat: str | None = None
    repeat_at: time | None = None

    @field_validator("sessions", mode="before")
    @classmethod
    def _session_items(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [item if isinstance(item, dict) else {"start": item} for item in value]
        return value

    @field_validator("repeat")
    @classmethod
    def _readable_rule(cls, value: str | None) -> str | None:
        if value is None:
            return None
        read_rule(value, datetime(2000, 1, 1))  # raises ValueError saying what is wrong
        return value.strip()

    @field_validator("repeat_at", mode="before")
    @classmethod
    def _parse_repeat_at(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, time) else parse_clock(value)

    @model_validator(mode="after")
    def _rule_has_time(self) -> Webinar:
        if self.evergreen and (self.sessions or self.repeat):
            raise ValueError(
                "an evergreen webinar is each registrant's own time and has no sessions: "
                "remove `evergreen` or the sessions"
            )
        return self

    @property
    def has_sessions(self) -> bool:
        return bool(self.sessions or self.repeat)

    #: whether the webinar is recorded: false, the replay letter says sorry we missed you and
    #: points to the next date instead of a recording, and no letter promises a recording
    recorded: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        zone(value)
        return value.strip()

    @field_validator("duration", mode="before")
    @classmethod
    def _parse_length(cls, value: Any) -> Any:
        span = value if isinstance(value, Duration) else parse_duration(value)
        if span.approx <= timedelta(0):
            raise ValueError(f"{value!r} is not a length: write how long the webinar lasts, e.g. 60m or 2h")
        return span


class Source(_Model):
    """A place signups come from, and what happens to each row."""

    format: Literal["csv", "jsonl", "form", "zoom"]
    path: str | None = None
    columns: dict[str, str]
    where: dict[str, str] = Field(default_factory=dict)
    create: bool = True
    tags: tuple[str, ...] = ()
    enroll: str | None = None
    webinar: str | None = None
    thank_you_url: str | None = None
    #: form sources: a post waits for the mailbox owner to confirm it (double opt-in, `funnel.signups.consent`);
    #: false only where the website has already confirmed the address itself
    confirm: bool = True
    #: form sources: origins (scheme://host[:port]) a browser may post from; a post whose Origin
    #: or Referer names another site gets 403 (empty: any, as before)
    allowed_origins: tuple[str, ...] = ()
    #: csv sources: read only the rows of this section of a report (Zoom's "Attendee Details")
    section: str | None = None
    #: csv sources: `summary` takes the webinar start from a report's summary lines above its header
    session_from: Literal["summary"] | None = None
    #: how a date written with slashes or dots is read: month first (US, the default) or day first
    date_order: Literal["mdy", "dmy"] = "mdy"
    #: zoom sources (spec section 11): the webinar's id in Zoom, and the tags its participants get
    webinar_id: str | None = None
    attended_tags: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _zoom_columns(cls, value: Any) -> Any:
        # a zoom source reads Zoom's own fields: it maps no columns
        if isinstance(value, dict) and value.get("format") == "zoom" and "columns" not in value:
            return {**value, "columns": {"email": "email"}}
        return value

    @field_validator("webinar_id", mode="before")
    @classmethod
    def _zoom_id(cls, value: Any) -> Any:
        if value is None:
            return None
        text = str(value).replace(" ", "").strip()
        if not text.isdigit():
            raise ValueError(f'webinar_id {value!r} must be the webinar\'s number in Zoom, e.g. "81234567890"')
        return text

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _allowed(cls, value: Any) -> Any:
        return _origin_list(value, "allowed_origins")

    @field_validator("columns")
    @classmethod
    def _email_mapped(cls, value: dict[str, str]) -> dict[str, str]:
        if "email" not in value:
            raise ValueError("columns must map `email`: write email: <the header of the address column>")
        return value

    @field_validator("where", mode="before")
    @classmethod
    def _values_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): ("yes" if v is True else "no" if v is False else str(v)) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _path_for_files(self) -> Source:
        if self.format in ("csv", "jsonl") and not self.path:
            raise ValueError(f"a {self.format} source needs `path:` naming the file to read")
        if self.format == "form" and self.path:
            raise ValueError("a form source has no `path:`: its rows arrive through `funnel serve`")
        if self.format != "form" and self.allowed_origins:
            raise ValueError("allowed_origins is for form sources (format: form) only")
        if self.format == "form" and ({"signed_up_at", "join_url"} & set(self.columns)):
            raise ValueError(
                "signed_up_at and join_url are for exports (csv, jsonl): a form post is taken when it arrives, "
                "and its sender cannot choose the links in her letters"
            )
        if self.format != "csv" and (self.section or self.session_from):
            raise ValueError("section and session_from are for csv sources (format: csv) only")
        if self.format == "zoom":
            if self.path:
                raise ValueError("a zoom source has no `path:`: funnel reads Zoom's API (see docs/zoom.md)")
            if not self.webinar_id:
                raise ValueError('a zoom source needs `webinar_id:`, the webinar\'s number in Zoom, e.g. "81234567890"')
            if not self.webinar:
                raise ValueError("a zoom source needs `webinar:`, the id of the webinar under `webinars:`")
        elif self.webinar_id or self.attended_tags:
            raise ValueError("webinar_id and attended_tags are for zoom sources (format: zoom) only")
        return self


class Step(_Model):
    """One email of a sequence. `id` is its stable key across edits."""

    id: str
    wait: Duration | None = None
    webinar: Duration | None = None
    at: time | None = None
    transactional: bool = False
    subject: str
    discreet_subject: str | None = None
    preheader: str | None = None
    discreet_preheader: str | None = None
    template: str
    if_tags: tuple[str, ...] = ()
    unless_tags: tuple[str, ...] = ()
    #: attach the contact's webinar as an iCalendar event (invite.ics)
    calendar: bool = False
    #: extension: still goes when the sequence's goal is reached, like a transactional step, but
    #: keeps the send window and min_gap: what she signed up for (the recording) is never withheld
    #: because she asked for a consultation; the goal ends only the offers and the letters
    after_goal: bool = False
    #: a step that answers a change of her webinar session instead of a time (spec section 7):
    #: `rescheduled` goes once per move, `cancelled` once, to those whose confirmation went out
    on: Literal["rescheduled", "cancelled"] | None = None

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return _check_id("step id", value)

    @field_validator("wait", mode="before")
    @classmethod
    def _parse_wait(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, Duration) else parse_duration(value)

    @field_validator("webinar", mode="before")
    @classmethod
    def _parse_offset(cls, value: Any) -> Any:
        if value is None or isinstance(value, Duration):
            return value
        return parse_duration(value, signed=True)

    @field_validator("at", mode="before")
    @classmethod
    def _parse_at(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, time) else parse_clock(value)

    @field_validator("subject")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if "\n" in value.strip() or "\r" in value:
            raise ValueError("a subject must fit on one line: remove the line break")
        return value.strip()

    @model_validator(mode="after")
    def _one_timing(self) -> Step:
        if self.on is not None:
            if self.wait is not None or self.webinar is not None or self.at is not None:
                raise ValueError(
                    f"step {self.id!r} has `on: {self.on}` and a time (`wait:`, `webinar:` or `at:`): "
                    "remove the time (it goes when the session changes)"
                )
            return self
        if self.wait is not None and self.webinar is not None:
            raise ValueError(
                f"step {self.id!r} has both `wait:` and `webinar:`: keep one "
                "(wait counts from the previous step, webinar from the webinar start)"
            )
        if self.wait is None and self.webinar is None:
            raise ValueError(f"step {self.id!r} needs `wait:` (e.g. wait: 0m) or `webinar:` (e.g. webinar: -1d)")
        return self


def _check_id(kind: str, value: str) -> str:
    """Refuse an id with characters unsafe in file names and URLs, suggesting a safe one."""
    if SAFE_ID.match(value):
        return value
    suggestion = re.sub(r"[^A-Za-z0-9_-]+", "-", value).strip("-_")[:64] or "welcome"
    raise ValueError(
        f"{kind} {value!r} may hold only letters, digits, - and _ (at most 64; it names files and links): "
        f"write e.g. {suggestion!r}"
    )


class Sequence(_Model):
    """An ordered series of emails."""

    name: str | None = None
    exit_on_tags: tuple[str, ...] = ()
    next: str | None = None
    steps: tuple[Step, ...] = Field(min_length=1)

    def step(self, step_id: str) -> Step | None:
        return next((s for s in self.steps if s.id == step_id), None)

    @property
    def timed_steps(self) -> tuple[Step, ...]:
        """The steps the schedule times (all but the `on:` ones, which answer a session's change)."""
        return tuple(s for s in self.steps if s.on is None)

    def answer(self, change: str) -> Step | None:
        """The step with `on: <change>` (rescheduled, cancelled), or None."""
        return next((s for s in self.steps if s.on == change), None)

    @property
    def confirmation(self) -> Step | None:
        """The sequence's first timed step: whoever has had it is told of a move or a cancellation."""
        timed = self.timed_steps
        return timed[0] if timed else None

    @model_validator(mode="after")
    def _answers(self) -> Sequence:
        for change in ("rescheduled", "cancelled"):
            found = [s.id for s in self.steps if s.on == change]
            if len(found) > 1:
                raise ValueError(f"steps {', '.join(map(repr, found))} all have `on: {change}`: keep one")
        if not self.timed_steps:
            raise ValueError("a sequence needs at least one step with a time (`wait:` or `webinar:`)")
        return self


class Serve(_Model):
    """`funnel serve`: which websites may post forms from script, how often one visitor may post,
    and which reverse proxies are believed about who the visitor is (see funnel.web.client)."""

    #: origins (scheme://host[:port]) allowed to post forms with fetch/XHR (CORS); plain HTML forms need none
    cors_origins: tuple[str, ...] = ()
    #: form posts one IP address may make at once, and how many more per minute after that
    form_burst: int = Field(default=10, ge=1, le=10_000)
    form_per_minute: float = Field(default=2.0, gt=0, le=10_000)
    #: peers whose X-Forwarded-For / Forwarded headers are believed (IPs or CIDR blocks): the
    #: reverse proxy. Default: loopback, where the README's proxy runs; [] believes no header.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ValueError("cors_origins needs a list like [https://www.example-counseling.test]")
        origins = []
        for item in value:
            origin = str(item).strip().rstrip("/")
            scheme, _, rest = origin.partition("://")
            if scheme not in ("http", "https") or not rest or "/" in rest:
                raise ValueError(
                    f"{item!r} is not an origin: write scheme and host only, like https://www.example.test"
                )
            origins.append(origin.lower())
        return tuple(origins)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> Any:
        """Each entry an address or a network (10.0.0.0/8, 2001:db8::/32), kept in its normal form."""
        import ipaddress

        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ValueError("trusted_proxies needs a list of addresses like [127.0.0.1, '::1']")
        networks = []
        for item in value:
            try:
                networks.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network: write the reverse proxy's address, "
                    "like 127.0.0.1, '::1' or 10.0.0.0/8"
                ) from None
        return tuple(networks)


def _origin_list(value: Any, key: str) -> Any:
    """A list of origins (scheme://host[:port]), lower-cased, without a trailing slash."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"{key} needs a list like [https://www.example-counseling.test]")
    origins = []
    for item in value:
        origin = str(item).strip().rstrip("/")
        scheme, _, rest = origin.partition("://")
        if scheme not in ("http", "https") or not rest or "/" in rest:
            raise ValueError(f"{item!r} is not an origin: write scheme and host only, like https://www.example.test")
        origins.append(origin.lower())
    return tuple(origins)


class Config(_Model):
    """The whole of sequences.yaml, plus where it was read from."""

    practice: Practice
    delivery: Delivery = Delivery()
    tracking: Tracking = Tracking()
    inbound: Inbound = Inbound()
    alerts: Alerts = Alerts()
    webinars: dict[str, Webinar] = Field(default_factory=dict)
    sources: dict[str, Source] = Field(default_factory=dict)
    sequences: dict[str, Sequence] = Field(default_factory=dict)
    templates_dir: str = "email_templates"
    serve: Serve = Serve()

    # set by `load_config`, not by the YAML
    path: Path = Field(default=Path("sequences.yaml"), exclude=True)
    fingerprint: str = Field(default="", exclude=True)
    #: line of each key and list item of the YAML, by path (for errors found later, e.g. in subjects)
    source_lines: dict[str, int] = Field(default_factory=dict, exclude=True)

    def line_of(self, *path: Any) -> int | None:
        """The YAML line of `path` (e.g. "sequences", "consultation", "steps", 0, "subject")."""
        return self.source_lines.get("/".join(str(p) for p in path))

    @property
    def folder(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        """A path from the YAML, relative to the YAML file's own folder."""
        candidate = Path(relative).expanduser()
        return candidate if candidate.is_absolute() else self.folder / candidate

    @property
    def templates_path(self) -> Path:
        return self.resolve(self.templates_dir)

    @property
    def forward_to(self) -> str:
        """Where replies are forwarded: inbound.forward_to, else practice.reply_to, else practice.from_email."""
        return self.inbound.forward_to or self.practice.reply_to or self.practice.from_email

    def start_zone(self, source: Source) -> ZoneInfo | None:
        """Where a webinar start without an offset in `source` is read.

        The webinar's zone (default: the practice's), so that a live webinar is
        one moment for everyone; None for an evergreen webinar, whose start is
        each registrant's own local time.
        """
        webinar = self.webinars.get(source.webinar or "")
        if webinar is not None and webinar.evergreen:
            return None
        return zone((webinar.timezone if webinar else None) or self.practice.timezone)

    def webinar_zone(self, webinar_id: str | None) -> ZoneInfo:
        """The zone a webinar's sessions are written in: its own, else the practice's."""
        webinar = self.webinars.get(webinar_id or "")
        return zone((webinar.timezone if webinar else None) or self.practice.timezone)

    def webinar_sequences(self) -> set[str]:
        """Sequences whose contacts have a webinar: enrolled by a webinar source, or reached by `next` from one."""
        found = {s.enroll for s in self.sources.values() if s.webinar and s.enroll in self.sequences}
        todo = list(found)
        while todo:
            following = self.sequences[todo.pop()].next
            if following and following in self.sequences and following not in found:
                found.add(following)
                todo.append(following)
        return {sid for sid in found if sid is not None}

    def find_step(self, sequence_id: str, step_id: str) -> tuple[Sequence, Step]:
        """A sequence and one of its steps, named on the command line (ConfigError when unknown)."""
        sequence = self.sequences.get(sequence_id)
        if sequence is None:
            known = ", ".join(self.sequences)
            raise ConfigError(f"no sequence {sequence_id!r} in {self.path.name}: known: {known}")
        step = sequence.step(step_id)
        if step is None:
            known = ", ".join(s.id for s in sequence.steps)
            raise ConfigError(f"sequence {sequence_id!r} has no step {step_id!r}: known: {known}")
        return sequence, step

    def timing_snapshot(self) -> dict[str, Any]:
        """What the schedule depends on, as JSON-able data (kept per run for `plan --changes`)."""
        return {
            sid: [
                {
                    "id": s.id,
                    "wait": str(s.wait) if s.wait is not None else None,
                    "webinar": str(s.webinar) if s.webinar is not None else None,
                    "at": s.at.strftime("%H:%M") if s.at else None,
                    "transactional": s.transactional,
                    # not timing: lets `funnel check` tell a renamed step (same template, new id)
                    "template": s.template,
                }
                for s in seq.timed_steps  # an `on:` step has no timing
            ]
            for sid, seq in self.sequences.items()
        }


# --------------------------------------------------------------------------- loading


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """`--config`, else FUNNEL_CONFIG, else sequences.yaml in the current folder."""
    chosen = explicit or os.environ.get("FUNNEL_CONFIG") or "sequences.yaml"
    return Path(chosen).expanduser().resolve()


def load_config(explicit: str | os.PathLike[str] | None = None, *, check_files: bool = True) -> Config:
    """Read and validate sequences.yaml; raise ConfigError listing every problem with its line."""
    path = config_path(explicit)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(
            f"{path.name}: not found in {path.parent}: run funnel in the folder that holds "
            "sequences.yaml, or pass --config PATH"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}): save it as UTF-8 text") from None
    lines = _LineMap()
    data = _parse_yaml(text, path, lines)
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # pydantic drops invalid items before checking min_length, so a list whose only
        # item is wrong also reports "too short": the item's own error says it all
        inner = [tuple(err["loc"]) for err in errors]
        errors = [e for e in errors if not (e["type"] == "too_short" and _has_inner(e, inner))]
        problems.extend(f"{path.name}:{lines.line_for(err['loc'])}: {_describe(err)}" for err in errors)
    if config is not None:
        config = config.model_copy(
            update={
                "path": path,
                "fingerprint": hashlib.sha256(text.encode()).hexdigest(),
                "source_lines": lines.flat(),
            }
        )
        problems.extend(f"{path.name}:{line}: {msg}" for line, msg in _cross_check(config, lines, check_files))
    if problems:
        raise ConfigError(problems[0], problems)
    assert config is not None
    base_url = os.environ.get("FUNNEL_BASE_URL", "").strip()
    if base_url:  # the environment wins over the YAML (where `funnel serve` is reachable)
        practice = config.practice.model_copy(update={"base_url": base_url.rstrip("/")})
        config = config.model_copy(update={"practice": practice})
    return config


def environment_problems(config: Config) -> list[str]:
    """Settings in the file that contradict the environment, each as `file:line: message`.

    `funnel check` reports them (exit 1); other commands go on, since the
    code already does the safe thing (with a verification key set the
    webhook verifies every post, `webhook_unsigned` or not), but the file
    should not say otherwise.
    """
    problems = []
    if config.tracking.webhook_unsigned and os.environ.get("FUNNEL_SENDGRID_WEBHOOK_KEY", "").strip():
        line = config.line_of("tracking", "webhook_unsigned") or config.line_of("tracking") or 1
        problems.append(
            f"{config.path.name}:{line}: tracking.webhook_unsigned is true while FUNNEL_SENDGRID_WEBHOOK_KEY "
            "is set: the webhook verifies every post with the key and refuses unsigned ones, so remove the line "
            "(it is only for a SendGrid account that does not sign its webhook)"
        )
    return problems


def _has_inner(err: Any, locs: list[tuple[Any, ...]]) -> bool:
    """Whether another error lies inside `err`'s location (e.g. an item of that list)."""
    loc = tuple(err["loc"])
    return any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs)


#: YAML text -> (its data, the line of each key): see `_parse_yaml`
_PARSED: dict[str, tuple[Any, dict[tuple[Any, ...], int]]] = {}
#: how many texts `_PARSED` keeps (a few versions of one file; past it, it starts afresh)
_PARSED_MAX = 8


def _parse_yaml(text: str, path: Path, lines: _LineMap) -> Any:
    """The data of `text` as plain dicts and lists, with the line of every key filled into `lines`.

    ruamel's round-trip parser (the one that knows lines) is pure Python: about
    a tenth of a second for the shipped file, half of what `funnel run` costs
    when nothing is due. A process that loads the same text again (`funnel
    serve`, a scheduler or test calling the CLI in-process) gets a copy of the
    first result: the outcome depends on the text alone. Errors are not kept.
    """
    known = _PARSED.get(text)
    if known is None:
        fresh = _LineMap()
        data = _parse_yaml_text(text, path, fresh)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        known = _PARSED[text] = (data, fresh.lines())
    data, found = known
    lines.update(found)
    return copy.deepcopy(data)


def _parse_yaml_text(text: str, path: Path, lines: _LineMap) -> Any:
    yaml = YAML(typ="rt")
    try:
        node = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = (exc.problem or "this is not valid YAML").strip()
        raise ConfigError(
            f"{path.name}:{line}: {what}: check the indentation and quoting on this line "
            "(text with a colon needs quotes)"
        ) from None
    if not isinstance(node, dict):
        raise ConfigError(f"{path.name}:1: the file must be a mapping starting with `practice:`")
    return lines.record(node, ())


class _LineMap:
    """Remembers the line of every key and list item, by its path in the data."""

    def __init__(self) -> None:
        self._lines: dict[tuple[Any, ...], int] = {}

    def record(self, node: Any, where: tuple[Any, ...]) -> Any:
        if isinstance(node, CommentedMap):
            self._lines.setdefault(where, node.lc.line + 1)
            out = {}
            for key, value in node.items():
                key_line = node.lc.key(key)[0] + 1
                self._lines[(*where, str(key))] = key_line
                out[str(key)] = self.record(value, (*where, str(key)))
            return out
        if isinstance(node, CommentedSeq):
            self._lines.setdefault(where, node.lc.line + 1)
            items = []
            for index, value in enumerate(node):
                self._lines[(*where, index)] = node.lc.item(index)[0] + 1
                items.append(self.record(value, (*where, index)))
            return items
        return node

    def lines(self) -> dict[tuple[Any, ...], int]:
        """Every recorded (path -> line), a copy."""
        return dict(self._lines)

    def update(self, lines: dict[tuple[Any, ...], int]) -> None:
        self._lines.update(lines)

    def flat(self) -> dict[str, int]:
        return {"/".join(str(p) for p in path): line for path, line in self._lines.items() if path}

    def line_for(self, loc: tuple[Any, ...]) -> int:
        """The line of `loc`, or of its nearest ancestor that has one."""
        path = tuple(loc)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return self._lines.get((), 1)


def _describe(err: Any) -> str:
    """One sentence for one pydantic error, with what to write instead."""
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        key = loc[-1]
        allowed = _allowed_keys(err["loc"][:-1])
        hint = _close_match(key, allowed)
        fix = f"did you mean `{hint[0]}`?" if hint else f"allowed here: {', '.join(sorted(allowed))}"
        return f"unknown key `{key}`: {fix}"
    if kind == "missing":
        parent = ".".join(loc[:-1]) or "the top level"
        extra = " (CAN-SPAM requires a postal address in every email)" if loc[-1] == "postal_address" else ""
        return f"`{loc[-1]}` is missing under {parent}: add it{extra}"
    if kind == "literal_error":
        return f"{where}: {err['msg'].replace('Input should be', 'should be')}, not {err['input']!r}"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


_MODELS_BY_KEY: dict[str, type[BaseModel]] = {
    "practice": Practice,
    "delivery": Delivery,
    "tracking": Tracking,
    "inbound": Inbound,
    "webinars": Webinar,
    "sessions": WebinarSession,
    "sources": Source,
    "sequences": Sequence,
    "steps": Step,
}


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at `loc` (for 'did you mean')."""
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, str) and part in _MODELS_BY_KEY:
            model = _MODELS_BY_KEY[part]
    return [name for name, field in model.model_fields.items() if not field.exclude]


def _cross_check(config: Config, lines: _LineMap, check_files: bool) -> Iterator[tuple[int, str]]:
    """References between sections, duplicate ids and template files."""
    sequences = sorted(config.sequences)
    for name, source in config.sources.items():
        base = ("sources", name)
        if source.enroll and source.enroll not in config.sequences:
            yield (
                lines.line_for((*base, "enroll")),
                _unknown("sequence", source.enroll, sequences, f"sources.{name}.enroll"),
            )
        if source.webinar and source.webinar not in config.webinars:
            yield (
                lines.line_for((*base, "webinar")),
                _unknown("webinar", source.webinar, sorted(config.webinars), f"sources.{name}.webinar"),
            )
        webinar = config.webinars.get(source.webinar or "")
        # a source that enrolls needs a date for each registrant; attendance (no enroll) does not
        if (
            webinar is not None
            and source.enroll
            and "webinar_start" not in source.columns
            and source.session_from is None
            and not webinar.has_sessions
            and source.format != "zoom"  # Zoom gives each registrant her occurrence's start
        ):
            yield (
                lines.line_for((*base, "columns")),
                (
                    f"sources.{name} enrolls people but maps no `webinar_start` column and "
                    f"webinars.{source.webinar} lists no sessions, so its registrants would have no date: "
                    "add webinar_start: <the header of the start time column>, "
                    f"list the dates under webinars.{source.webinar}.sessions, "
                    "or set session_from: summary for a report whose summary names the start"
                ),
            )
    for wid, webinar in config.webinars.items():
        if webinar.repeat and webinar.repeat_at is None:
            yield (
                lines.line_for(("webinars", wid, "repeat")),
                f'webinars.{wid}: `repeat` needs `repeat_at`, the local time of each session, e.g. repeat_at: "18:30"',
            )
        if webinar.repeat_at is not None and not webinar.repeat:
            yield (
                lines.line_for(("webinars", wid, "repeat_at")),
                f"webinars.{wid}: `repeat_at` needs `repeat`, the rule of the dates: add it or remove repeat_at",
            )
        for index, problem in listing_problems(webinar):
            yield lines.line_for(("webinars", wid, "sessions", index)), f"webinars.{wid}.sessions: {problem}"
    for sid, seq in config.sequences.items():
        base = ("sequences", sid)
        try:
            _check_id("sequence id", sid)
        except ValueError as exc:
            yield lines.line_for(base), f"sequences.{sid}: {exc}"
        if seq.next and seq.next not in config.sequences:
            yield lines.line_for((*base, "next")), _unknown("sequence", seq.next, sequences, f"sequences.{sid}.next")
        if seq.next == sid:
            yield lines.line_for((*base, "next")), f"sequences.{sid}.next names the sequence itself: remove it"
        seen: dict[str, int] = {}
        for index, step in enumerate(seq.steps):
            step_line = lines.line_for((*base, "steps", index, "id"))
            if step.id in seen:
                yield (
                    step_line,
                    (
                        f"step id {step.id!r} is used twice in sequences.{sid} (first on line {seen[step.id]}): "
                        "give each step its own id"
                    ),
                )
            seen.setdefault(step.id, step_line)
            if step.calendar and sid not in config.webinar_sequences():
                yield (
                    lines.line_for((*base, "steps", index, "calendar")),
                    (
                        f"step {step.id!r} in sequences.{sid} has `calendar: true`, but no webinar source enrolls "
                        "into this sequence, so its contacts have no webinar to put in a calendar: remove the line"
                    ),
                )
            if check_files and not _is_file(config.templates_path / step.template):
                yield (
                    lines.line_for((*base, "steps", index, "template")),
                    (f"template {step.template!r} not found in {config.templates_dir}/: create it or fix the path"),
                )
    reply_address = (config.inbound.reply_address or "").lower()
    if reply_address and config.forward_to.lower() == reply_address:
        where = "forward_to" if config.inbound.forward_to else "reply_address"
        yield (
            lines.line_for(("inbound", where)),
            (
                f"inbound.{where}: replies would be forwarded to the reply address itself (a mail loop): "
                "set inbound.forward_to to the therapist's own inbox"
            ),
        )
    if check_files and not (config.templates_path / "layout.html").is_file():
        yield (
            lines.line_for(("templates_dir",)),
            (f"{config.templates_dir}/layout.html not found: every email is rendered inside it"),
        )


def _is_file(path: Path) -> bool:
    """Is there a file here? A name the OS refuses (too long, a NUL in it) is no file, not a traceback."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _unknown(kind: str, name: str, known: list[str], where: str) -> str:
    hint = _close_match(name, known)
    fix = f"did you mean {hint[0]!r}?" if hint else f"known: {', '.join(known) or 'none'}"
    return f"{where}: unknown {kind} {name!r}: {fix}"


def _close_match(word: str, known: Any) -> list[str]:
    """The known name closest to a misspelt one (difflib loads only when a name is wrong)."""
    import difflib

    return difflib.get_close_matches(word, known, n=1)


def session_id(local: datetime) -> str:
    """The id of a session whose local start (naive, in the webinar's zone) is `local`."""
    return local.strftime("%Y-%m-%d %H:%M")


def listing_problems(webinar: Webinar) -> list[tuple[int, str]]:
    """Mistakes in `sessions:`, each with the index of the item: two at one time, a `was` that is listed."""
    problems: list[tuple[int, str]] = []
    starts: dict[datetime, int] = {}
    for index, item in enumerate(webinar.sessions):
        if item.start in starts:
            problems.append(
                (
                    index,
                    f"two sessions start at {session_id(item.start)} (items {starts[item.start] + 1} and "
                    f"{index + 1}): remove one, or move one with start: and was:",
                )
            )
        starts.setdefault(item.start, index)
    for index, item in enumerate(webinar.sessions):
        if item.was is None:
            continue
        if item.was == item.start:
            problems.append((index, f"session {session_id(item.start)} was moved to its own time: remove `was:`"))
        elif item.was in starts:
            problems.append(
                (
                    index,
                    f"`was: {session_id(item.was)}` is also listed as a session of its own (item "
                    f"{starts[item.was] + 1}): a moved session is listed once, at its new time, with was: "
                    "its old time; remove the old line",
                )
            )
    seen_was: dict[datetime, int] = {}
    for index, item in enumerate(webinar.sessions):
        if item.was is not None:
            if item.was in seen_was:
                problems.append(
                    (index, f"two sessions say `was: {session_id(item.was)}`: a session can only move to one time")
                )
            seen_was.setdefault(item.was, index)
    return problems
