"""Shared fixtures: a temp project folder with the shipped funnel, and ways to run `funnel`."""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from funnel.cli import cli

REPO = Path(__file__).resolve().parent.parent
SECRET = "test-secret-key"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

#: which database the `project` fixture gives funnel: `sqlite` (default: a file in the
#: project folder) or `postgres` (a fresh database on the local server per test).
#: `.ci/run` runs the whole suite once with each.
TEST_DATABASE = os.environ.get("FUNNEL_TEST_DATABASE", "sqlite")
if TEST_DATABASE not in ("sqlite", "postgres"):
    raise pytest.UsageError(f"FUNNEL_TEST_DATABASE={TEST_DATABASE!r}: write sqlite or postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only(reason): the test is about the SQLite file itself (its lock file, WAL, bytes on disk); "
        "the PostgreSQL pass (FUNNEL_TEST_DATABASE=postgres) leaves it out with that reason",
    )
    config.addinivalue_line(
        "markers",
        "long_running: a test of minutes (weeks of cron runs); collected first, so that an xdist worker "
        "starts it at once and the others share the rest meanwhile, instead of it finishing last",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"funnel test database: {TEST_DATABASE} (FUNNEL_TEST_DATABASE)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long tests go first (see the `long_running` marker); in the PostgreSQL pass, tests that never
    see the pass's database are deselected, and tests about the SQLite file are left out, each with its reason."""
    items.sort(key=lambda item: item.get_closest_marker("long_running") is None)  # stable: the rest keep their order
    if TEST_DATABASE != "postgres":
        return
    # The pass's database reaches funnel only through the `project` fixture (FUNNEL_DATABASE_URL; `_clean_env`
    # drops any inherited one): a test without it runs exactly as in the SQLite pass (its own SQLite files, or
    # the PostgreSQL databases it asks for itself), so the PostgreSQL pass leaves it to that pass.
    neutral = [item for item in items if "project" not in getattr(item, "fixturenames", ("project",))]
    if neutral:
        config.hook.pytest_deselected(items=neutral)
        items[:] = [item for item in items if "project" in getattr(item, "fixturenames", ("project",))]
    for item in items:
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            if not reason:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.sqlite_only needs a reason")
            item.add_marker(pytest.mark.skip(reason=f"SQLite-only, runs in the SQLite pass: {reason}"))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's real settings, and never use a proxy for loopback."""
    for name in list(os.environ):
        if name.startswith(("FUNNEL_", "SENDGRID_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FUNNEL_SECRET_KEY", SECRET)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@dataclass
class Project:
    """A temp folder holding sequences.yaml, email_templates/ and signups/.

    `database_url` is the database funnel uses for it: the default SQLite file
    beside sequences.yaml, or in the PostgreSQL pass a fresh database whose URL
    is also in FUNNEL_DATABASE_URL (so `funnel` in-process and as a subprocess use it).
    """

    root: Path
    database_url: str = ""

    def __post_init__(self) -> None:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.root / 'funnel.db'}"

    @property
    def on_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def append(self, relative: str, text: str) -> None:
        with (self.root / relative).open("a", encoding="utf-8") as handle:
            handle.write(text)

    def messages(self) -> list[EmailMessage]:
        """Every .eml in the outbox, parsed, oldest first."""
        if not self.outbox.exists():
            return []
        return [
            email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in sorted(self.outbox.glob("*.eml"))
        ]

    def sent(self) -> list[tuple[str, str, str]]:
        """(to address, sequence, step) for every email in the outbox."""
        result = []
        for path in sorted(self.outbox.glob("*.eml")) if self.outbox.exists() else []:
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            _stamp, sequence, step, _id = path.stem.split("_")
            result.append((str(message["To"].addresses[0].addr_spec), sequence, step))
        return result


REGISTRATIONS = """Email,First Name,Last Name,Webinar Start,Time Zone,Discreet
ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no
"""


@pytest.fixture
def project(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, _clean_env: None
) -> Project:
    """The shipped sequences.yaml and templates, with empty signup files to fill.

    In the PostgreSQL pass FUNNEL_DATABASE_URL points at a fresh database made for this
    test (see `project_database`); otherwise funnel uses its default SQLite file.
    """
    root = tmp_path / "practice"
    root.mkdir()
    shutil.copy(REPO / "sequences.yaml", root / "sequences.yaml")
    shutil.copytree(REPO / "email_templates", root / "email_templates")
    (root / "signups").mkdir()
    if TEST_DATABASE == "postgres" and request.node.get_closest_marker("sqlite_only") is None:
        url = request.getfixturevalue("project_database")
        monkeypatch.setenv("FUNNEL_DATABASE_URL", url)
        return Project(root, url)
    return Project(root)


@pytest.fixture
def example_project(project: Project) -> Project:
    """The shipped project with the shipped example signups (invented people)."""
    for path in (REPO / "signups" / "examples").iterdir():
        shutil.copy(path, project.root / "signups" / path.name)
    return project


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


@pytest.fixture
def funnel(project: Project) -> Callable[..., Result]:
    """Run the real CLI in-process (fast), in the project folder."""

    def call(*args: str, env: dict[str, str] | None = None) -> Result:
        runner = CliRunner()
        old = Path.cwd()
        os.chdir(project.root)
        try:
            result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        finally:
            os.chdir(old)
        return Result(result.exit_code, result.stdout, result.stderr)

    return call


@pytest.fixture
def funnel_process(project: Project) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real `funnel` console program as a subprocess (exit codes, stderr, signals)."""

    def call(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "funnel", *args],
            cwd=project.root,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return call


@pytest.fixture
def fake_sendgrid() -> Iterator[object]:
    from fake_sendgrid import FakeSendGrid

    server = FakeSendGrid(api_key="SG.test-key")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def _fresh_postgres_database(template: str | None = None) -> Iterator[str]:
    """CREATE DATABASE (a copy of `template` when given: cheap), yield its URL, DROP it afterwards."""
    import uuid

    import psycopg

    name = f"funnel_test_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{clause}')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def funnel_server(project: Project) -> Iterator[Callable[..., object]]:
    """Start real `funnel serve` subprocesses in the project folder (free loopback port, /healthz waited for).

    `server = funnel_server("--now", "2026-12-08T16:00:00Z", env={...})`; `server.url`,
    `server.client()`; every server is stopped at the end of the test.
    """
    from web_server import FunnelServer

    started: list[FunnelServer] = []

    def start(*args: str, env: dict[str, str] | None = None) -> FunnelServer:
        server = FunnelServer(project.root, args, env)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def alembic_settings() -> Any:
    """alembic's settings for funnel's migrations (no alembic.ini: funnel passes the connection in)."""
    from alembic.config import Config as AlembicConfig

    import funnel

    settings = AlembicConfig()
    settings.set_main_option("script_location", str(Path(funnel.__file__).parent / "store" / "migrations"))
    return settings


def migrate_with_alembic(url: str, revision: str, *after: str) -> None:
    """An empty database brought to `revision` by alembic's migrations, then the SQL in `after`, in one transaction."""
    from alembic import command
    from sqlalchemy import create_engine

    settings = alembic_settings()
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            settings.attributes["connection"] = conn
            command.upgrade(settings, revision)
            for statement in after:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the local server (started by .ci/run), dropped afterwards."""
    with _fresh_postgres_database() as url:
        yield url


@pytest.fixture
def second_postgres_url() -> Iterator[str]:
    """Another fresh, empty PostgreSQL database, for tests that compare two."""
    with _fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def _postgres_template() -> Iterator[str]:
    """One database migrated to HEAD per test session (per xdist worker), copied for each test."""
    from sqlalchemy.engine import make_url

    from funnel.store.db import make_engine

    with _fresh_postgres_database() as url:
        make_engine(url).dispose()  # no connection may stay open: CREATE DATABASE ... TEMPLATE needs none
        yield str(make_url(url).database)


@pytest.fixture
def project_database(_postgres_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database already at the schema's HEAD (a copy of the session's template)."""
    with _fresh_postgres_database(_postgres_template) as url:
        yield url


def database_rows(url: str, tables: list[str] | None = None) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table (or of `tables`), sorted, for before/after comparisons."""
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            return {
                name: sorted((tuple(row) for row in conn.execute(table.select())), key=repr)
                for name, table in sorted(metadata.tables.items())
                if tables is None or name in tables
            }
    finally:
        engine.dispose()


class ProjectDatabase:
    """The project's database through its own DB-API driver (sqlite3 or psycopg), for tests
    that put hostile values straight into it; SQL is written with sqlite's `?` placeholders."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self.postgres = parsed.get_backend_name() == "postgresql"
        if self.postgres:
            import psycopg

            self._conn: Any = psycopg.connect(parsed.set(drivername="postgresql").render_as_string(False))
        else:
            import sqlite3

            self._conn = sqlite3.connect(str(parsed.database))

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s") if self.postgres else sql, params)

    def __enter__(self) -> ProjectDatabase:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self._conn.commit()
        else:
            self._conn.rollback()
        self._conn.close()


def project_db(project: Project) -> ProjectDatabase:
    """`with project_db(project) as db: db.execute("UPDATE ... WHERE id = ?", (1,))` on either database."""
    return ProjectDatabase(project.database_url)


#: the session dates sequences.yaml ships with (its webinar runs monthly): a test that writes its
#: own `sessions:` takes these out first (`without_shipped_sessions`)
SHIPPED_SESSIONS = (
    '    sessions:\n      - 2027-01-14 19:00\n    repeat: "FREQ=MONTHLY;BYDAY=2TH"\n    repeat_at: "19:00"\n'
)


def without_shipped_sessions(text: str) -> str:
    """sequences.yaml's text without its shipped session dates (see `SHIPPED_SESSIONS`)."""
    return text.replace(SHIPPED_SESSIONS, "")
