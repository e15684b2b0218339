"""Database tables (SQLModel). Internals, free to change; the spec fixes only behaviour.

A contact's identity is `email_hash`, so `forget` can erase every personal field and
still stop mail to the address. `step_runs` holds one row per (enrollment, step) a run
acted on; its unique constraint makes "sent at most once" a database fact, and steps
with no row are pending. `enrollments.next_due_at` is the earliest moment anything may
happen to an enrollment, queried through an index, so work grows with what is due.
All timestamps are stored as naive UTC and read back as aware UTC.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Table, TypeDecorator, UniqueConstraint, true
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as naive UTC; returns aware UTC (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def new_token_key() -> str:
    """A contact's token key (see `funnel.mail.unsubscribe`): 16 random bytes as 32 hex digits, never given twice."""
    return secrets.token_hex(16)


class Contact(SQLModel, table=True):
    __tablename__ = "contacts"

    id: int | None = Field(default=None, primary_key=True)
    email_hash: str = Field(unique=True, index=True)
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    timezone: str | None = None
    discreet: bool = False
    fields: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    #: consent record: which source first brought them in (GDPR: who, when, how)
    first_source: str | None = None
    unsubscribed_at: datetime | None = _when()
    unsubscribed_via: str | None = None
    #: the email whose link they left from (a step run id, from the unsubscribe token), for the report
    unsubscribed_step_run_id: int | None = None
    #: why no mail goes to them besides an unsubscribe: bounce, spamreport, invalid, erased, ...
    suppressed_reason: str | None = None
    suppressed_at: datetime | None = _when()
    #: when the last non-transactional email went to them (for delivery.min_gap)
    last_marketing_at: datetime | None = _when()
    erased_at: datetime | None = _when()
    #: what her unsubscribe links name instead of the row id (which a restored backup gives again).
    #: Given with the row (here, and by the import's bulk insert); nullable only because SQLite
    #: cannot make an existing column NOT NULL without rebuilding the table (migration 0007)
    token_key: str | None = Field(default_factory=new_token_key, unique=True, index=True)

    @property
    def suppression(self) -> str | None:
        """Why nothing may be sent to this contact, or None."""
        if self.erased_at is not None:
            return "erased"
        if self.unsubscribed_at is not None:
            return "unsubscribed"
        return self.suppressed_reason


class SubscriptionChange(SQLModel, table=True):
    """One opt-out or opt-in, kept for good (append-only): the contact row shows only the state now.

    change: `unsubscribed` or `resubscribed`; via: how (`link`, `one-click`,
    `by hand`, `form`, `SendGrid unsubscribe`, ...); step_run_id: the email
    whose link was used. Holds nothing personal, so `forget` keeps it: it is
    the record that she asked to stop.
    """

    __tablename__ = "subscription_changes"

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    changed_at: datetime = Field(sa_type=UTCDateTime)
    change: str
    via: str | None = None
    step_run_id: int | None = None


class Tag(SQLModel, table=True):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("contact_id", "tag"),)

    id: int | None = Field(default=None, primary_key=True)
    #: no index of its own: the unique constraint's index starts with it (migration 0005)
    contact_id: int = Field(foreign_key="contacts.id")
    tag: str
    source: str | None = None
    added_at: datetime = Field(sa_type=UTCDateTime)


class Consent(SQLModel, table=True):
    """Evidence of one opt-in through a form: when, which form, from which address and browser.

    Both halves of a confirmed (double) opt-in: the post (`given_at`, `ip`,
    `user_agent`) and the click on the emailed link that confirmed it
    (`confirmed_at`, `confirm_ip`, `confirm_user_agent`; empty for a source
    with `confirm: false`). Kept per confirmed post (a later one is fresh
    consent, e.g. after an unsubscribe); shown by `contacts export`, deleted
    by `contacts forget`.
    """

    __tablename__ = "consents"

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    source: str
    given_at: datetime = Field(sa_type=UTCDateTime)
    ip: str | None = None
    user_agent: str | None = None
    confirmed_at: datetime | None = _when()
    confirm_ip: str | None = None
    confirm_user_agent: str | None = None


class PendingSignup(SQLModel, table=True):
    """A form post waiting for the mailbox owner to confirm it (double opt-in, `funnel.signups.consent`).

    One row per post. The link's token is random and only its sha256 is kept,
    so the table alone cannot confirm anything. `values` holds what was posted
    (applied only on confirmation, then emptied); `discreet` is raised at once
    by any later post asking for discretion and never lowered by a stranger.
    mail_status: new (stored, confirmation not yet taken), sending (handed to
    the transport: at most once, never retried blindly), sent, failed,
    expired (past `expires_at`, 7 days: what was posted is deleted; the bare
    row goes a month later). `contacts forget` deletes them at once.
    """

    __tablename__ = "pending_signups"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True)
    email_hash: str = Field(index=True)
    source: str
    values: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    discreet: bool = False
    posted_at: datetime = Field(sa_type=UTCDateTime)
    ip: str | None = None
    user_agent: str | None = None
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    mail_status: str = "new"
    confirmation_sent_at: datetime | None = _when()
    mail_error: str | None = None
    confirmed_at: datetime | None = _when()


class Enrollment(SQLModel, table=True):
    __tablename__ = "enrollments"
    # one enrollment per contact, sequence and webinar session, ever: signing up
    # again after finishing does not start the sequence over, but a later session
    # of a webinar is an enrollment of its own (spec section 7). `session` is ''
    # for every other enrollment (not NULL: both databases treat NULLs as distinct
    # in a unique constraint, which would let a sequence be entered twice)
    __table_args__ = (
        UniqueConstraint("contact_id", "sequence", "session", name="uq_enrollments_contact_sequence_session"),
        Index("ix_enrollments_due", "status", "next_due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    #: no index of its own: the unique constraint's index starts with it (migration 0005)
    contact_id: int = Field(foreign_key="contacts.id")
    sequence: str
    status: str = "active"  # active | paused | finished | exited
    enrolled_at: datetime = Field(sa_type=UTCDateTime)
    source: str | None = None
    webinar: str | None = None
    webinar_start: datetime | None = _when()
    #: the webinar session's id (`funnel.webinar.sessions`: its local start as first written); '' when none
    session: str = Field(default="", sa_column_kwargs={"server_default": ""})
    #: her own join link from the export (Zoom gives each registrant one); None: the webinar's
    join_url: str | None = None
    next_due_at: datetime | None = _when()
    ended_at: datetime | None = _when()
    end_reason: str | None = None
    #: status `paused` (she wrote back): when, and why; `funnel contacts resume` clears them
    paused_at: datetime | None = _when()
    pause_reason: str | None = None
    #: when funnel stored it; `enrolled_at` is earlier when the export said she signed up before
    #: (`signed_up_at`). None for enrollments stored before migration 0010: the same as enrolled_at
    imported_at: datetime | None = _when()
    #: where her session started before its latest move (`was:`); None: never moved (migration 0011)
    previous_start: datetime | None = _when()
    #: how many moves of her session a run applied: her calendar event's SEQUENCE counts them
    moves: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class EnrollmentTag(SQLModel, table=True):
    """A tag that belongs to one webinar session, kept on the enrollment for it (spec section 7).

    An attendance source (`webinar:` set, `create: false`) tags the contact
    (for every other sequence) and, here, the enrollment of the session the
    row belongs to: within that webinar's sequence, its `if_tags` and
    `unless_tags` on such tags read this table only, so February's replay
    or thank-you depends on February alone (`funnel.webinar.sessions.tags_in_session`).
    """

    __tablename__ = "enrollment_tags"
    __table_args__ = (UniqueConstraint("enrollment_id", "tag"),)

    id: int | None = Field(default=None, primary_key=True)
    enrollment_id: int = Field(foreign_key="enrollments.id")
    tag: str
    source: str | None = None
    added_at: datetime = Field(sa_type=UTCDateTime)


class StepRun(SQLModel, table=True):
    """What happened to one step of one enrollment.

    status: claimed (taken by a run, not yet handed to the transport),
    sending (handed over, request under way), sent, skipped, failed,
    unknown (a run died mid-request: never re-sent blindly). See funnel.store.ledger.
    """

    __tablename__ = "step_runs"
    __table_args__ = (
        UniqueConstraint("enrollment_id", "step_id"),
        Index("ix_step_runs_status", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    #: no index of its own: the unique constraint's index starts with it (migration 0005)
    enrollment_id: int = Field(foreign_key="enrollments.id")
    sequence: str
    step_id: str
    status: str
    reason: str | None = None
    retryable: bool = False
    transactional: bool = False
    send_id: str | None = Field(default=None, unique=True)
    run_id: int | None = None
    attempts: int = 0
    due_at: datetime | None = _when()
    decided_at: datetime = Field(sa_type=UTCDateTime)
    sent_at: datetime | None = _when()
    message_id: str | None = None
    transport: str | None = None


class KnownStep(SQLModel, table=True):
    """When a step id first appeared in sequences.yaml, as seen by a run.

    A step added later reaches only those who have not yet passed its due time.
    """

    __tablename__ = "known_steps"

    sequence: str = Field(primary_key=True)
    step_id: str = Field(primary_key=True)
    first_seen_at: datetime = Field(sa_type=UTCDateTime)


class SourceFile(SQLModel, table=True):
    """What was last read from a file source, so an unchanged file costs one hash."""

    __tablename__ = "source_files"

    source: str = Field(primary_key=True)
    path: str
    size: int
    sha256: str
    lines: int
    read_at: datetime = Field(sa_type=UTCDateTime)


class PendingTag(SQLModel, table=True):
    """A tag for an address that is not a contact yet, applied when she appears.

    The attendance export can arrive before the registration export: its rows
    (from a `create: false` source) are kept here by address hash only, with
    where they came from, and turned into tags by whichever import, run or
    form post first brings the person in. Kept at most `PENDING_DAYS` days.
    """

    __tablename__ = "pending_tags"

    email_hash: str = Field(primary_key=True)
    tag: str = Field(primary_key=True)
    source: str
    #: `file:line` of the row that asked for it
    origin: str | None = None
    received_at: datetime = Field(sa_type=UTCDateTime, index=True)


class Run(SQLModel, table=True):
    """One `funnel run`: who ran it, when, with which config, and what it did."""

    __tablename__ = "runs"

    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = Field(sa_type=UTCDateTime)
    finished_at: datetime | None = _when()
    clock: datetime = Field(sa_type=UTCDateTime)  # the run's `now` (maybe simulated)
    host: str
    pid: int
    config_fingerprint: str = ""
    config_timing: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    summary: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class Setting(SQLModel, table=True):
    """Small key/value state: the generated secret key, the config last used."""

    __tablename__ = "settings"

    key: str = Field(primary_key=True)
    value: str


class Event(SQLModel, table=True):
    """One event SendGrid posted to the webhook, stored once (`sg_event_id` is unique).

    `kind` is our own name (funnel.sendgrid.webhook.EventKind). The send is found
    through the custom args the transport sent (`send_id` -> step_runs), the
    contact through the step run or, failing that, the address hash. `raw`
    is the event as it came; `forget` blanks its personal fields (address,
    IP, user agent, URL, server reason).
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_kind_time", "kind", "occurred_at"),)

    id: int | None = Field(default=None, primary_key=True)
    sg_event_id: str = Field(unique=True)
    kind: str
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    contact_id: int | None = Field(default=None, foreign_key="contacts.id", index=True)
    #: no foreign key: a step run never sent may be deleted (given back), an event must not block that
    step_run_id: int | None = Field(default=None, index=True)
    send_id: str | None = None
    sequence: str | None = None
    step_id: str | None = None
    email_hash: str | None = Field(default=None, index=True)
    reason: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class InboundMessage(SQLModel, table=True):
    """A reply that came in through SendGrid Inbound Parse, stored before it is forwarded.

    `message_key` is `post:` and a digest of the whole post (every field and
    file; rows stored before issue 16 hold `mid:` and the Message-ID), unique,
    so a POST that SendGrid retries is recognised and forwarded only once,
    and two replies that share words or a Message-ID are both kept.
    `content` holds what the forward needs (sender, subject, text, html) and is
    emptied once the forward has gone out: the therapist's inbox keeps the
    words, the database only that a reply came and when.
    status: stored | forwarded | failed (the forward did not go out; SendGrid's retry tries again)
    `verified` keeps, after the words are gone, whether the reply could have
    paused her (a forged From: is forwarded, marked, and pauses nothing).
    """

    __tablename__ = "inbound_messages"

    id: int | None = Field(default=None, primary_key=True)
    message_key: str = Field(unique=True)
    contact_id: int | None = Field(default=None, foreign_key="contacts.id", index=True)
    from_hash: str | None = Field(default=None, index=True)
    received_at: datetime = Field(sa_type=UTCDateTime)
    status: str = "stored"
    auto_reply: bool = False
    #: SendGrid's SPF or DKIM check passed for the sender's own domain; only such a reply pauses anyone
    verified: bool = Field(default=True, sa_column_kwargs={"server_default": true()})
    paused: int = 0
    forwarded_at: datetime | None = _when()
    forward_error: str | None = None
    content: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


def funnel_tables() -> list[Table]:
    """funnel's own tables, parents before children (so foreign keys hold in that order).

    Taken from this module's models, not from all of SQLModel's registry: a
    program that uses funnel beside SQLModel models of its own shares that
    registry, and its tables are not funnel's to create or copy.
    """
    ours = {
        value.__table__
        for value in globals().values()
        if isinstance(value, type) and issubclass(value, SQLModel) and value.__module__ == __name__
        if hasattr(value, "__table__")
    }
    return [table for table in SQLModel.metadata.sorted_tables if table in ours]


class ZoomCursor(SQLModel, table=True):
    """How far a zoom source has read one occurrence of its webinar (spec section 11).

    `registrants` is the count Zoom gave at the last full read: a run whose
    first page says the same count, within a day of that read, stops there
    (one request instead of the whole list). `attendance_done` is set once
    the participants of an ended occurrence were read after Zoom settled them.
    """

    __tablename__ = "zoom_cursors"

    source: str = Field(primary_key=True)
    occurrence: str = Field(primary_key=True)
    registrants: int = 0
    full_read_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    attendance_done: bool = False


class ZoomEvent(SQLModel, table=True):
    """A webhook post from Zoom, once: by its event's identity, and by its signature (replays).

    `key` is `event:` + what identifies the event (its kind, webinar, and the
    registrant or participant), or `sig:` + a hash of a post's signature.
    """

    __tablename__ = "zoom_events"

    key: str = Field(primary_key=True)
    kind: str
    received_at: datetime = Field(sa_type=UTCDateTime)
    outcome: str = ""
