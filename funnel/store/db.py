"""Engine, schema migrations, settings and the run lock.

SQLite is the embedded default (a file beside sequences.yaml, WAL mode, a
busy timeout so a concurrent `funnel serve` does not fail a run), one run at
a time (the run lock). PostgreSQL works through the same code, and there
several runs share the work (`funnel.store.workers`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, create_engine

from funnel.errors import ConfigError, FunnelError, LockedError, MigrationError
from funnel.store import models  # (importing it registers the tables)
from funnel.store.bulk import dialect_insert
from funnel.store.migrations import HEAD
from funnel.store.private import create_private_file

#: advisory-lock key held while creating the schema
_PG_SCHEMA_LOCK_KEY = 0x2F5A_7C32
#: how long a command waits for another one that is creating or upgrading the schema
MIGRATION_WAIT = 120.0


def database_url(config_folder: Path) -> str:
    """FUNNEL_DATABASE_URL, else `sqlite:///funnel.db` beside the config file."""
    url = os.environ.get("FUNNEL_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{config_folder / 'funnel.db'}"


def make_engine(url: str) -> Engine:
    """Create the engine and the tables (idempotent).

    A new SQLite file is created mode 0600 before SQLite opens it (it holds
    people's data and, without FUNNEL_SECRET_KEY, the key that signs their
    links); SQLite gives its -wal and -shm files the main file's mode.
    """
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(
            f"FUNNEL_DATABASE_URL {url!r} is not a database URL: "
            "write sqlite:///path/to/funnel.db or postgresql+psycopg://user@host/db"
        ) from None
    # a failing statement's error text never carries its values (addresses, names, the words of a
    # form or a reply): errors are logged and printed, and people's data stays out of logs
    kwargs: dict[str, Any] = {"hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        if parsed.database and parsed.database != ":memory:":
            _check_sqlite_file(Path(parsed.database))
            if not parsed.query.get("uri"):  # a file: URI names its file in its own way
                create_private_file(Path(parsed.database))
    elif parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg"))
    try:
        engine = create_engine(url, **kwargs)
    except Exception as exc:  # NoSuchModuleError, ArgumentError, a driver that is not installed
        raise ConfigError(
            f"FUNNEL_DATABASE_URL names an unknown database kind {parsed.drivername!r} "
            f"({exc.__class__.__name__}): write sqlite:///path/to/funnel.db or postgresql://user@host/db"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        _migrated(engine, parsed)
    except BaseException:
        engine.dispose()  # the caller gets no engine to close: its connections go now
        raise
    return engine


def _migrated(engine: Engine, parsed: URL) -> None:
    """`migrate`, with its failures told in one sentence."""
    try:
        migrate(engine)
    except FunnelError:
        raise
    except OperationalError as exc:
        if not _cannot_connect(exc):
            raise MigrationError(_migration_failed(exc)) from exc
        raise ConfigError(
            f"cannot open the database {parsed.render_as_string(hide_password=True)} ({exc.__class__.__name__}): "
            "check FUNNEL_DATABASE_URL and that the server is running"
        ) from exc
    except Exception as exc:
        raise MigrationError(_migration_failed(exc)) from exc


def _check_sqlite_file(path: Path) -> None:
    """Refuse, in one sentence, a SQLite path that cannot work: a typo'd folder, a read-only file.

    Creating the missing folders would turn a mistyped FUNNEL_DATABASE_URL into a
    new, empty database and a funnel that silently starts over.
    """
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(
            f"FUNNEL_DATABASE_URL: the folder {folder} does not exist: check the path "
            "(sqlite:/// then the path; four slashes for an absolute one), or create the folder"
        )
    if path.is_dir():
        raise ConfigError(f"FUNNEL_DATABASE_URL: {path} is a folder: name a file in it, e.g. {path / 'funnel.db'}")
    if path.exists() and not _writable(path):
        raise ConfigError(
            f"the database file {path} is read-only: make it writable (chmod u+w {path}) "
            "or point FUNNEL_DATABASE_URL at a writable copy"
        )
    if not _writable(folder):
        raise ConfigError(
            f"the database folder {folder} is read-only (SQLite writes its journal beside the file): "
            f"make it writable (chmod u+w {folder}) or move the database"
        )


def _writable(path: Path) -> bool:
    """Writable by us, and not marked read-only (root may write anywhere; a 0444 file is still a mistake)."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None: new, or made before migrations)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine, *, wait: float = MIGRATION_WAIT) -> None:
    """Bring the schema up to `migrations.HEAD`, one command at a time.

    The usual case, a database already at HEAD, costs one query and does not
    load alembic; nor does a new database (`_create_at_head`). An older one
    is upgraded by alembic's migrations. Several commands starting at once
    on a new database (two cron runs, `funnel serve`, `contacts ...`) take turns: on PostgreSQL
    through an advisory lock held by the migrating transaction, on SQLite
    through a file lock beside the database (SQLite's own locking does not
    stop two processes that both saw "no schema" from both creating it). The
    loser waits up to `wait` seconds, finds the schema made, and goes on.
    """
    if current_revision(engine) == HEAD:
        return
    with _migration_lock(engine, wait):
        if current_revision(engine) == HEAD:  # made by another command while we waited
            return
        _upgrade(engine)


@contextmanager
def _migration_lock(engine: Engine, wait: float) -> Iterator[None]:
    """A file lock beside a SQLite file (PostgreSQL locks inside `_upgrade`)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    lock = FileLock(f"{database}.migrate.lock", timeout=wait)
    try:
        lock.acquire()
    except Timeout:
        raise LockedError(
            f"another funnel command has been upgrading the database schema for {wait:.0f} seconds; try again later"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _cannot_connect(exc: OperationalError) -> bool:
    """True when the database could not be reached or opened at all (the URL's business)."""
    return exc.connection_invalidated or exc.statement is None or "unable to open" in str(exc)


def _migration_failed(exc: BaseException) -> str:
    return (
        f"the database schema could not be brought up to date ({_first_line(exc)}); "
        "nothing was changed: run again with --debug for details"
    )


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _upgrade(engine: Engine) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK_KEY})
        elif conn.dialect.name == "sqlite":
            # pysqlite opens no transaction before DDL: take the write lock now, so two first
            # runs at once take turns instead of both creating the tables (busy_timeout waits)
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        tables = inspect(conn)
        has_versions, has_contacts = tables.has_table("alembic_version"), tables.has_table("contacts")
        if not has_versions and not has_contacts:
            _create_at_head(conn)
            return
        from alembic import command
        from alembic.config import Config as AlembicConfig

        settings = AlembicConfig()
        settings.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        settings.attributes["connection"] = conn
        if has_contacts and not has_versions:
            command.stamp(settings, "0001")  # made by the first versions, before migrations existed
        command.upgrade(settings, "head")


def _create_at_head(conn: Connection) -> None:
    """A new database: the models' tables at once, marked as at HEAD, in the caller's transaction.

    What running every migration from nothing builds (tests/test_db.py
    compares the two schemas, table by table, on both databases), without
    loading alembic: with its dialect modules that is about a fifth of a
    second, at the start of every first run. `checkfirst=False`: a table of
    the same name left by something else is an error, as it would be for
    the migrations, not a table silently taken over.
    """
    # funnel's own tables only: a program that uses funnel beside SQLModel models of its own shares the registry
    SQLModel.metadata.create_all(conn, tables=models.funnel_tables(), checkfirst=False)
    # alembic's own version table, as alembic makes it
    conn.exec_driver_sql(
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
        "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
    )
    conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:head)"), {"head": HEAD})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # erased people must really be gone from the file, not left in free pages
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def _switch_to_wal(cursor: Any, seconds: float = 30.0) -> None:
    """WAL mode, waiting while another process switches a new file at the same moment.

    Changing the journal mode answers "database is locked" at once, without
    SQLite's busy handler, when another connection is doing the same: two
    commands starting together on a new file must not fail for that.
    """
    import sqlite3

    deadline = time.monotonic() + seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def put_setting(session: Session, key: str, value: str) -> None:
    """Insert or replace one setting; safe when several runs write it at once."""
    builder = dialect_insert(session.get_bind().dialect.name)
    statement = builder(models.Setting).values(key=key, value=value)
    session.execute(statement.on_conflict_do_update(index_elements=["key"], set_={"value": value}))


def get_or_put_setting(session: Session, key: str, value: str) -> str:
    """The stored value of `key`, storing `value` first if there is none (first writer wins)."""
    builder = dialect_insert(session.get_bind().dialect.name)
    session.execute(builder(models.Setting).values(key=key, value=value).on_conflict_do_nothing(index_elements=["key"]))
    session.commit()
    stored = session.get(models.Setting, key)
    assert stored is not None
    return stored.value


def flush_to_disk(engine: Engine) -> None:
    """After an erasure: fold the write-ahead log into the database file and empty it,
    so no old copy of a page with personal data stays behind (SQLite only)."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


@contextmanager
def run_lock(engine: Engine) -> Iterator[None]:
    """On SQLite, hold the run lock or raise LockedError at once (exit 75).

    SQLite: an OS file lock beside the database, released by the OS when
    the holder dies, so a killed run never blocks the next one. PostgreSQL
    has no run lock: several runs share the work (`funnel.store.workers`).
    """
    if engine.dialect.name != "sqlite":
        yield
        return
    database = engine.url.database or "funnel.db"
    lock = FileLock(f"{database}.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise LockedError("another `funnel run` is still running on this database; try again later") from None
    try:
        yield
    finally:
        lock.release()
