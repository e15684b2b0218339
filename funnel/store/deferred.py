"""Changes to rows a run has loaded, written in bulk at the next commit.

A run changes a few columns of nearly every enrollment it looks at (next due,
finished, exited) and of some contacts. Flushing dirty ORM objects costs the unit of
work's bookkeeping per row, more than the email's own writes. So new values are set
as if loaded (`set_committed_value`: what the run reads stays right) and written with
one UPDATE per table and set of columns (`DriverSQL.update_each`) before the run
commits. The caller must call `write` before every commit (and before a statement that
reads these columns back); `RunContext.checkpoint` (`funnel.run.state`) does.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from funnel.store.driver_sql import DriverSQL


class DeferredWrites:
    """Column values waiting to be written, per (table, row id); the last value set wins."""

    def __init__(self) -> None:
        self._changes: dict[tuple[Table, int], dict[str, Any]] = {}

    def set(self, obj: Any, **values: Any) -> None:
        """Give `obj` these values now (in memory, not dirty) and in the database at `write`."""
        for name, value in values.items():
            set_committed_value(obj, name, value)
        table: Table = type(obj).__table__
        self._changes.setdefault((table, obj.id), {}).update(values)

    def __len__(self) -> int:
        return len(self._changes)

    def write(self, session: Session) -> None:
        """One UPDATE per (table, columns changed) for all its rows; the caller commits."""
        if not self._changes:
            return
        groups: dict[tuple[Table, tuple[str, ...]], list[tuple[int, list[Any]]]] = defaultdict(list)
        for (table, row_id), values in self._changes.items():
            columns = tuple(sorted(values))
            groups[(table, columns)].append((row_id, [values[c] for c in columns]))
        self._changes.clear()
        sql = DriverSQL(session)
        for (table, columns), rows in groups.items():
            sql.update_by_id(table, columns, rows)
