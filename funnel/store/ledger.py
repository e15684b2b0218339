"""The claims ledger: claim -> hand over -> record -> recover, for one run.

Each step a run acts on has one `step_runs` row, unique per enrollment and step, so
"sent at most once" is a database fact. A row moves `claimed` -> `sending` ->
`sent`/`failed`/`skipped`, or to `unknown` when its run died while `sending`: SendGrid
has no idempotency key, so such an email is reported and never sent again blindly.
Every move is one conditional statement naming the state it leaves, so of two writers
racing for a row only the first finds it. The states, the moves and who may make
them, and why a SIGKILL costs at most two batches: docs/architecture.md.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel.store.bulk import InsertIgnore, insert_ignore
from funnel.store.driver_sql import DriverSQL
from funnel.store.models import Enrollment, StepRun
from funnel.store.workers import dead_runs

CLAIMED = "claimed"
SENDING = "sending"
UNKNOWN = "unknown"
#: rows that belong to a run until it records their outcome
IN_HAND = (CLAIMED, SENDING)

#: the contacts no email may go to (see `Contact.suppression`), as SQL
_SUPPRESSED = "(erased_at IS NOT NULL OR unsubscribed_at IS NOT NULL OR suppressed_reason <> '')"


def _suppression(erased_at: Any, unsubscribed_at: Any, suppressed_reason: str | None) -> str | None:
    """Why no email may go to a contact, from its columns (as `Contact.suppression`), or None/''."""
    return "erased" if erased_at else "unsubscribed" if unsubscribed_at else suppressed_reason


UNKNOWN_REASON = "the run sending it stopped mid-request: not sent again (check whether it arrived)"


def _table() -> Table:
    return StepRun.__table__  # type: ignore[attr-defined,no-any-return]  # SQLModel does not declare __table__


#: the columns of a `StepRow`, in order
_ROW_COLUMNS = "id, enrollment_id, sequence, step_id, status, retryable, reason, send_id"


@dataclass(frozen=True)
class StepRow:
    """A step_runs row as a run reads it: plain values, read once (no ORM object to track)."""

    id: int
    enrollment_id: int
    sequence: str
    step_id: str
    status: str
    retryable: bool
    reason: str | None
    send_id: str | None


def _step_row(row: Any) -> StepRow:
    """A driver row of `_ROW_COLUMNS` (SQLite gives 0/1 for booleans)."""
    row_id, enrollment_id, sequence, step_id, status, retryable, reason, send_id = row
    return StepRow(row_id, enrollment_id, sequence, step_id, status, bool(retryable), reason, send_id)


@dataclass(frozen=True)
class Wanted:
    """A step a run (or `funnel serve`) wants to send now, before anyone has claimed it."""

    enrollment_id: int
    sequence: str
    #: the ledger's step id: the step's own, or the key of a letter answering a change (`funnel.webinar.notices`)
    step_id: str
    transactional: bool
    due_at: datetime | None


def outcome(
    row_id: int,
    status: str,
    *,
    attempts: int,
    reason: str | None = None,
    retryable: bool = False,
    sent_at: datetime | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """One outcome as `Ledger.record` stores it."""
    return {
        "id": row_id,
        "status": status,
        "reason": reason,
        "retryable": retryable,
        "attempts": attempts,
        "sent_at": sent_at,
        "message_id": message_id,
    }


@dataclass(frozen=True)
class Recovered:
    """What a run found left behind by a run that died."""

    #: (sequence, step) of each email whose request may have gone out
    unknown: list[tuple[str, str]]
    #: claimed but never handed over: given back, they go out in this run
    released: int


@dataclass(frozen=True)
class HandOver:
    """The result of handing one batch over: which rows may now be sent."""

    handed: set[int]
    #: step_run id -> why no mail may go to that person now (unsubscribed, erased, ...)
    suppressed: dict[int, str]


class Ledger:
    """The step rows of one run, in one session; the caller commits."""

    def __init__(self, session: Session, run_id: int, now: datetime, transport: str) -> None:
        self.session = session
        self.run_id = run_id
        self.now = now
        self.transport = transport
        self.sql = DriverSQL(session)
        self._false = self.sql.converter(_table().c.retryable)(False)

    # ----------------------------------------------------------------- recover

    def recover(self) -> Recovered:
        """Settle rows left in hand by runs that died: `sending` is unknown, `claimed` goes back.

        Commits (when it found something) while it still holds the dead runs'
        locks, so two workers never settle the same run's rows.
        """
        left = self.session.execute(
            select(col(StepRun.run_id))
            .where(col(StepRun.status).in_(IN_HAND), col(StepRun.run_id) != self.run_id)
            .distinct()
        ).scalars()
        candidates = [run_id for run_id in left if run_id is not None]
        self.session.commit()  # nothing held while asking the server which runs are alive
        with dead_runs(self.session.get_bind(), candidates) as dead:  # type: ignore[arg-type]  # an Engine here
            if not dead:
                return Recovered([], 0)
            found = self._settle_dead(sorted(dead))
            self.session.commit()
        return found

    def _settle_dead(self, dead: list[int]) -> Recovered:
        """Move the dead runs' rows: `sending` to unknown, `claimed` back (two conditional statements).

        No row is read first: a run taken for dead that is alive after all may
        hand a row over between any two statements here, and then the row is
        simply `sending` for whichever statement comes next.
        """
        table = _table()
        unknown = self.session.execute(
            table.update()
            .where(table.c.run_id.in_(dead), table.c.status == SENDING)
            .values(status=UNKNOWN, reason=UNKNOWN_REASON, retryable=False)
            .returning(table.c.sequence, table.c.step_id)
        ).all()
        released = self._give_back(None, by_runs=dead, moving=(CLAIMED,))
        if released:
            # their enrollments come up again in this run, whatever the dead run stored as next
            self.session.execute(
                update(Enrollment)
                .where(col(Enrollment.id).in_(sorted(set(released))), col(Enrollment.status) == "active")
                .values(next_due_at=self.now)
            )
        return Recovered(sorted((sequence, step_id) for sequence, step_id in unknown), len(released))

    # ----------------------------------------------------------------- claim

    def rows_of(self, enrollment_ids: list[int]) -> dict[int, dict[str, StepRow]]:
        """Every step row of these enrollments, by enrollment and step id (plain rows, no ORM objects)."""
        return _rows_of(self.sql, enrollment_ids)

    def _rows_where(self, column: str, values: list[Any]) -> Iterator[StepRow]:
        return _rows_where(self.sql, column, values)

    def claim_new(self, wanted: list[Wanted]) -> list[StepRow | None]:
        """Insert `claimed` rows (insert-or-ignore); the row this run got for each wanted step, or None.

        A row that another run inserted first is simply not ours: the unique
        (enrollment, step) key decides, in a few statements for a whole page.
        Each claimed row gets a fresh send id (the email's, in its links and custom args).
        """
        send_ids = [uuid.uuid4().hex for _ in wanted]
        rows = [
            {
                "enrollment_id": w.enrollment_id,
                "sequence": w.sequence,
                "step_id": w.step_id,
                "transactional": w.transactional,
                "send_id": send_id,
                "attempts": 0,
                "due_at": w.due_at,
                "retryable": False,
                "status": CLAIMED,
                "run_id": self.run_id,
                "transport": self.transport,
                "decided_at": self.now,
            }
            for w, send_id in zip(wanted, send_ids, strict=True)
        ]
        if rows:
            columns = list(rows[0])
            InsertIgnore(self.session, _table(), columns, ("enrollment_id", "step_id")).run(
                [[row[name] for name in columns] for row in rows]
            )
        taken = {step_row.send_id or "": step_row for step_row in self._rows_where("send_id", send_ids)}
        return [taken.get(send_id) for send_id in send_ids]

    def decided(
        self,
        enrollment_id: int,
        sequence: str,
        step_id: str,
        status: str,
        reason: str,
        *,
        transactional: bool,
        due_at: datetime | None = None,
    ) -> None:
        """A step settled without sending (skipped, or failed before any attempt): insert-or-ignore.

        A concurrent worker may have decided the same step: its row stays.
        """
        row = {
            "enrollment_id": enrollment_id,
            "sequence": sequence,
            "step_id": step_id,
            "status": status,
            "reason": reason,
            "retryable": False,
            "transactional": transactional,
            "attempts": 0,
            "due_at": due_at,
            "decided_at": self.now,
        }
        insert_ignore(self.session, _table(), [row], ("enrollment_id", "step_id"))

    def retake(self, row: StepRow) -> StepRow | None:
        """Claim a step whose last attempt failed in a way worth retrying (None: someone else has it)."""
        send_id = uuid.uuid4().hex
        claimed = self.session.execute(
            update(StepRun)
            .where(and_(col(StepRun.id) == row.id, col(StepRun.status) == "failed", col(StepRun.retryable).is_(True)))
            .values(status=CLAIMED, run_id=self.run_id, send_id=send_id, decided_at=self.now)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]  # execute() is typed Result; an UPDATE gives CursorResult
            return None
        return replace(row, status=CLAIMED, send_id=send_id)

    def unsent(self, row_id: int, status: str, reason: str) -> None:
        """A claimed row whose email could not be written (missing data, a template error): its outcome."""
        self.session.execute(
            update(StepRun)
            .where(col(StepRun.id) == row_id, col(StepRun.status) == CLAIMED, col(StepRun.run_id) == self.run_id)
            .values(status=status, reason=reason, retryable=False)
        )

    def too_late(self, row: StepRow, reason: str) -> None:
        """A failed step that is now skipped (too late to retry, say); the reason keeps why it failed."""
        self.session.execute(
            update(StepRun)
            .where(col(StepRun.id) == row.id, col(StepRun.status) == row.status)
            .values(status="skipped", reason=reason, retryable=False, decided_at=self.now)
        )

    # ----------------------------------------------------------------- hand over

    def hand_over(self, batch: list[tuple[int, int]]) -> HandOver:
        """Mark a batch of (step_run id, contact id) as handed to the transport, in one statement.

        Only rows this run still holds as `claimed` are taken. The people's
        suppression is then read in the same transaction (after the write, so
        on SQLite nobody can change it before the commit; on PostgreSQL their
        rows are share-locked until it): a row for someone who has meanwhile
        unsubscribed or been erased is recorded as skipped instead. Plain SQL
        (`funnel.store.driver_sql`): this runs for every few emails.
        """
        if not batch:
            return HandOver(set(), {})
        ids = [step_run_id for step_run_id, _ in batch]
        marks = self.sql.marks(len(ids))
        mine = f"id IN ({marks}) AND run_id = ?"
        taken = self.sql.execute(
            f"UPDATE step_runs SET status = '{SENDING}' WHERE {mine} AND status = '{CLAIMED}'", [*ids, self.run_id]
        ).rowcount
        if taken == len(ids):  # the usual case, with no rows to read back
            handed = set(ids)
        else:  # another worker took some back: the rows this statement moved are the ones now sending for us
            handed = {
                row[0]
                for row in self.sql.execute(
                    f"SELECT id FROM step_runs WHERE {mine} AND status = '{SENDING}'", [*ids, self.run_id]
                )
            }
        contact_ids = sorted({contact_id for step_run_id, contact_id in batch if step_run_id in handed})
        stopped: dict[int, str] = {}
        if contact_ids:
            if self.sql.postgres:
                # every one of them share-locked until the commit, in id order (as deciding locks them:
                # workers never deadlock), so an unsubscribe either came first or waits for the hand-over
                only, lock = "", " ORDER BY id FOR SHARE"
            else:
                # the write above holds SQLite's lock until the commit; a row only for someone
                # suppressed, as in `SuppressionCheck` (each row read lets the GIL go)
                only, lock = f" AND {_SUPPRESSED}", ""
            for contact_id, *columns in self.sql.execute(
                "SELECT id, erased_at, unsubscribed_at, suppressed_reason FROM contacts"  # noqa: S608
                f" WHERE id IN ({self.sql.marks(len(contact_ids))}){only}{lock}",
                contact_ids,
            ):
                reason = _suppression(*columns)
                if reason:
                    stopped[contact_id] = reason
        suppressed = {
            step_run_id: stopped[contact_id]
            for step_run_id, contact_id in batch
            if step_run_id in handed and contact_id in stopped
        }
        if suppressed:  # sending -> skipped: ours, moved a moment ago in this very transaction
            self.sql.executemany(
                f"UPDATE step_runs SET status = 'skipped', reason = ?, retryable = ? WHERE id = ? AND run_id = ?"
                f" AND status = '{SENDING}'",
                [(why, self._false, step_run_id, self.run_id) for step_run_id, why in suppressed.items()],
            )
        return HandOver(handed - set(suppressed), suppressed)

    # ----------------------------------------------------------------- record

    def record(self, outcomes: list[dict[str, Any]]) -> None:
        """Store the outcomes of handed-over rows, in one statement (`DriverSQL.update_each`).

        Each dict holds `id`, `status`, `reason`, `retryable`, `attempts` (added
        to the row's count), `sent_at` and `message_id`. Only a row this run
        still has `sending` is written: one that another run turned unknown
        meanwhile, having taken this one for dead (its liveness lock lost with
        its connection, say), keeps that state. Plain SQL: this is the
        per-email write of every run.
        """
        if not outcomes:
            return
        table = _table()
        when = self.sql.converter(table.c.sent_at)
        flag = self.sql.converter(table.c.retryable)
        self.sql.update_each(
            "step_runs",
            ("status", "reason", "retryable", "attempts", "sent_at", "message_id"),
            [
                (
                    o["status"],
                    o["reason"],
                    flag(o["retryable"]),
                    o["attempts"],
                    when(o["sent_at"]),
                    o["message_id"],
                    o["id"],
                )
                for o in outcomes
            ],
            add=("attempts",),
            where=f"run_id = ? AND status = '{SENDING}'",
            params=(self.run_id,),
        )

    # ----------------------------------------------------------------- give back

    def give_back(self, ids: Iterable[int]) -> None:
        """Rows this run took but whose request never started: pending again (or failed as before a retry)."""
        self._give_back(list(ids), by_runs=[self.run_id], moving=IN_HAND)

    def _give_back(self, ids: list[int] | None, *, by_runs: list[int], moving: tuple[str, ...]) -> list[int]:
        """Take rows of `by_runs` that are in one of the states `moving` back; their enrollment ids.

        Only the holder may move its own `sending` rows back (it knows their
        requests never started); a recoverer moves `claimed` ones only. `ids`
        None: every such row of those runs.
        """
        if ids is not None and not ids:
            return []
        table = _table()
        theirs: list[ColumnElement[bool]] = [table.c.run_id.in_(by_runs), table.c.status.in_(moving)]
        if ids is not None:
            theirs.append(table.c.id.in_(ids))
        # a retried step keeps its history (failed, retryable); a first attempt leaves no trace
        failed = self.session.execute(
            table.update().where(*theirs, table.c.attempts > 0).values(status="failed").returning(table.c.enrollment_id)
        ).scalars()
        found = list(failed)
        deleted = self.session.execute(
            table.delete().where(*theirs, table.c.attempts == 0).returning(table.c.enrollment_id)
        ).scalars()
        return found + list(deleted)


def step_rows(session: Session, enrollment_ids: list[int]) -> dict[int, dict[str, StepRow]]:
    """Every step row of these enrollments, by enrollment and step id, outside any run (`funnel plan`)."""
    return _rows_of(DriverSQL(session), enrollment_ids)


def _rows_of(sql: DriverSQL, enrollment_ids: list[int]) -> dict[int, dict[str, StepRow]]:
    found: dict[int, dict[str, StepRow]] = {}
    for step_row in _rows_where(sql, "enrollment_id", enrollment_ids):
        found.setdefault(step_row.enrollment_id, {})[step_row.step_id] = step_row
    return found


def _rows_where(sql: DriverSQL, column: str, values: list[Any]) -> Iterator[StepRow]:
    """The step rows whose `column` is one of `values`, read in chunks of 500 marks."""
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        text = f"SELECT {_ROW_COLUMNS} FROM step_runs WHERE {column} IN ({sql.marks(len(chunk))})"  # noqa: S608
        for row in sql.execute(text, chunk):
            yield _step_row(row)


class SuppressionCheck:
    """Reads one person's suppression right before her request starts (from a sender thread).

    The hand-over reads it for the whole batch, but a batch may wait for a free
    sender for a moment: an unsubscribe, a bounce or an erasure that lands in
    between still stops her email. One indexed read per email, so it is kept
    cheap: each sender thread holds its own driver connection for the run (in
    autocommit, so every read sees what was committed last), with no ORM and
    no pool checkout per email. `close()` gives them back.
    """

    #: a row only for someone suppressed: an empty answer takes SQLite one step instead of two, and
    #: every step lets the GIL go (with eight senders busy, each costs a switch of threads)
    _QUERY = f"SELECT erased_at, unsubscribed_at, suppressed_reason FROM contacts WHERE id = {{mark}} AND {_SUPPRESSED}"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._sql = self._QUERY.format(mark="%s" if self._postgres else "?")
        self._local = threading.local()
        self._held: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, contact_id: int) -> str | None:
        """Why no mail may go to `contact_id` now, or None."""
        if not contact_id:
            return None
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = self._open()
        cursor.execute(self._sql, (contact_id,))
        rows = cursor.fetchall()  # read to the end: SQLite then ends the statement's read snapshot
        if not rows:  # not suppressed, or not committed yet (the hand-over's own read covered her)
            return None
        return _suppression(*rows[0])

    def _open(self) -> Any:
        """This thread's connection, in autocommit (a read outside any transaction sees the latest commit)."""
        connection = self._engine.raw_connection()
        driver = connection.driver_connection
        if self._postgres:
            driver.autocommit = True  # type: ignore[union-attr]  # psycopg's Connection
        else:
            connection.rollback()  # pysqlite opens no transaction for a SELECT: each read is its own
        with self._lock:
            self._held.append(connection)
        return connection.cursor()

    def close(self) -> None:
        """Give every thread's connection back to the pool, as it was."""
        with self._lock:
            held, self._held = self._held, []
        for connection in held:
            try:
                if self._postgres:
                    connection.driver_connection.autocommit = False
                connection.close()
            except Exception:  # noqa: BLE001  # a connection the server dropped: nothing left to give back
                connection.invalidate()
