"""Set-based statements for large imports, without SQLAlchemy's per-row work.

A first import writes a contact, tags and enrollments for every row, and through
SQLAlchemy Core each value of each row goes through parameter construction and its
type's bind processor, which cost more CPU than the database's own work. Here the
statement text is built once, each column's bind processor is taken from its type (so
values are stored exactly as the ORM stores them) but run once per distinct object,
and rows go to the driver's `executemany` as plain tuples. Reads are split the same
way (`probe_in`). SQLite (3.24+) and PostgreSQL both understand `ON CONFLICT DO NOTHING`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Integer, Table
from sqlalchemy.engine import Dialect
from sqlmodel import Session

#: keys per `IN (...)` probe: well under SQLite's bound-parameter limit
PROBE_CHUNK = 1000
#: SQLite page cache during an import, in KiB (the default is 2,000)
IMPORT_CACHE_KIB = 32768
#: SQLite's largest row id: once a table holds it, new rows get free ids at random
_LARGEST_ROWID = 2**63 - 1
#: rows per multi-row INSERT ... RETURNING: with 10 columns, well under SQLite's limit of 32,766 values
ROWS_PER_STATEMENT = 500


def dialect_insert(dialect_name: str) -> Callable[..., Any]:
    """The `insert` of this dialect (for ON CONFLICT), imported only where it is used.

    SQLAlchemy's PostgreSQL package loads every PostgreSQL driver's dialect,
    asyncpg's with asyncio: a cost paid at every start of a command on SQLite
    (figures: docs/performance.md).
    """
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def placeholder(dialect: Dialect) -> str:
    """The driver's positional parameter mark: `?` for sqlite3, `%s` for psycopg."""
    return "?" if dialect.paramstyle == "qmark" else "%s"


def _converted_column(process: Callable[[Any], Any], values: Sequence[Any]) -> list[Any]:
    """`process` applied to one column of a batch, once per distinct object.

    An import hands the same objects down a column (`now`, the webinar start
    and the first look it remembers, True and False, the one empty `fields`),
    so telling them apart by identity finds nearly every repeat, at C speed,
    and can never confuse two values that compare equal but convert apart
    (the repeated hour when clocks go back; True and 1): the same object
    converts alike.
    """
    ids = list(map(id, values))
    distinct = dict(zip(ids, values, strict=True))  # `values` keeps every object alive meanwhile
    if len(distinct) == len(ids):
        return list(map(process, values))
    converted = {key: process(value) for key, value in distinct.items()}
    return list(map(converted.__getitem__, ids))


def insert_ignore(session: Session, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING for many rows (SQLite and PostgreSQL).

    One statement executed for all rows (SQLAlchemy batches it), rather than
    one giant VALUES list compiled anew for every batch size.
    """
    if not rows:
        return
    builder = dialect_insert(session.get_bind().dialect.name)
    session.execute(builder(table).on_conflict_do_nothing(index_elements=list(keys)), rows)


class InsertIgnore:
    """`INSERT INTO table (columns) VALUES (...) ON CONFLICT (keys) DO NOTHING`, prepared once.

    Rows are sequences in `columns` order; prepared once per import.
    """

    def __init__(self, session: Session, table: Table, columns: Sequence[str], keys: Sequence[str]) -> None:
        self.session = session
        dialect = session.get_bind().dialect
        quote = dialect.identifier_preparer.quote
        self.quote = quote
        self.dialect_name = dialect.name
        self.driver = dialect.driver
        self.table_name = quote(table.name)
        #: where the conflict key sits in a row (a single-column key), and the table's integer id
        self.key_column = keys[0]
        self.key_position = list(columns).index(keys[0]) if len(keys) == 1 else None
        primary = list(table.primary_key.columns)
        self.id_column = primary[0].name if len(primary) == 1 and isinstance(primary[0].type, Integer) else None
        #: a database without INSERT ... RETURNING (`returning` then answers None, but SQLite gets by without)
        self.can_return = bool(dialect.insert_returning)
        self.head = f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) VALUES "
        self.row_marks = f"({', '.join(placeholder(dialect) for _ in columns)})"
        self.tail = f" ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO NOTHING"
        self.sql = self.head + self.row_marks + self.tail
        self.converters: list[tuple[int, Callable[[Any], Any]]] = []
        for position, name in enumerate(columns):
            process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self.converters.append((position, process))

    def run(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert `rows`; those that conflict on the keys are left out."""
        if rows:
            self.session.connection().exec_driver_sql(self.sql, self._params(rows))  # type: ignore[arg-type]

    def returning(self, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> list[tuple[Any, ...]] | None:
        """Insert `rows` and answer `columns` of those actually inserted (not of those that conflicted).

        So the caller knows, without reading them back, which rows it created
        and their ids, and which were there already (maybe just made by a
        concurrent worker). PostgreSQL answers with INSERT ... RETURNING, many
        rows a statement; SQLite by the ids it gave (`_returning_by_id`). None
        when neither works (nothing was inserted then: use `run`).
        """
        if self.dialect_name == "sqlite" and self.key_position is not None and self.id_column is not None:
            return self._returning_by_id(rows, columns)
        if not self.can_return:
            return None
        params = self._params(rows)
        tail = f"{self.tail} RETURNING {', '.join(self.quote(c) for c in columns)}"
        if self.driver == "psycopg":
            return self._returning_psycopg(params, tail)
        cursor = self.session.connection().connection.cursor()
        found: list[tuple[Any, ...]] = []
        try:
            for start in range(0, len(params), ROWS_PER_STATEMENT):
                chunk = params[start : start + ROWS_PER_STATEMENT]
                # one statement of many rows (a full chunk is the same text each time: prepared once)
                cursor.execute(self.head + ", ".join([self.row_marks] * len(chunk)) + tail, _flat(chunk))
                found.extend(cursor.fetchall())
        finally:
            cursor.close()
        return found

    def _returning_psycopg(self, params: Sequence[Sequence[Any]], tail: str) -> list[tuple[Any, ...]]:
        """psycopg: one short statement sent for every row in a pipeline, each answering its own row.

        (psycopg parses a long many-row statement's placeholders in Python
        each time, which cost more than the insert itself.)
        """
        cursor = self.session.connection().connection.cursor()
        found: list[tuple[Any, ...]] = []
        try:
            cursor.executemany(self.head + self.row_marks + tail, params, returning=True)  # type: ignore[call-arg]
            while True:
                found.extend(cursor.fetchall())
                if not cursor.nextset():
                    break
        finally:
            cursor.close()
        return found

    def _returning_by_id(self, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> list[tuple[Any, ...]] | None:
        """SQLite: one `executemany`; which rows went in and their ids follow from how SQLite gives ids.

        Cheaper there than a many-row INSERT ... RETURNING (which SQLite runs
        about half as fast). SQLite gives a new row the largest id + 1, and
        the transaction's write lock, taken by this insert if not before,
        keeps other writers out until the commit: the rows that went in (the
        insert's row count) hold the ids just below the largest one now. So
        when all of them went in, nothing is read back; when some were there
        already, only the rows with those ids are read. Once a table holds
        the largest possible id SQLite picks free ones at random: then None
        (nothing inserted: the caller looks first and inserts with `run`).
        The one batch that reaches that id is answered as none inserted (its
        rows are found as ones that were there: right, but not counted new).
        """
        assert self.key_position is not None and self.id_column is not None
        quote, identity = self.quote, self.quote(self.id_column)
        connection = self.session.connection()
        largest_sql = f"SELECT max({identity}) FROM {self.table_name}"
        if connection.exec_driver_sql(largest_sql).scalar() == _LARGEST_ROWID:
            return None
        inserted = connection.exec_driver_sql(self.sql, self._params(rows)).rowcount  # type: ignore[arg-type]
        if not inserted:
            return []
        largest = int(connection.exec_driver_sql(largest_sql).scalar_one())
        if largest >= _LARGEST_ROWID:
            return []
        first = largest - inserted + 1
        if inserted == len(rows) and set(columns) <= {self.key_column, self.id_column}:
            at = self.key_position
            given = {self.key_column: [row[at] for row in rows], self.id_column: range(first, largest + 1)}
            return list(zip(*(given[name] for name in columns), strict=True))
        query = f"SELECT {', '.join(quote(c) for c in columns)} FROM {self.table_name} WHERE {identity} >= {first}"
        return [tuple(found) for found in connection.exec_driver_sql(query).fetchall()]

    def _params(self, rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
        """Rows with their values as the driver takes them (as SQLAlchemy would bind them)."""
        if not self.converters or not rows:
            return rows
        # column by column: each distinct object once, and no Python loop per row
        by_column: list[Sequence[Any]] = list(zip(*rows, strict=True))
        for position, process in self.converters:
            by_column[position] = _converted_column(process, by_column[position])
        return list(zip(*by_column, strict=True))


def _flat(rows: Sequence[Sequence[Any]]) -> list[Any]:
    return [value for row in rows for value in row]


def probe_in(session: Session, sql: str, keys: Sequence[Any], *before: Any) -> list[tuple[Any, ...]]:
    """Rows of `sql` (ending in `IN`) for `keys`, as the driver returns them, PROBE_CHUNK keys at a time.

    `before` are the values of the marks that come before the IN list (written
    `{mark}` in `sql`). Only for plain values (text, integers): nothing is
    converted on the way in or out.
    """
    if not keys:
        return []
    mark = placeholder(session.get_bind().dialect)
    head = sql.format(mark=mark)
    # the driver's own cursor, inside the session's transaction: rows come back as plain tuples
    cursor = session.connection().connection.cursor()
    found: list[tuple[Any, ...]] = []
    try:
        for start in range(0, len(keys), PROBE_CHUNK):
            chunk = tuple(keys[start : start + PROBE_CHUNK])
            cursor.execute(f"{head} ({', '.join(mark for _ in chunk)})", (*before, *chunk))
            found.extend(cursor.fetchall())
    finally:
        cursor.close()
    return found


@contextmanager
def roomy_cache(session: Session) -> Iterator[None]:
    """On SQLite, a page cache big enough for a large import's indexes, while it runs.

    A first import adds 100,000 address hashes in random order to the
    contacts' unique index; with SQLite's default 2 MB cache most of those
    inserts evict a page and read another back (about a tenth of the
    import's CPU). Pages are only allocated as they are used, so a small
    import costs nothing more; the connection's old size comes back after.
    """
    if session.get_bind().dialect.name != "sqlite":
        yield
        return
    # the driver's connection itself: it still answers after a failed statement spoilt the session
    driver = session.connection().connection
    cursor = driver.cursor()
    before = int(cursor.execute("PRAGMA cache_size").fetchone()[0])
    cursor.execute(f"PRAGMA cache_size=-{IMPORT_CACHE_KIB}")
    try:
        yield
    finally:
        cursor.execute(f"PRAGMA cache_size={before}")
        cursor.close()
