"""Migration 0009 (one enrollment per webinar session): people mid-sequence at 0008 go on,
with no duplicate and no lost email, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from conftest import Project, Result, migrate_with_alembic, without_shipped_sessions
from sqlalchemy import MetaData, create_engine, insert, text

from funnel.text import email_hash

HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
SEQUENCE = "webinar-relationship-911"


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def build_0008_database(url: str, project: Project) -> None:
    """Ana registered for January 14 at 19:00 Denver (confirmation sent), Bea got her consultation receipt."""
    migrate_with_alembic(url, "0008")
    engine = create_engine(url)
    tables = MetaData()
    tables.reflect(engine)
    t = tables.tables
    from funnel.config import load_config

    config = load_config(project.root / "sequences.yaml")
    with engine.begin() as conn:

        def add(table: str, **values: Any) -> Any:
            return conn.execute(insert(t[table]).values(**values)).inserted_primary_key[0]

        for sid, sequence in config.sequences.items():  # every step known since long before
            for step in sequence.steps:
                add("known_steps", sequence=sid, step_id=step.id, first_seen_at=at("2026-11-01 00:00"))

        def contact(address: str, first: str, token: str) -> int:
            return add(
                "contacts",
                email_hash=email_hash(address),
                email=address,
                first_name=first,
                timezone="America/Denver",
                discreet=False,
                fields={},
                created_at=at("2027-01-05 16:00"),
                updated_at=at("2027-01-05 16:00"),
                first_source="webinar-registrations",
                token_key=token,
            )

        ana = contact("ana@example.test", "Ana", "a" * 32)
        bea = contact("bea@example.test", "Bea", "b" * 32)
        common = {"status": "active", "enrolled_at": at("2027-01-05 16:00"), "next_due_at": at("2027-01-05 16:00")}
        ana_in = add(
            "enrollments",
            contact_id=ana,
            sequence=SEQUENCE,
            source="webinar-registrations",
            webinar="relationship-911",
            webinar_start=at("2027-01-15 02:00"),  # 19:00 in Denver
            **common,
        )
        bea_in = add("enrollments", contact_id=bea, sequence="consultation", source="consultation-requests", **common)
        for enrollment, sequence, step in ((ana_in, SEQUENCE, "registered"), (bea_in, "consultation", "received")):
            add(
                "step_runs",
                enrollment_id=enrollment,
                sequence=sequence,
                step_id=step,
                status="sent",
                retryable=False,
                transactional=True,
                attempts=1,
                due_at=at("2027-01-05 16:00"),
                decided_at=at("2027-01-05 16:00"),
                sent_at=at("2027-01-05 16:00"),
            )
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("with_sessions", [False, True])
def test_people_mid_sequence_go_on_after_the_upgrade(
    backend: str,
    with_sessions: bool,
    project: Project,
    funnel: Callable[..., Result],
    request: pytest.FixtureRequest,
) -> None:
    url = f"sqlite:///{project.root / 'old.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    if with_sessions:  # the practice lists its dates at the same time as it upgrades
        path = project.root / "sequences.yaml"
        path.write_text(
            without_shipped_sessions(path.read_text()).replace(
                "    duration: 60m", "    sessions: ['2027-01-14 19:00', '2027-02-18 19:00']\n    duration: 60m"
            )
        )
    build_0008_database(url, project)
    env = {"FUNNEL_DATABASE_URL": url}
    # her row is read again (the export is cumulative), and Bea's request again
    project.write(
        "signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,\n"
    )
    project.write(
        "signups/consultation-requests.jsonl", '{"email": "bea@example.test", "name": "Bea", "message": "hi"}\n'
    )
    for now in ("2027-01-14T16:00:00Z", "2027-01-15T01:30:00Z", "2027-01-15T16:00:00Z"):
        done = funnel("run", "--now", now, env=env)
        assert done.code == 0, done.err
    sent = project.sent()
    assert ("ana@example.test", SEQUENCE, "registered") not in sent  # sent before the upgrade: never again
    assert ("bea@example.test", "consultation", "received") not in sent
    assert ("ana@example.test", SEQUENCE, "day-before") in sent
    assert ("ana@example.test", SEQUENCE, "hour-before") in sent
    assert ("ana@example.test", SEQUENCE, "replay") in sent
    assert len(sent) == len(set(sent))
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT contact_id, sequence, session FROM enrollments ORDER BY id")).all()
        runs = conn.execute(
            text("SELECT COUNT(*) FROM step_runs WHERE step_id = 'registered' AND status = 'sent'")
        ).scalar()
    engine.dispose()
    assert [(seq, sid) for _, seq, sid in rows] == [(SEQUENCE, "2027-01-14 19:00"), ("consultation", "")]
    assert runs == 1
    shown = funnel("contacts", "show", "ana@example.test", "--json", env=env).json()
    assert isinstance(shown, dict)
    assert [e["session"] for e in shown["enrollments"]] == ["2027-01-14 19:00"]
