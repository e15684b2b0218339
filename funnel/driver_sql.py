"""A run's per-email statements, sent straight to the database driver.

A run writes a few rows for every email it sends (the hand-over, the
outcome, the enrollment's next state). Built as SQLAlchemy expressions,
each execution pays for building, cache-key generation and parameter
expansion several times what the database itself takes; the handful of
statements here are plain SQL strings instead, run on the session's own
connection (so inside its transaction) with `exec_driver_sql`. Values are
converted with the bind processor of each column's type *for this dialect*
(`dialect_impl`: on SQLite a datetime becomes SQLAlchemy's own text form, not
the driver's), so what is stored is byte-for-byte what the ORM would store;
`tests/test_bulk.py` checks it. Inserts go through `funnel.bulk.InsertIgnore`,
the import's prepared statement.

SQL is written with `?` marks and no `?` or `%` anywhere else; on
PostgreSQL (psycopg) the marks become `%s`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Column, Table
from sqlmodel import Session

from funnel.bulk import placeholder


class DriverSQL:
    """Plain-SQL execution on a session's connection, with the dialect's parameter marks."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.dialect = session.get_bind().dialect
        self.postgres = self.dialect.name == "postgresql"
        self._mark = placeholder(self.dialect)
        self._processors: dict[Column[Any], Callable[[Any], Any]] = {}

    def _sql(self, sql: str) -> str:
        return sql if self._mark == "?" else sql.replace("?", self._mark)

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
            processor = column.type.dialect_impl(self.dialect).bind_processor(self.dialect)
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


def _same(value: Any) -> Any:
    return value
