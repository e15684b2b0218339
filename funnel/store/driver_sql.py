"""A run's per-email statements, sent straight to the database driver.

A run writes a few rows for every email (the hand-over, the outcome, the enrollment's
next state). As SQLAlchemy expressions, each execution pays for building, cache keys
and parameter expansion more than the database takes, so these few statements are
plain SQL on a cursor of the session's own connection (inside its transaction).
Values go through each column's bind processor for this dialect, so what is stored is
byte-for-byte what the ORM would store (`tests/test_bulk.py`), and a driver error is
raised as SQLAlchemy's exception for it. SQL uses `?` marks, `%s` on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Column, Table
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from funnel.store.bulk import placeholder


class DriverSQL:
    """Plain-SQL execution on a session's connection, with the dialect's parameter marks."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.dialect = session.get_bind().dialect
        self.postgres = self.dialect.name == "postgresql"
        self._mark = placeholder(self.dialect)
        self._processors: dict[Column[Any], Callable[[Any], Any]] = {}
        #: what the driver raises (raised on as SQLAlchemy's exception for it)
        self._error: type[Exception] = self.dialect.loaded_dbapi.Error

    def _sql(self, sql: str) -> str:
        return sql if self._mark == "?" else sql.replace("?", self._mark)

    @staticmethod
    def marks(count: int) -> str:
        """`?, ?, ?` for an IN list of `count` values."""
        return ", ".join("?" * count)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The driver's cursor, the statement run: its rows as tuples, its `rowcount` for a write."""
        return self._run("execute", self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = [tuple(row) for row in rows]
        if batch:
            self._run("executemany", self._sql(sql), batch)

    def _run(self, method: str, statement: str, params: Any) -> Any:
        cursor = self.session.connection().connection.cursor()
        try:
            getattr(cursor, method)(statement, params)
        except self._error as exc:
            cursor.close()
            raise DBAPIError.instance(
                statement, params, exc, self._error, dialect=self.dialect, ismulti=method == "executemany"
            ) from exc
        return cursor

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
        self.update_each(
            table.name,
            columns,
            [(*(c(v) for c, v in zip(convert, values, strict=True)), row_id) for row_id, values in rows],
        )

    def update_each(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        add: Sequence[str] = (),
        where: str = "",
        params: Sequence[Any] = (),
    ) -> None:
        """For each row (its values for `columns`, then its id): `UPDATE table SET column = value, ...
        WHERE id = ? [AND where]`, where a column named in `add` is added to instead (`n = n + value`).

        On SQLite, one statement for a whole batch (`UPDATE ... FROM` a list of
        VALUES), not `executemany`: the driver takes a step per row and lets the
        GIL go at every step, and in a run each of those hand-overs, with the
        sending threads waiting for the GIL, costs a switch of threads. `where`
        may name only the table's own columns, unqualified; its `params` follow
        the rows'. On PostgreSQL, psycopg's `executemany` (it sends them in one
        pipeline).
        """
        if not rows:
            return
        condition = f" AND {where}" if where else ""

        def assignments(values: Sequence[str]) -> str:
            pairs = zip(columns, values, strict=True)
            return ", ".join(f"{c} = {c} + {v}" if c in add else f"{c} = {v}" for c, v in pairs)

        if self.postgres:
            self.executemany(
                f"UPDATE {table} SET {assignments(['?'] * len(columns))} WHERE id = ?{condition}",  # noqa: S608
                ([*row, *params] for row in rows),
            )
            return
        # SQLite names the columns of a VALUES list column1, column2, ...: no name a table of ours has,
        # so `where` and `n = n + ...` read the table's own. The statement must start with UPDATE:
        # Python's sqlite3 opens its transaction only before INSERT, UPDATE, DELETE and REPLACE (a
        # `WITH ... UPDATE` would be committed on its own, outside the run's transaction)
        names = [f"v.column{i + 1}" for i in range(len(columns))]
        key = f"v.column{len(columns) + 1}"
        row_marks = "(" + ", ".join("?" * (len(columns) + 1)) + ")"
        per_statement = max(1, min(_ROWS_PER_UPDATE, _SQLITE_MAX_MARKS // (len(columns) + 1 + len(params))))
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            self.execute(
                f"UPDATE {table} SET {assignments(names)} FROM (VALUES {', '.join([row_marks] * len(chunk))}) AS v"  # noqa: S608
                f" WHERE {table}.id = {key}{condition}",
                [*(value for row in chunk for value in row), *params],
            )


#: rows per `update_each` statement on SQLite, and the bound values SQLite takes in one (3.32+)
_ROWS_PER_UPDATE = 500
_SQLITE_MAX_MARKS = 32766


def _same(value: Any) -> Any:
    return value
