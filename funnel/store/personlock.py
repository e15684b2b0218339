"""One person's changes, one at a time: the transaction that has an address to itself.

A form post, a confirming click and `contacts forget` for the same address may land at
the same moment (finding 3.3 of issue 16: an erasure racing a post left the post's data
on the erased row, and on PostgreSQL some deadlocked). Each now runs in `with_person`,
which takes the person's locks before it reads anything, always in the same order, and
retries from the start what the database refuses. Which locks, and what is retried, is
in `with_person`'s docstring.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col

from funnel.store.models import Contact

T = TypeVar("T")

#: attempts at one person's transaction before the error is let through
ATTEMPTS = 6
#: SQLSTATEs PostgreSQL answers when a transaction should simply be tried again
_RETRY_STATES = ("40001", "40P01")


def lock_key(digest: str) -> int:
    """The advisory-lock key of an address hash: 60 bits of it, so keys of two people rarely meet.

    (A single 64-bit key: it does not share the space of the per-run locks'
    two 32-bit keys, see `funnel.store.workers`.)
    """
    return int(digest[:15], 16)


def with_person(engine: Engine, digest: str, work: Callable[[Session], T]) -> T:
    """Run `work(session)` holding the address's lock, commit, and return what it returned.

    `work` may run more than once (a retried deadlock): it must start from
    what it reads in its session, nothing kept from an earlier attempt.

    Before it reads anything, it takes:

    - on SQLite, the database's write lock (`BEGIN IMMEDIATE`): every write is
      one at a time anyway, and taking the lock first means what the
      transaction read is still true when it writes;
    - on PostgreSQL, a transaction-scoped advisory lock keyed by the address
      hash (one person's changes queue behind each other, different people's
      do not), then the contact's row `FOR UPDATE` (`lock_contact`).

    Every caller takes them in that same order, so two of them never wait for
    each other crosswise. What PostgreSQL still refuses (a deadlock with a run
    that locked the person's enrollments first, a serialization failure) and a
    SQLite lock that outlasted its busy timeout are retried a few times from
    the start with a fresh session, as the database asks.
    """
    for attempt in range(1, ATTEMPTS + 1):
        session = Session(engine, expire_on_commit=False)
        try:
            connection = session.connection()
            if engine.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(digest)})
            result = work(session)
            session.commit()
            return result
        except DBAPIError as exc:
            session.rollback()
            if attempt == ATTEMPTS or not _worth_retrying(exc):
                raise
        finally:
            session.close()
        time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _worth_retrying(exc: DBAPIError) -> bool:
    state = getattr(exc.orig, "sqlstate", None)
    if state in _RETRY_STATES:
        return True
    return "database is locked" in str(exc.orig)


def lock_contact(session: Session, digest: str) -> Contact | None:
    """The contact with this address hash, read afresh; on PostgreSQL its row locked until the commit."""
    query = select(Contact).where(col(Contact.email_hash) == digest).execution_options(populate_existing=True)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.scalars(query).first()
