"""The database layer: migrations match the models, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import REGISTRATIONS, Project, alembic_settings, migrate_with_alembic
from sqlalchemy import inspect
from sqlmodel import SQLModel, create_engine

from funnel.errors import MigrationError
from funnel.store.db import current_revision, make_engine
from funnel.store.migrations import HEAD


def test_head_constant_is_the_newest_migration() -> None:
    assert ScriptDirectory.from_config(alembic_settings()).get_current_head() == HEAD


def _assert_at_head_as_the_models_describe(url: str) -> None:
    """funnel starts on it without changing anything, and the models find nothing to add or alter."""
    engine = make_engine(url)
    try:
        assert current_revision(engine) == HEAD
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
    finally:
        engine.dispose()


def _schema(url: str) -> dict[str, dict[str, object]]:
    """Everything a database says of its tables: columns, keys, indexes, constraints."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = inspect(conn)
            return {
                table: {
                    # in any order: a column a later migration adds comes last in the upgraded table
                    "columns": sorted(
                        (c["name"], str(c["type"]), c["nullable"], c.get("default")) for c in found.get_columns(table)
                    ),
                    "primary key": found.get_pk_constraint(table)["constrained_columns"],
                    "foreign keys": sorted(
                        (fk["constrained_columns"], fk["referred_table"], fk["referred_columns"])
                        for fk in found.get_foreign_keys(table)
                    ),
                    "indexes": sorted(
                        (i["name"], i["column_names"], bool(i["unique"])) for i in found.get_indexes(table)
                    ),
                    "unique": sorted(u["column_names"] for u in found.get_unique_constraints(table)),
                }
                for table in sorted(found.get_table_names())
            }
    finally:
        engine.dispose()


def _two_urls(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, str]:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'migrated.db'}", f"sqlite:///{tmp_path / 'new.db'}"
    return request.getfixturevalue("postgres_url"), request.getfixturevalue("second_postgres_url")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_build_exactly_the_schema_the_models_describe(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url, _ = _two_urls(backend, tmp_path, request)
    migrate_with_alembic(url, "head")
    _assert_at_head_as_the_models_describe(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_new_database_gets_the_very_schema_the_migrations_build(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A first start creates the models' tables directly; they are what every migration in turn builds."""
    migrated, new = _two_urls(backend, tmp_path, request)
    migrate_with_alembic(migrated, "head")
    make_engine(new).dispose()
    assert _schema(new) == _schema(migrated)
    _assert_at_head_as_the_models_describe(new)  # a second start finds HEAD and changes nothing


def test_a_first_start_does_not_load_alembic(tmp_path: Path) -> None:
    """About a fifth of a second at every first run; alembic is for upgrading an older schema."""
    script = (
        "import sys; from funnel.store.db import make_engine, current_revision; "
        "engine = make_engine(sys.argv[1]); print(current_revision(engine), 'alembic' in sys.modules)"
    )
    url = f"sqlite:///{tmp_path / 'new.db'}"
    done = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [HEAD, "False"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_new_database_with_a_table_of_ours_left_by_something_else_is_refused(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Not silently taken over: a `runs` table of another program is an error, as the migrations would make it."""
    url, _ = _two_urls(backend, tmp_path, request)
    other = create_engine(url)
    with other.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE runs (name VARCHAR(10))")
    other.dispose()
    with pytest.raises(MigrationError, match="could not be brought up to date"):
        make_engine(url)
    assert list(_schema(url)) == ["runs"]  # and nothing else was made


def test_a_new_database_holds_funnels_tables_only(tmp_path: Path) -> None:
    """A program using funnel beside SQLModel models of its own: its tables are not created in
    funnel's database, nor copied by `funnel db copy` (in a process of its own: the registry is global)."""
    script = """
import json, sys
from sqlalchemy import inspect
from sqlmodel import Field, SQLModel
class Widget(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
from funnel.store.db import make_engine
from funnel.store.models import funnel_tables
engine = make_engine(sys.argv[1])
with engine.connect() as conn:
    print(json.dumps(sorted(inspect(conn).get_table_names())))
print(json.dumps(sorted(t.name for t in funnel_tables())))
"""
    done = subprocess.run(
        [sys.executable, "-c", script, f"sqlite:///{tmp_path / 'new.db'}"], capture_output=True, text=True, check=True
    )
    made, copied = (json.loads(line) for line in done.stdout.splitlines())
    assert "widget" not in made and "widget" not in copied and "contacts" in copied
    assert made == sorted([*copied, "alembic_version"])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_index_someone_already_dropped_does_not_stop_the_upgrade(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url, _ = _two_urls(backend, tmp_path, request)
    migrate_with_alembic(url, "0004", "DROP INDEX ix_tags_contact_id")
    engine = make_engine(url)
    try:
        assert current_revision(engine) == HEAD
    finally:
        engine.dispose()


def test_a_database_made_before_migrations_is_adopted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    # the schema those versions made is revision 0001's (today's models have later tables)
    migrate_with_alembic(url, "0001", "DROP TABLE alembic_version")
    engine = make_engine(url)
    assert current_revision(engine) == HEAD
    engine.dispose()


# --------------------------------------------------------------------------- several commands at once


def _start_together(root: Path, commands: list[list[str]], env: dict[str, str]) -> list[tuple[int, str]]:
    """Start every command at the same moment (as cron and a web server would) and wait for all."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "funnel", *args],
            cwd=root,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        results.append((proc.returncode, err))
    return results


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_several_commands_at_once_on_a_new_database_all_get_their_schema(
    backend: str, project: Project, request: pytest.FixtureRequest
) -> None:
    """Nobody fails because another command is creating the schema: each waits its turn."""
    project.write("signups/webinar-registrations.csv", REGISTRATIONS)
    env = {} if backend == "sqlite" else {"FUNNEL_DATABASE_URL": request.getfixturevalue("postgres_url")}
    now = "2027-01-10T16:00:00Z"
    commands = [
        ["run", "--now", now],
        ["run", "--now", now],
        ["run", "--now", now],
        ["plan", "--now", now, "--json"],
        ["report", "--json"],
        ["contacts", "show", "nobody@example.test"],
    ]
    results = _start_together(project.root, commands, env)
    for (code, err), args in zip(results, commands, strict=True):
        assert "FUNNEL_DATABASE_URL" not in err, (args, err)
        assert "Traceback" not in err, (args, err)
        expected = {"run": (0, 75), "plan": (0,), "report": (0,), "contacts": (1,)}[args[0]]
        assert code in expected, (args, code, err)
    assert sum(1 for (code, _), args in zip(results, commands, strict=True) if args[0] == "run" and code == 0) >= 1
    # and the welcome went out exactly once
    assert [sent for sent in project.sent() if sent[2] == "registered"] == [
        ("ana@example.test", "webinar-relationship-911", "registered")
    ]


def test_processes_starting_at_once_on_a_new_sqlite_file_all_open_it(tmp_path: Path) -> None:
    """cron and a hand-started run, or two runs, may both be the first: neither fails on the schema."""
    import subprocess
    import sys

    script = "import sys; from funnel.store.db import make_engine; make_engine(sys.argv[1])"
    for attempt in range(5):
        url = f"sqlite:///{tmp_path / f'new{attempt}.db'}"
        procs = [
            subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE, text=True) for _ in range(4)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errors
        assert current_revision(make_engine(url)) == HEAD
