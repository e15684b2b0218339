"""Database operations: copy a whole funnel database to a new one, back up a SQLite file.

`funnel db copy --to URL` is how a practice moves from the embedded SQLite file
to PostgreSQL (or back, or to a new server): the target is brought to the
schema's HEAD by the normal start path, must hold no rows, and receives every
table in batches inside one transaction, so a failed copy leaves it empty. Row
counts are compared afterwards. The secret key kept in `settings` travels with
the data, so unsubscribe links already sent keep working against the copy.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection, Engine, make_url

from funnel.errors import FunnelError, UsageError
from funnel.store.db import make_engine, run_lock
from funnel.store.models import funnel_tables
from funnel.store.private import create_private_file, make_private_dir

#: rows read and written per round trip: small enough to stay lean on a big list
BATCH_SIZE = 2000


def shown(url: str) -> str:
    """A URL fit for messages: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the given URL"


def row_counts(conn: Connection) -> dict[str, int]:
    return {
        table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one()) for table in funnel_tables()
    }


def _same_database(source: Engine, target: Engine) -> bool:
    return source.url.render_as_string(hide_password=False) == target.url.render_as_string(hide_password=False)


def copy_database(
    source_url: str, target_url: str, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Copy every row of the funnel database at `source_url` into the empty one at `target_url`.

    Both are brought to HEAD first. Holds the run lock on both, so no `funnel run`
    changes either meanwhile (it would exit 75). Returns rows copied per table.
    """
    source = make_engine(source_url)
    target = make_engine(target_url)
    try:
        if _same_database(source, target):
            raise UsageError(f"--to names the database being copied ({shown(target_url)}): give a new, empty database")
        with run_lock(source), run_lock(target):
            return _copy(source, target, progress)
    finally:
        source.dispose()
        target.dispose()


def _copy(source: Engine, target: Engine, progress: Callable[[str, int], None] | None) -> dict[str, int]:
    # one snapshot of the source for the whole copy, however long it takes
    read_options = {"isolation_level": "REPEATABLE READ"} if source.dialect.name == "postgresql" else {}
    with source.connect().execution_options(**read_options) as reader, target.begin() as writer:
        filled = {name: n for name, n in row_counts(writer).items() if n}
        if filled:
            listed = ", ".join(f"{name} ({n} rows)" for name, n in sorted(filled.items()))
            raise UsageError(
                f"the target database {shown(str(target.url))} is not empty ({listed}): "
                "give a new, empty database, so nothing there is mixed up or overwritten"
            )
        with reader.begin():
            if reader.dialect.name == "sqlite":
                reader.exec_driver_sql("BEGIN")  # pysqlite begins only before writes: ask for the read snapshot
            expected = row_counts(reader)
            for table in funnel_tables():
                order = list(table.primary_key.columns)
                result = reader.execution_options(yield_per=BATCH_SIZE).execute(select(table).order_by(*order))
                copied = 0
                for batch in result.partitions():
                    writer.execute(insert(table), [row._asdict() for row in batch])
                    copied += len(batch)
                    if progress:
                        progress(table.name, copied)
        if writer.dialect.name == "postgresql":
            _restart_id_sequences(writer)
        copied_counts = row_counts(writer)
        if copied_counts != expected:
            wrong = ", ".join(
                f"{name}: {expected[name]} read, {copied_counts[name]} written"
                for name in expected
                if expected[name] != copied_counts[name]
            )
            raise FunnelError(f"the copy does not match the source ({wrong}); nothing was kept in the target")
    return copied_counts


def _restart_id_sequences(conn: Connection) -> None:
    """Rows came with their ids: move each serial counter past them, or the next insert would collide."""
    for table in funnel_tables():
        for column in table.primary_key.columns:
            if column.autoincrement is True or (column.autoincrement == "auto" and len(table.primary_key.columns) == 1):
                sequence = conn.execute(
                    text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": column.name}
                ).scalar()
                if sequence:
                    highest = f'SELECT COALESCE(MAX("{column.name}"), 0) + 1 FROM "{table.name}"'
                    conn.execute(text(f"SELECT setval(:s, ({highest}), false)"), {"s": sequence})


def backup_sqlite(source_url: str, destination: Path) -> int:
    """Copy a live SQLite database into `destination` with SQLite's online backup API.

    Safe while `funnel run` or `funnel serve` write to it: the backup is one
    consistent snapshot, created mode 0600 (it holds everything the database
    does). Returns the size of the backup in bytes.
    """
    url = make_url(source_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        raise UsageError(
            f"`funnel db backup` backs up a SQLite file, and the database is {shown(source_url)}: "
            "for PostgreSQL use pg_dump (see the README's Operations section)"
        )
    if not Path(url.database).exists():
        raise UsageError(f"there is no database at {url.database} yet: check FUNNEL_DATABASE_URL or --config")
    if destination.exists():
        raise UsageError(f"{destination} already exists: give a new file name, so no backup is overwritten")
    make_engine(source_url).dispose()  # a database from an older release is brought to HEAD first
    make_private_dir(destination.parent)
    # made empty and 0600 before SQLite opens it (SQLite would make it as the umask says, and its
    # journal follows the file's mode); O_EXCL: a file that appeared meanwhile is not overwritten
    if not create_private_file(destination):
        raise UsageError(f"{destination} already exists: give a new file name, so no backup is overwritten")
    with sqlite3.connect(url.database) as live, sqlite3.connect(destination) as copy:
        live.backup(copy)
    live.close()
    copy.close()
    return destination.stat().st_size
