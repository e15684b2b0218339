"""The database layer: migrations match the models, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel, create_engine

import funnel
from funnel.db import current_revision, make_engine
from funnel.migrations import HEAD


def test_head_constant_is_the_newest_migration() -> None:
    settings = AlembicConfig()
    settings.set_main_option("script_location", str(Path(funnel.__file__).parent / "migrations"))
    assert ScriptDirectory.from_config(settings).get_current_head() == HEAD


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_build_exactly_the_schema_the_models_describe(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'funnel.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    try:
        assert current_revision(engine) == HEAD
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert differences == []
        make_engine(url).dispose()  # a second start finds HEAD and changes nothing
    finally:
        engine.dispose()


def test_a_database_made_before_migrations_is_adopted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    SQLModel.metadata.create_all(old)
    old.dispose()
    engine = make_engine(url)
    assert current_revision(engine) == HEAD
    engine.dispose()


def test_processes_starting_at_once_on_a_new_sqlite_file_all_open_it(tmp_path: Path) -> None:
    """cron and a hand-started run, or two runs, may both be the first: neither fails on the schema."""
    import subprocess
    import sys

    script = "import sys; from funnel.db import make_engine; make_engine(sys.argv[1])"
    for attempt in range(5):
        url = f"sqlite:///{tmp_path / f'new{attempt}.db'}"
        procs = [
            subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE, text=True) for _ in range(4)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errors
        assert current_revision(make_engine(url)) == HEAD
