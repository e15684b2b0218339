"""Tracebacks fit for a log: where it failed and what kind of failure, never the data it failed on.

A database error's text carries the statement's values (SQLAlchemy's parameters,
PostgreSQL's DETAIL: "Key (email)=(ana@...) already exists"), and other exceptions may
carry anything in their message. So a logged failure keeps every frame (file, line,
code) and the exception's type, and of its message only what cannot hold a person's
data: a database's primary message and the SQL without its values. `funnel serve
--debug` logs the whole traceback instead.
"""

from __future__ import annotations

import sqlite3
import traceback

#: the longest SQL statement quoted (enough to tell which one it was)
_MAX_SQL = 300


def safe_traceback(exc: BaseException) -> str:
    """Like `traceback.format_exception`, with each message replaced by `safe_message`."""
    parts: list[str] = []
    for index, link in enumerate(_chain(exc)):
        if index:
            parts.append("\nThe above exception led to the following one:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_list(traceback.extract_tb(link.__traceback__)))
        parts.append(f"{_name(link)}: {safe_message(link)}\n")
    return "".join(parts).rstrip("\n")


def safe_message(exc: BaseException) -> str:
    """What of `exc`'s message may be logged: the database's own words without values, else nothing."""
    from sqlalchemy.exc import StatementError

    if isinstance(exc, StatementError):
        statement = " ".join((exc.statement or "").split())
        if len(statement) > _MAX_SQL:
            statement = statement[:_MAX_SQL] + "..."
        reason = (_driver_message(exc.orig) if exc.orig is not None else None) or _LEFT_OUT
        return f"{reason} [SQL: {statement}]" if statement else reason
    driver = _driver_message(exc)
    if driver is not None:
        return driver
    return _LEFT_OUT if exc.args else ""


_LEFT_OUT = "(message left out: it may hold personal data; run with --debug to see it)"


def database_message(exc: BaseException) -> str | None:
    """`safe_message` for a database error (SQLAlchemy's or a driver's); None for any other exception."""
    from sqlalchemy.exc import StatementError

    if isinstance(exc, StatementError) or _driver_message(exc) is not None:
        return safe_message(exc)
    return None


def _driver_message(exc: BaseException) -> str | None:
    """A database driver's error without its details (SQLite's message, PostgreSQL's primary one); None for others."""
    diag = getattr(exc, "diag", None)  # psycopg: the server's message in parts
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return str(primary)
    if isinstance(exc, sqlite3.Error):  # SQLite names tables and columns, never values
        return str(exc)
    if diag is not None:  # a psycopg error without a server message (a lost connection): its first line
        return str(exc).split("\n", 1)[0]
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions that led to it, the first cause first (as Python prints them)."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain[::-1]


def _name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
