"""A run's per-email statements, sent straight to the database driver.

A run writes a few rows for every email it sends (the hand-over, the
outcome, the enrollment's next state). Built as SQLAlchemy expressions,
each execution pays for building, cache-key generation and parameter
expansion several times what the database itself takes; the handful of
statements here are plain SQL strings instead, run on the session's own
connection (so inside its transaction) with `exec_driver_sql`. Values are
converted with each column's own bind processor, so what is stored is
byte-for-byte what the ORM would store (e.g. UTC datetimes on SQLite).

SQL is written with `?` marks and no `?` or `%` anywhere else; on
PostgreSQL (psycopg) the marks become `%s`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Column, Table
from sqlmodel import Session


class DriverSQL:
    """Plain-SQL execution on a session's connection, with the dialect's parameter marks."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.dialect = session.get_bind().dialect
        self.postgres = self.dialect.name == "postgresql"
        self._processors: dict[Column[Any], Callable[[Any], Any]] = {}

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    @staticmethod
    def marks(count: int) -> str:
        """`?, ?, ?` for an IN list of `count` values."""
        return ", ".join("?" * count)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The driver's result (rows as tuples; `rowcount` for a write)."""
        return self.session.connection().exec_driver_sql(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = [tuple(row) for row in rows]
        if batch:
            self.session.connection().exec_driver_sql(self._sql(sql), batch)

    def converter(self, column: Column[Any]) -> Callable[[Any], Any]:
        """The column type's bind processor for this dialect (identity when it has none)."""
        found = self._processors.get(column)
        if found is None:
            processor = column.type.bind_processor(self.dialect)
            found = self._processors[column] = processor if processor is not None else _same
        return found

    def update_by_id(self, table: Table, columns: Sequence[str], rows: Iterable[tuple[int, Sequence[Any]]]) -> None:
        """`UPDATE table SET columns WHERE id = ?` for each (id, values), values converted per column."""
        convert = [self.converter(table.c[name]) for name in columns]
        assignments = ", ".join(f"{name} = ?" for name in columns)
        self.executemany(
            f"UPDATE {table.name} SET {assignments} WHERE id = ?",  # noqa: S608  # names come from our own tables
            ([*(c(v) for c, v in zip(convert, values, strict=True)), row_id] for row_id, values in rows),
        )

    def insert_ignore(self, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
        """`INSERT ... ON CONFLICT (keys) DO NOTHING` for rows that all have the same columns."""
        if not rows:
            return
        columns = list(rows[0])
        convert = [self.converter(table.c[name]) for name in columns]
        self.executemany(
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({self.marks(len(columns))})"  # noqa: S608
            f" ON CONFLICT ({', '.join(keys)}) DO NOTHING",
            ([c(row[name]) for c, name in zip(convert, columns, strict=True)] for row in rows),
        )


def _same(value: Any) -> Any:
    return value
