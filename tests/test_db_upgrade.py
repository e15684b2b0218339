"""Upgrades lose nothing: a database of the first released schema (0001), full of
real-looking state, is upgraded by funnel's normal start path and every row is intact.

The test knows only revision 0001: it fills the tables that 0001 made and, after
the upgrade to whatever HEAD is now, compares those columns row by row, ignoring
columns and tables that later revisions add. So it keeps guarding each new revision.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, Result, migrate_with_alembic
from sqlalchemy import Connection, MetaData, create_engine, insert, select, text

from funnel.store.db import current_revision, make_engine
from funnel.store.migrations import HEAD
from funnel.text import email_hash

FIRST_RELEASE = "0001"


def build_first_release(url: str) -> None:
    """An empty database brought to revision 0001 only, as the first release made it."""
    migrate_with_alembic(url, FIRST_RELEASE)


def at(text: str) -> datetime:
    """A naive UTC timestamp, as the tables store them."""
    return datetime.fromisoformat(text)


def fill(conn: Connection, tables: MetaData) -> None:
    """Contacts of every kind, their tags, enrollments and step runs of every status, and the rest."""
    t = tables.tables

    def add(table: str, **values: Any) -> Any:
        return conn.execute(insert(t[table]).values(**values)).inserted_primary_key[0]

    def contact(address: str | None, first: str | None, **extra: Any) -> int:
        values: dict[str, Any] = {
            "email_hash": email_hash(address or first or "erased"),
            "email": address,
            "first_name": first,
            "last_name": None,
            "timezone": "America/Denver",
            "discreet": False,
            "fields": {},
            "created_at": at("2026-12-01 16:00:00"),
            "updated_at": at("2026-12-01 16:00:00"),
            "first_source": "webinar-registrations",
            "unsubscribed_at": None,
            "unsubscribed_via": None,
            "suppressed_reason": None,
            "suppressed_at": None,
            "last_marketing_at": None,
            "erased_at": None,
        }
        return add("contacts", **{**values, **extra})

    ana = contact("ana@example.test", "Ana", last_name="Reyes", fields={"message": 'Ünïcode, "quotes" & <tags>'})
    bea = contact("bea@example.test", "Bea", discreet=True, timezone="Europe/Berlin", first_source="consultation")
    cat = contact(
        "cat@example.test",
        "Cat",
        unsubscribed_at=at("2026-12-03 10:00:00"),
        unsubscribed_via="link",
        last_marketing_at=at("2026-12-02 16:00:00"),
    )
    dee = contact("dee@example.test", "Dee", suppressed_reason="bounce", suppressed_at=at("2026-12-04 09:30:00"))
    gone = contact(None, None, erased_at=at("2026-12-05 12:00:00"), timezone=None, first_source=None)

    for who, tag in [(ana, "webinar-registered"), (ana, "webinar-attended"), (bea, "consultation-requested")]:
        add("tags", contact_id=who, tag=tag, source="webinar-registrations", added_at=at("2026-12-01 16:00:00"))

    def enrollment(who: int, sequence: str, **extra: Any) -> int:
        values: dict[str, Any] = {
            "contact_id": who,
            "sequence": sequence,
            "status": "active",
            "enrolled_at": at("2026-12-01 16:00:00"),
            "source": "webinar-registrations",
            "webinar": "relationship-911",
            "webinar_start": at("2027-01-15 02:00:00"),
            "next_due_at": at("2027-01-14 02:00:00"),
            "ended_at": None,
            "end_reason": None,
        }
        return add("enrollments", **{**values, **extra})

    ana_webinar = enrollment(ana, "webinar-relationship-911")
    bea_consult = enrollment(bea, "consultation", webinar=None, webinar_start=None, next_due_at=None)
    cat_webinar = enrollment(
        cat, "webinar-relationship-911", status="exited", ended_at=at("2026-12-03 10:00:00"), end_reason="unsubscribed"
    )
    dee_webinar = enrollment(dee, "webinar-relationship-911", status="finished", next_due_at=None)
    enrollment(gone, "webinar-relationship-911", status="exited", end_reason="erased")

    run_id = add(
        "runs",
        started_at=at("2026-12-01 16:00:00"),
        finished_at=at("2026-12-01 16:00:05"),
        clock=at("2026-12-01 16:00:00"),
        host="practice-box",
        pid=4242,
        config_fingerprint="f" * 64,
        config_timing={"webinar-relationship-911": {"registered": "0m"}},
        summary={"sent": 2, "skipped": 1},
    )
    add(
        "runs",
        started_at=at("2026-12-02 16:00:00"),
        finished_at=None,
        clock=at("2026-12-02 16:00:00"),
        host="practice-box",
        pid=4243,
        config_fingerprint="",
        config_timing={},
        summary={},
    )

    def step(enrollment_id: int, step_id: str, status: str, **extra: Any) -> None:
        values: dict[str, Any] = {
            "enrollment_id": enrollment_id,
            "sequence": "webinar-relationship-911",
            "step_id": step_id,
            "status": status,
            "reason": None,
            "retryable": False,
            "transactional": True,
            "send_id": None,
            "run_id": run_id,
            "attempts": 0,
            "due_at": at("2026-12-01 16:00:00"),
            "decided_at": at("2026-12-01 16:00:01"),
            "sent_at": None,
            "message_id": None,
            "transport": None,
        }
        add("step_runs", **{**values, **extra})

    step(
        ana_webinar,
        "registered",
        "sent",
        send_id="s-1",
        attempts=1,
        sent_at=at("2026-12-01 16:00:02"),
        message_id="msg-1",
        transport="sendgrid",
    )
    step(
        ana_webinar,
        "what-to-expect",
        "unknown",
        send_id="s-2",
        attempts=1,
        transactional=False,
        reason="the run stopped while this email was being handed over",
        transport="sendgrid",
    )
    step(cat_webinar, "registered", "skipped", reason="unsubscribed")
    step(
        dee_webinar,
        "registered",
        "failed",
        reason="SendGrid 400: invalid address",
        retryable=False,
        attempts=1,
        send_id="s-3",
        transport="sendgrid",
    )
    step(dee_webinar, "day-before", "failed", reason="SendGrid 503", retryable=True, attempts=4, send_id="s-4")
    step(bea_consult, "received", "sending", send_id="s-5", attempts=1)

    add(
        "known_steps",
        sequence="webinar-relationship-911",
        step_id="registered",
        first_seen_at=at("2026-12-01 16:00:00"),
    )
    add("known_steps", sequence="consultation", step_id="received", first_seen_at=at("2026-12-01 16:00:00"))
    add(
        "source_files",
        source="webinar-registrations",
        path="signups/webinar-registrations.csv",
        size=1234,
        sha256="a" * 64,
        lines=5,
        read_at=at("2026-12-01 16:00:00"),
    )
    add("settings", key="secret_key", value="generated-long-ago")
    add("settings", key="config_used", value='{"sequences": []}')


def first_release_rows(url: str, tables: MetaData) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of every 0001 table, 0001 columns only (later columns ignored), sorted."""
    engine = create_engine(url)
    try:
        now = MetaData()
        now.reflect(engine, only=list(tables.tables))
        with engine.connect() as conn:
            result = {}
            for name, old in tables.tables.items():
                table = now.tables[name]
                columns = [table.c[column.name] for column in old.columns]
                rows = conn.execute(select(*columns)).all()
                result[name] = sorted((tuple(row) for row in rows), key=repr)
            return result
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_a_full_first_release_database_keeps_every_row(
    backend: str, project: Project, funnel: Callable[..., Result], request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{project.root / 'old.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    build_first_release(url)
    old = create_engine(url)
    tables = MetaData()
    tables.reflect(old)
    tables.remove(tables.tables["alembic_version"])
    with old.begin() as conn:
        fill(conn, tables)
    old.dispose()
    before = first_release_rows(url, tables)
    assert all(before[name] for name in tables.tables), "every 0001 table has rows to keep"
    assert sum(len(rows) for rows in before.values()) == 26

    engine = make_engine(url)  # funnel's normal start: upgrades to HEAD
    try:
        assert current_revision(engine) == HEAD
    finally:
        engine.dispose()
    after = first_release_rows(url, tables)
    # migration 0007 adds one setting: the highest contact id whose old-format unsubscribe links stay valid
    highest = max(row[0] for row in before["contacts"])
    assert ("legacy_token_contacts", str(highest)) in after["settings"]
    after["settings"].remove(("legacy_token_contacts", str(highest)))
    assert after == before
    check = create_engine(url)
    with check.connect() as conn:
        keys = [key for (key,) in conn.execute(text("SELECT token_key FROM contacts"))]
        assert len(keys) == len(before["contacts"]) and len(set(keys)) == len(keys)
        assert all(len(key) == 32 and int(key, 16) >= 0 for key in keys)  # 16 random bytes each, in hex
        history = conn.execute(text("SELECT change, via FROM subscription_changes")).all()
        assert history == [("unsubscribed", "link")]  # cat's unsubscribe, from what her row held
    check.dispose()

    # and the upgraded database works: people are there with their states, and new rows get fresh ids
    env = {"FUNNEL_DATABASE_URL": url}
    shown = funnel("contacts", "show", "ana@example.test", "--json", env=env)
    assert shown.code == 0, shown.err
    steps = {s["id"]: s["status"] for s in shown.json()["enrollments"][0]["steps"]}
    assert steps["registered"] == "sent"
    assert funnel("contacts", "show", "cat@example.test", "--json", env=env).json()["unsubscribed"] is True
    assert funnel("contacts", "unsubscribe", "bea@example.test", env=env).code == 0


def open_at_once(url: str, start: threading.Barrier, errors: list[BaseException]) -> None:
    """funnel's normal start, released together with the other threads waiting on `start`."""
    start.wait()
    try:
        make_engine(url).dispose()
    except BaseException as exc:  # collected and asserted by the test
        errors.append(exc)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_first_starts_at_once_take_turns_creating_the_schema(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two `funnel run`s from cron on a new database: one creates the tables, the other finds them."""
    # the race is a matter of timing on SQLite: several fresh files; PostgreSQL's advisory lock is deterministic
    attempts = 6 if backend == "sqlite" else 1
    for attempt in range(attempts):
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / f'new-{attempt}.db'}"
        else:
            url = request.getfixturevalue("postgres_url")
        errors: list[BaseException] = []
        start = threading.Barrier(3)
        threads = [threading.Thread(target=open_at_once, args=(url, start, errors)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        engine = make_engine(url)
        assert current_revision(engine) == HEAD
        engine.dispose()
