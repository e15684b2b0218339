"""Several `funnel run` workers on one PostgreSQL database, and the locks that let them share.

On SQLite one run at a time holds the run lock (`funnel.store.db.run_lock`); a second
exits 75. On PostgreSQL any number of runs work side by side: due enrollments are taken
page by page with `FOR UPDATE SKIP LOCKED`, the sources are read one worker at a time
(`ingest_turn`), and each run holds an advisory lock for its whole life (`RunKeeper`)
so recovery settles only dead runs' rows (`dead_runs`). The unique (enrollment, step)
row stays the last guard. How each lock behaves is in docs/architecture.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Select, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import col

from funnel.store.models import Contact

#: namespace (first of two 32-bit keys) of the per-run liveness locks
RUN_KEY_SPACE = 0x2F5A
#: advisory-lock key held by the worker reading the sources
INGEST_KEY = 0x2F5A_7C33
#: how long a worker waits for another one that is reading the sources
INGEST_WAIT = 300.0
#: enrollments taken at a time by a worker that shares the work (small, so workers share evenly)
SHARED_PAGE = 50


def shares_work(engine: Engine) -> bool:
    """True when several runs may work on this database at once (PostgreSQL)."""
    return engine.dialect.name == "postgresql"


def lock_due_page(query: Select, engine: Engine) -> Select:  # type: ignore[type-arg]
    """Take the page's rows for this worker; rows another worker is deciding are skipped, not waited for."""
    if not shares_work(engine):
        return query
    return query.with_for_update(skip_locked=True)


def lock_contacts(contact_ids: list[int], engine: Engine) -> Select:  # type: ignore[type-arg]
    """The page's people, read afresh; on PostgreSQL locked (in id order, like hand-overs) until the claims commit."""
    query = (
        select(Contact)
        .where(col(Contact.id).in_(contact_ids))
        .order_by(col(Contact.id))
        .execution_options(populate_existing=True)
    )
    return query.with_for_update() if shares_work(engine) else query


class RunKeeper:
    """Holds the advisory lock that says "run N is alive", on a connection of its own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None
        self._run_id: int | None = None

    def hold(self, run_id: int) -> None:
        """Take the lock of a run just created (nobody else can hold it: the id is new)."""
        if not shares_work(self.engine):
            return
        conn = self.engine.connect()
        conn.execute(text("SELECT pg_advisory_lock(:space, :run)"), {"space": RUN_KEY_SPACE, "run": run_id})
        conn.commit()  # a session lock outlives the transaction; nothing stays open
        self._conn, self._run_id = conn, run_id

    def release(self) -> None:
        """Let go once every row of the run has its outcome (after the last commit)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:space, :run)"), {"space": RUN_KEY_SPACE, "run": self._run_id})
            conn.commit()
        except DBAPIError:
            # the server ended this session meanwhile (a restart, idle_session_timeout, a proxy):
            # the lock went with it, and the run's outcomes are already recorded, so the run is
            # not failed for it; other workers may have taken the run for dead, which the
            # ledger's conditional moves make harmless (`funnel.store.ledger`)
            conn.invalidate()
        finally:
            conn.close()  # closing alone would keep the lock on a pooled connection


def liveness_file(engine: Engine, run_id: int) -> Path | None:
    """On SQLite, the file that `funnel serve` holds locked while it sends as run `run_id` (None: no file database).

    `funnel run` holds the run lock, so on SQLite no other *run* is alive
    while it recovers; but `funnel serve` sends at once (`funnel.run.instant`)
    beside it, under a run id of its own, and holds this OS lock meanwhile
    (released by the OS when it dies).
    """
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    # named after the file itself: a serve that reaches it through a symlink and a cron run that
    # names it directly must find the same lock, or the run takes the live serve for dead
    return Path(f"{os.path.realpath(database)}.serve-{int(run_id)}.lock")


@contextmanager
def _sqlite_dead_runs(engine: Engine, wanted: list[int]) -> Iterator[set[int]]:
    """Every candidate is dead (the caller holds the run lock) except a serve that still holds its file."""
    from filelock import FileLock, Timeout

    dead: set[int] = set()
    held: list[tuple[FileLock, Path]] = []
    try:
        for run_id in wanted:
            path = liveness_file(engine, run_id)
            if path is None or not path.exists():
                dead.add(run_id)
                continue
            lock = FileLock(str(path), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                continue  # a serve that is alive and sending: its rows are its own
            held.append((lock, path))
            dead.add(run_id)
        yield dead
    finally:
        for lock, path in held:
            lock.release()
            path.unlink(missing_ok=True)


@contextmanager
def dead_runs(engine: Engine, candidates: Iterable[int]) -> Iterator[set[int]]:
    """The runs among `candidates` that are dead, locked until the caller has settled their rows.

    SQLite: the caller holds the run lock, so every other run is dead, except
    a `funnel serve` that holds its liveness file (`liveness_file`).
    PostgreSQL: a run is dead when its liveness lock can be taken; holding it
    while recovering keeps a second recoverer off the same rows.
    """
    wanted = sorted(set(candidates))
    if not shares_work(engine):
        with _sqlite_dead_runs(engine, wanted) as dead:
            yield dead
        return
    with engine.connect() as conn:
        got: list[int] = []
        try:
            for run_id in wanted:
                taken = conn.execute(
                    text("SELECT pg_try_advisory_lock(:space, :run)"), {"space": RUN_KEY_SPACE, "run": run_id}
                ).scalar()
                if taken:
                    got.append(run_id)
            conn.commit()
            yield set(got)
        finally:
            for run_id in got:
                conn.execute(text("SELECT pg_advisory_unlock(:space, :run)"), {"space": RUN_KEY_SPACE, "run": run_id})
            conn.commit()


@contextmanager
def ingest_turn(engine: Engine, wait: float = INGEST_WAIT) -> Iterator[bool]:
    """Read the sources one worker at a time; yields False if the turn did not come within `wait` seconds.

    The worker that waited then finds the files already read (unchanged: one
    hash each) and the enrollments made, and goes on to send.
    """
    if not shares_work(engine):
        yield True
        return
    with engine.connect() as conn:
        # for this transaction only: the pooled connection keeps no odd setting
        conn.execute(text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": f"{int(wait * 1000)}ms"})
        try:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": INGEST_KEY})
        except OperationalError:  # lock_timeout: the reader is stuck; send what is due without it
            conn.rollback()
            yield False
            return
        conn.commit()
        try:
            yield True
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": INGEST_KEY})
            conn.commit()
