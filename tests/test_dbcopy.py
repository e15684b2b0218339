"""`funnel db copy` (moving to another database) and `funnel db backup` (SQLite's online backup)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import Project, Result, database_rows

NOW = "2026-12-01T16:00:00Z"
LATER = "2027-01-14T02:00:00Z"  # the day before the examples' webinar: reminders are due
HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
NEW_ROW = "\nnew.person@example.test,New,Person,2027-01-14 19:00,America/Denver,no\n"


def sqlite_url(project: Project, name: str = "funnel.db") -> str:
    return f"sqlite:///{project.root / name}"


def test_copy_from_sqlite_to_postgresql_keeps_everything_and_the_copy_runs_on(
    example_project: Project, funnel: Callable[..., Result], postgres_url: str
) -> None:
    on_sqlite = {"FUNNEL_DATABASE_URL": sqlite_url(example_project)}
    on_postgres = {"FUNNEL_DATABASE_URL": postgres_url}
    assert funnel("run", "--now", NOW, env=on_sqlite).code == 0
    sent_before = len(example_project.sent())
    assert sent_before > 0

    copied = funnel("db", "copy", "--to", postgres_url, "--json", env=on_sqlite)
    assert copied.code == 0, copied.err
    tables = copied.json()["tables"]  # type: ignore[index]
    original = database_rows(sqlite_url(example_project))
    assert tables == {name: len(rows) for name, rows in original.items() if name != "alembic_version"}
    assert tables["contacts"] > 5 and tables["step_runs"] > 5
    assert database_rows(postgres_url) == original

    # the copy answers like the original ...
    for who in ("irene.castillo@example.test",):
        assert (
            funnel("contacts", "show", who, "--json", env=on_postgres).json()
            == funnel("contacts", "show", who, "--json", env=on_sqlite).json()
        )
    # ... and carries on: nothing already sent goes again, new people get new ids
    example_project.append("signups/webinar-registrations.csv", NEW_ROW)
    later = funnel("run", "--now", LATER, "--json", env=on_postgres)
    assert later.code == 0, later.err
    sent = example_project.sent()
    assert len(sent) == len(set(sent)), "an email went twice"
    assert ("new.person@example.test", "webinar-relationship-911", "registered") in sent
    assert funnel("contacts", "show", "new.person@example.test", env=on_postgres).code == 0


def test_copy_refuses_a_target_that_holds_rows_and_changes_nothing(
    project: Project, funnel: Callable[..., Result], postgres_url: str
) -> None:
    project.write(
        "signups/webinar-registrations.csv",
        "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
        "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no\n",
    )
    on_sqlite = {"FUNNEL_DATABASE_URL": sqlite_url(project)}
    assert funnel("run", "--now", NOW, env=on_sqlite).code == 0
    assert funnel("db", "copy", "--to", postgres_url, env=on_sqlite).code == 0
    before = database_rows(postgres_url)

    again = funnel("db", "copy", "--to", postgres_url, env=on_sqlite)
    assert again.code == 2
    assert "not empty" in again.err and "contacts (1 rows)" in again.err
    assert database_rows(postgres_url) == before

    itself = funnel("db", "copy", "--to", sqlite_url(project), env=on_sqlite)
    assert itself.code == 2 and "being copied" in itself.err


def test_copy_back_from_postgresql_into_a_new_sqlite_file(
    project: Project, funnel: Callable[..., Result], postgres_url: str
) -> None:
    project.write(
        "signups/webinar-registrations.csv",
        "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
        "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,yes\n",
    )
    on_postgres = {"FUNNEL_DATABASE_URL": postgres_url}
    assert funnel("run", "--now", NOW, env=on_postgres).code == 0
    (project.root / "moved").mkdir()  # a folder that does not exist is a typo, refused like any database URL
    target = sqlite_url(project, "moved/funnel.db")
    copied = funnel("db", "copy", "--from", postgres_url, "--to", target)
    assert copied.code == 0, copied.err
    assert "counts match" in copied.out
    assert database_rows(target) == database_rows(postgres_url)


@pytest.mark.sqlite_only(reason="backs up the SQLite file with SQLite's own backup API (PostgreSQL: pg_dump)")
def test_backup_of_the_sqlite_file_is_a_complete_working_database(
    example_project: Project, funnel: Callable[..., Result]
) -> None:
    assert funnel("run", "--now", NOW).code == 0
    result = funnel("db", "backup", "backups/funnel-copy.db")
    assert result.code == 0, result.err
    backup = sqlite_url(example_project, "backups/funnel-copy.db")
    assert database_rows(backup) == database_rows(sqlite_url(example_project))
    shown = funnel("contacts", "show", "irene.castillo@example.test", "--json", env={"FUNNEL_DATABASE_URL": backup})
    assert shown.code == 0 and shown.json()["email"] == "irene.castillo@example.test"  # type: ignore[index]

    again = funnel("db", "backup", "backups/funnel-copy.db")
    assert again.code == 2 and "already exists" in again.err


def test_backup_on_postgresql_points_to_pg_dump(
    project: Project, funnel: Callable[..., Result], postgres_url: str
) -> None:
    result = funnel("db", "backup", "funnel.db", env={"FUNNEL_DATABASE_URL": postgres_url})
    assert result.code == 2 and "pg_dump" in result.err


@pytest.mark.parametrize("source_backend", ["sqlite", "postgresql"])
def test_the_copy_is_one_snapshot_even_if_someone_writes_meanwhile(
    project: Project, funnel: Callable[..., Result], postgres_url: str, source_backend: str
) -> None:
    """`funnel serve` may record an unsubscribe during a copy: the copy is the state when it began, whole."""
    from sqlmodel import Session

    from funnel.store.copy import copy_database
    from funnel.store.db import make_engine, put_setting

    if source_backend == "sqlite":
        source, target = sqlite_url(project), postgres_url
    else:
        source, target = postgres_url, sqlite_url(project, "copy.db")
    project.write("signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,,no\n")
    assert funnel("run", "--now", NOW, env={"FUNNEL_DATABASE_URL": source}).code == 0
    writer = make_engine(source)
    written: list[str] = []

    def write_meanwhile(table: str, _copied: int) -> None:
        if not written:  # after the first batch of the first table, before `settings` is read
            with Session(writer) as session:
                put_setting(session, "written-during-the-copy", "yes")
                session.commit()
            written.append(table)

    try:
        counts = copy_database(source, target, progress=write_meanwhile)
    finally:
        writer.dispose()
    assert written == ["contacts"]
    copied_settings = {row[0] for row in database_rows(target)["settings"]}
    assert "written-during-the-copy" not in copied_settings
    assert counts["settings"] == len(copied_settings)
    assert "written-during-the-copy" in {row[0] for row in database_rows(source)["settings"]}
