"""Orchestration shared by the CLI (and later the web app): one function per command.

Each function takes the loaded config, an engine and `now`, and returns
plain data; printing and exit codes belong to `funnel.cli`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel import schedule
from funnel.changes import introduced_steps
from funnel.config import Config
from funnel.contacts import find_contact, unsubscribe
from funnel.db import database_url, make_engine
from funnel.errors import ConfigError
from funnel.ingest import IngestResult, apply_rows
from funnel.invitation import invitation
from funnel.models import Contact, Enrollment, StepRun, Tag, new_token_key
from funnel.preview import render_sample, sample_unsubscribe_url, sample_webinar
from funnel.render import Rendered, Renderer
from funnel.runner import compose_email, contact_zone, render_for
from funnel.sources import FileRead, read_source_file
from funnel.timeutil import isoformat_z, zone
from funnel.transports import make_transport
from funnel.transports.base import Address, SendResult
from funnel.unsubscribe import Tokens, secret_key, unsubscribe_url


def open_engine(config: Config) -> Engine:
    return make_engine(database_url(config.folder))


# --------------------------------------------------------------------------- import


def import_file(
    config: Config, engine: Engine, source_name: str, path: Path, now: datetime
) -> tuple[FileRead, IngestResult]:
    """Read one file through a source's mapping now (whatever its fingerprint)."""
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


# --------------------------------------------------------------------------- preview


def preview(
    config: Config, engine: Engine | None, sequence_id: str, step_id: str, now: datetime, address: str | None
) -> Rendered:
    """Render one step for the sample contact, or for a real one (`--email`)."""
    _sequence, step = config.find_step(sequence_id, step_id)
    if address is None:
        return render_sample(config, sequence_id, step_id, now)
    assert engine is not None
    with Session(engine) as session:
        contact = find_contact(session, address)
        enrollment = session.scalars(
            select(Enrollment).where(col(Enrollment.contact_id) == contact.id, col(Enrollment.sequence) == sequence_id)
        ).first()
        key = secret_key(session)
        token = Tokens(key).make(contact.token_key or new_token_key())
        url = unsubscribe_url(config.practice.base_url, token)
        return render_for(Renderer(config, jump_key=key), config, contact, enrollment, sequence_id, step, url, now)


def send_test(config: Config, sequence_id: str, step_id: str, to: str, now: datetime) -> tuple[str, SendResult]:
    """Send one sample-rendered step to `to` through the configured transport: its name and what it said.

    The outbox transport only writes a file (`extra["path"]`): the command
    must say so, or a practice trying its setup believes an email went out.
    """
    from funnel.sources import normalize_email

    try:
        address = normalize_email(to)
    except ValueError as exc:
        raise ConfigError(f"--to {to!r} is not a valid email address ({exc})") from None
    transport = make_transport(config)
    rendered = render_sample(config, sequence_id, step_id, now)
    rendered = Rendered(subject=f"[Test] {rendered.subject}", text=rendered.text, html=rendered.html)
    contact = Contact(email_hash="", email=address, first_name="Sam", created_at=now, updated_at=now)
    _sequence, step = config.find_step(sequence_id, step_id)
    webinar = sample_webinar(config, sequence_id, now)
    attachments = invitation(
        config,
        step,
        person_key="send-test",
        discreet=False,
        webinar_id=webinar.id if webinar else None,
        start=webinar.start if webinar else None,
        now=now,
    )
    email = compose_email(
        config,
        contact,
        sequence_id,
        step_id,
        rendered,
        f"test-{uuid.uuid4().hex}",
        sample_unsubscribe_url(config),
        now,
        attachments=attachments,
    )
    email = replace(email, to=Address(address))
    try:
        result = transport.send(email)
    finally:
        transport.close()
    return transport.name, result


# --------------------------------------------------------------------------- plan


def plan(config: Config, engine: Engine, now: datetime, days: int, *, goal_skips: bool = False) -> list[dict[str, Any]]:
    """What would be sent to whom and when in the next `days` days (writes nothing).

    People are followed into the `next` sequence of one they finish within the
    window, as a run would enroll them (`via` names the sequence they come from).

    With `goal_skips`, the marketing steps that a reached goal (`exit_on_tags`)
    will skip are listed too, with `skipped` saying why.
    """
    until = now + timedelta(days=days)
    out: list[dict[str, Any]] = []
    with Session(engine) as session:
        introduced = introduced_steps(session, config, now, write=False)
        last_id = 0
        while True:
            contacts = list(
                session.scalars(
                    select(Contact)
                    .where(
                        col(Contact.id) > last_id,
                        col(Contact.id).in_(
                            select(col(Enrollment.contact_id)).where(col(Enrollment.status) == "active")
                        ),
                    )
                    .order_by(col(Contact.id))
                    .limit(500)
                )
            )
            if not contacts:
                break
            last_id = contacts[-1].id or last_id
            out.extend(_plan_page(session, config, contacts, introduced, now, until, goal_skips))
    out.sort(key=lambda item: (item["at"], item["email"] or "", item["sequence"], item["step"]))
    return out


def _plan_page(
    session: Session,
    config: Config,
    contacts: list[Contact],
    introduced: dict[str, dict[str, datetime]],
    now: datetime,
    until: datetime,
    goal_skips: bool = False,
) -> list[dict[str, Any]]:
    ids = [c.id for c in contacts]
    tags: dict[int, set[str]] = defaultdict(set)
    for contact_id, tag in session.execute(
        select(col(Tag.contact_id), col(Tag.tag)).where(col(Tag.contact_id).in_(ids))
    ):
        tags[contact_id].add(tag)
    enrollments: dict[int, list[Enrollment]] = defaultdict(list)
    for enrollment in session.scalars(
        select(Enrollment).where(and_(col(Enrollment.contact_id).in_(ids), col(Enrollment.status) == "active"))
    ):
        enrollments[enrollment.contact_id].append(enrollment)
    entered: dict[int, set[str]] = defaultdict(set)  # any status: a run never enrolls her there again
    for contact_id, sequence_id in session.execute(
        select(col(Enrollment.contact_id), col(Enrollment.sequence)).where(col(Enrollment.contact_id).in_(ids))
    ):
        entered[contact_id].add(sequence_id)
    rows: dict[int, dict[str, schedule.Recorded]] = defaultdict(dict)
    all_ids = [e.id for group in enrollments.values() for e in group]
    for row in session.scalars(select(StepRun).where(col(StepRun.enrollment_id).in_(all_ids))):
        rows[row.enrollment_id][row.step_id] = schedule.Recorded(row.status, row.retryable, row.reason)
    out = []
    for contact in contacts:
        if contact.suppression:
            continue
        state = schedule.ContactState(
            tz=contact_zone(config, contact),
            tags=frozenset(tags[contact.id or 0]),
            last_marketing_at=contact.last_marketing_at,
        )
        sequences = {
            e.sequence: (
                config.sequences[e.sequence],
                schedule.EnrollmentState(
                    e.enrolled_at,
                    e.webinar_start,
                    rows.get(e.id or 0, {}),
                    introduced.get(e.sequence, {}),
                    imported_at=e.imported_at,
                ),
            )
            for e in enrollments[contact.id or 0]
            if e.sequence in config.sequences
        }
        try:
            follow = schedule.Follow(config.sequences, frozenset(entered[contact.id or 0]), introduced)
            items = schedule.project(
                sequences, state, now, until, config.delivery, goal_skips=goal_skips, follow=follow
            )
        except (OverflowError, ValueError, OSError):
            continue  # a value stored by an older version: the next run stops that enrollment, with the reason
        for item in items:
            if item.at <= until:
                planned = {
                    "email": contact.email,
                    "sequence": item.sequence,
                    "step": item.step,
                    "at": isoformat_z(item.at),
                }
                if item.skipped:
                    planned["skipped"] = item.skipped
                if item.via:
                    planned["via"] = item.via
                out.append(planned)
    return out


# --------------------------------------------------------------------------- report


def report(config: Config, engine: Engine, since: datetime | None) -> dict[str, Any]:
    """Per sequence and step: what happened (the figures live in funnel.report)."""
    from funnel.report import figures

    return figures(config, engine, since)


# --------------------------------------------------------------------------- suppressions


def suppressions_sync(config: Config, engine: Engine, now: datetime) -> dict[str, int]:
    """Pull SendGrid's suppression lists and stop mail to those addresses."""
    from funnel.sources import email_hash, normalize_email
    from funnel.transports import sendgrid_settings
    from funnel.transports.sendgrid import fetch_suppressions

    key, host = sendgrid_settings()
    entries = fetch_suppressions(key, host, config.delivery.request_timeout)
    counts: dict[str, int] = defaultdict(int)
    with Session(engine, expire_on_commit=False) as session:
        for address, kind, _created in entries:
            try:
                normalized = normalize_email(address)
            except ValueError:
                counts["unreadable"] += 1
                continue
            digest = email_hash(normalized)
            contact = session.scalars(select(Contact).where(col(Contact.email_hash) == digest)).first()
            if contact is None:
                # keep only the hash: enough to refuse a later import, nothing personal
                session.add(
                    Contact(
                        email_hash=digest, created_at=now, updated_at=now, suppressed_reason=kind, suppressed_at=now
                    )
                )
                counts[kind] += 1
            elif kind == "unsubscribe" and contact.unsubscribed_at is None:
                unsubscribe(session, contact, now, via="sendgrid")  # also kept in her history
                counts[kind] += 1
            elif kind != "unsubscribe" and contact.suppressed_reason is None:
                contact.suppressed_reason, contact.suppressed_at = kind, now
                counts[kind] += 1
        session.commit()
    counts["fetched"] = len(entries)
    return dict(counts)
