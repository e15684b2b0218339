"""The claims ledger's batch statements (funnel.store.ledger), on the database of the pass.

The run reaches them with everything going right; these tests set up the
rarer cases by hand: a row another worker took back before the hand-over, a
person suppressed in between, outcomes for rows that are no longer this
run's.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from conftest import Project
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from funnel.store.db import make_engine, migrate
from funnel.store.ledger import Ledger
from funnel.store.models import Contact, Enrollment, Run, StepRun

NOW = datetime(2027, 1, 10, 17, 0, tzinfo=UTC)


@pytest.fixture
def engine(project: Project) -> Iterator[Engine]:
    made = make_engine(project.database_url)
    migrate(made)
    yield made
    made.dispose()


def _people(session: Session, suppression: list[dict[str, object]], run_id: int) -> list[tuple[int, int]]:
    """One contact, enrollment and claimed step row of run `run_id` per entry: [(step_run id, contact id)]."""
    batch = []
    for index, values in enumerate(suppression):
        contact = Contact(email_hash=f"h{index}", created_at=NOW, updated_at=NOW, **values)  # type: ignore[arg-type]
        session.add(contact)
        session.flush()
        assert contact.id is not None
        enrollment = Enrollment(contact_id=contact.id, sequence="welcome", enrolled_at=NOW)
        session.add(enrollment)
        session.flush()
        assert enrollment.id is not None
        row = StepRun(
            enrollment_id=enrollment.id,
            sequence="welcome",
            step_id="hello",
            status="claimed",
            run_id=run_id,
            decided_at=NOW,
            send_id=f"send-{index}",
        )
        session.add(row)
        session.flush()
        assert row.id is not None
        batch.append((row.id, contact.id))
    session.commit()
    return batch


def _runs(session: Session, count: int) -> list[int]:
    runs = [Run(started_at=NOW, clock=NOW, host="test", pid=index) for index in range(count)]
    session.add_all(runs)
    session.commit()
    return [run.id or 0 for run in runs]


def _statuses(engine: Engine) -> dict[int, tuple[str, str | None, int | None]]:
    with Session(engine) as session:
        return {row.id or 0: (row.status, row.reason, row.run_id) for row in session.exec(select(StepRun))}


def test_a_hand_over_takes_only_the_rows_this_run_still_holds_and_stops_suppressed_people(engine: Engine) -> None:
    with Session(engine) as session:
        ours, other = _runs(session, 2)
        batch = _people(
            session,
            [{}, {}, {"unsubscribed_at": NOW}, {"suppressed_reason": "bounce"}, {"suppressed_reason": ""}, {}],
            ours,
        )
        # before the hand-over: another worker took the second row back and claimed it for itself,
        # and a recovery settled the last one
        session.connection().exec_driver_sql(f"UPDATE step_runs SET run_id = {other} WHERE id = {batch[1][0]}")
        session.connection().exec_driver_sql(f"UPDATE step_runs SET status = 'unknown' WHERE id = {batch[5][0]}")
        session.commit()
        ledger = Ledger(session, ours, NOW, "outbox")
        result = ledger.hand_over(batch)
        session.commit()
    ids = [step_run_id for step_run_id, _ in batch]
    assert result.handed == {ids[0], ids[4]}
    assert result.suppressed == {ids[2]: "unsubscribed", ids[3]: "bounce"}
    assert _statuses(engine) == {
        ids[0]: ("sending", None, ours),
        ids[1]: ("claimed", None, other),
        ids[2]: ("skipped", "unsubscribed", ours),
        ids[3]: ("skipped", "bounce", ours),
        ids[4]: ("sending", None, ours),
        ids[5]: ("unknown", None, ours),
    }


def test_a_whole_batch_handed_over_and_recorded(engine: Engine) -> None:
    """The usual case (every row still ours), then the outcomes: one statement each on SQLite."""
    with Session(engine) as session:
        (ours,) = _runs(session, 1)
        batch = _people(session, [{}, {}, {}], ours)
        ledger = Ledger(session, ours, NOW, "outbox")
        result = ledger.hand_over(batch)
        assert result.handed == {step_run_id for step_run_id, _ in batch} and not result.suppressed
        outcome = {"reason": None, "retryable": False, "attempts": 1, "sent_at": NOW, "message_id": None}
        ledger.record(
            [
                {**outcome, "id": batch[0][0], "status": "sent", "message_id": "m-1"},
                {**outcome, "id": batch[1][0], "status": "failed", "reason": "SendGrid 500", "retryable": True},
                {**outcome, "id": batch[2][0], "status": "sent", "attempts": 2},
            ]
        )
        session.commit()
        rows = {row.id: row for row in session.exec(select(StepRun))}
    first, second, third = (rows[step_run_id] for step_run_id, _ in batch)
    assert (first.status, first.message_id, first.attempts, first.sent_at) == ("sent", "m-1", 1, NOW)
    assert (second.status, second.reason, second.retryable, second.attempts) == ("failed", "SendGrid 500", True, 1)
    assert (third.status, third.attempts) == ("sent", 2)


def test_outcomes_for_rows_that_are_no_longer_this_runs_are_not_written(engine: Engine) -> None:
    with Session(engine) as session:
        ours, other = _runs(session, 2)
        batch = _people(session, [{}, {}], ours)
        ledger = Ledger(session, ours, NOW, "outbox")
        ledger.hand_over(batch)
        session.commit()
        session.connection().exec_driver_sql(f"UPDATE step_runs SET status = 'unknown' WHERE id = {batch[0][0]}")
        session.connection().exec_driver_sql(f"UPDATE step_runs SET run_id = {other} WHERE id = {batch[1][0]}")
        outcome = {"status": "sent", "reason": None, "retryable": False, "attempts": 1, "sent_at": NOW}
        ledger.record([{**outcome, "id": step_run_id, "message_id": None} for step_run_id, _ in batch])
        session.commit()
    assert _statuses(engine) == {batch[0][0]: ("unknown", None, ours), batch[1][0]: ("sending", None, other)}


def test_recorded_outcomes_belong_to_the_sessions_transaction(engine: Engine) -> None:
    """Found by a break-it session: on SQLite a statement starting with WITH opened no transaction in
    Python's sqlite3, so the outcomes were committed on their own, apart from the enrollment's and the
    contact's changes that go with them. A rollback (the process dying before the checkpoint) must
    undo them, as on PostgreSQL: the row is then still `sending`, reported unknown by the next run."""
    with Session(engine) as session:
        (ours,) = _runs(session, 1)
        batch = _people(session, [{}, {}], ours)
        ledger = Ledger(session, ours, NOW, "outbox")
        ledger.hand_over(batch)
        session.commit()  # the hand-over's checkpoint
        outcome = {"status": "sent", "reason": None, "retryable": False, "attempts": 1, "sent_at": NOW}
        ledger.record([{**outcome, "id": step_run_id, "message_id": "m"} for step_run_id, _ in batch])
        session.rollback()
    assert _statuses(engine) == {step_run_id: ("sending", None, ours) for step_run_id, _ in batch}


def test_deferred_writes_belong_to_the_sessions_transaction(engine: Engine) -> None:
    from funnel.store.deferred import DeferredWrites

    with Session(engine) as session:
        (ours,) = _runs(session, 1)
        _people(session, [{}], ours)
        enrollment = session.exec(select(Enrollment)).one()
        writes = DeferredWrites()
        writes.set(enrollment, status="finished", ended_at=NOW, next_due_at=None)
        writes.write(session)
        session.rollback()
    with Session(engine) as session:
        stored = session.exec(select(Enrollment)).one()
        assert (stored.status, stored.ended_at) == ("active", None)
