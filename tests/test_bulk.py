"""The import's set-based statements (funnel.store.bulk), on the database of the pass.

They bypass SQLAlchemy's per-row work, so what they store must be exactly
what SQLAlchemy stores for the same values, and "which rows did this insert
create" must be answered right, conflicts and all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from conftest import Project, Result
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from funnel.signups.store import _CONTACT_COLUMNS
from funnel.store.bulk import InsertIgnore, insert_ignore, probe_in, roomy_cache
from funnel.store.db import make_engine
from funnel.store.models import Contact

#: the contact columns the import writes
COLUMNS = _CONTACT_COLUMNS
#: an aware time in another zone, a naive one, a JSON object and an empty one, both booleans
DENVER = datetime(2027, 1, 14, 19, 0, 0, 123456, tzinfo=ZoneInfo("America/Denver"))
NAIVE = datetime(2027, 1, 10, 9, 0)


def contact(key: str, *, discreet: bool = False, fields: dict[str, str] | None = None) -> dict[str, object]:
    return {
        "email_hash": key,
        "email": f"{key}@example.test",
        "first_name": "Zoë",
        "last_name": None,
        "timezone": "America/Denver",
        "discreet": discreet,
        "fields": fields if fields is not None else {},
        "created_at": DENVER,
        "updated_at": NAIVE,
        "first_source": "registrations",
        "token_key": hashlib.sha256(key.encode()).hexdigest()[:32],  # one per person, as random ones are
    }


@pytest.fixture
def engine(project: Project) -> Iterator[Engine]:
    made = make_engine(project.database_url)
    yield made
    made.dispose()


def stored(engine: Engine) -> dict[str, tuple[object, ...]]:
    """Each contact's values as the database holds them (raw, through the driver), by hash."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"SELECT {', '.join(COLUMNS)} FROM contacts").fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def test_values_are_stored_exactly_as_sqlalchemy_stores_them(engine: Engine) -> None:
    values = [
        contact("a1", discreet=True, fields={"company": "Acme", "note": "ünïcode"}),
        contact("a2"),
    ]
    with Session(engine) as session:
        insert_ignore(session, Contact.__table__, values, ("email_hash",))  # type: ignore[attr-defined]
        InsertIgnore(session, Contact.__table__, COLUMNS, ("email_hash",)).run(  # type: ignore[attr-defined]
            [
                tuple(v[c] for c in COLUMNS)
                for v in (
                    dict(values[0], email_hash="b1", token_key=contact("b1")["token_key"]),
                    dict(values[1], email_hash="b2", token_key=contact("b2")["token_key"]),
                )
            ]
        )
        session.commit()
    raw = stored(engine)
    assert COLUMNS[-1] == "token_key"  # each person's own: compared apart
    assert raw["b1"][:-1] == raw["a1"][:-1] and raw["b2"][:-1] == raw["a2"][:-1]
    assert raw["b1"][-1] == contact("b1")["token_key"] != raw["a1"][-1]
    with Session(engine) as session:
        read = {c.email_hash: c for c in session.exec(select(Contact))}
    assert read["b1"].created_at == DENVER.astimezone(UTC) and read["b1"].updated_at == NAIVE.replace(tzinfo=UTC)
    assert read["b1"].fields == {"company": "Acme", "note": "ünïcode"} and read["b1"].discreet is True
    assert read["b2"].fields == {} and read["b2"].discreet is False


def test_returning_answers_only_the_rows_it_inserted(engine: Engine) -> None:
    with Session(engine) as session:
        writer = InsertIgnore(session, Contact.__table__, COLUMNS, ("email_hash",))  # type: ignore[attr-defined]
        first = writer.returning([tuple(contact(k)[c] for c in COLUMNS) for k in ("k1", "k2")], ("email_hash", "id"))
        # k2 is there already (as if a concurrent worker had just made it): only k3 and k4 are new
        again = writer.returning(
            [tuple(contact(k)[c] for c in COLUMNS) for k in ("k2", "k3", "k4")], ("email_hash", "id")
        )
        session.commit()
        ids = dict(session.exec(select(Contact.email_hash, Contact.id)).all())
    assert first is not None and again is not None
    assert sorted(first) == sorted((k, ids[k]) for k in ("k1", "k2"))
    assert sorted(again) == sorted((k, ids[k]) for k in ("k3", "k4"))
    assert len(ids) == 4


def rows_of(*keys: str) -> list[tuple[object, ...]]:
    return [tuple(contact(k)[c] for c in COLUMNS) for k in keys]


def test_returning_with_a_key_twice_in_one_batch_or_nothing_new(engine: Engine) -> None:
    with Session(engine) as session:
        writer = InsertIgnore(session, Contact.__table__, COLUMNS, ("email_hash",))  # type: ignore[attr-defined]
        twice = writer.returning(rows_of("d1", "d2", "d1", "d3"), ("email_hash", "id"))
        nothing = writer.returning(rows_of("d3", "d1"), ("email_hash", "id"))
        # other columns than the key and the id are read back, for the rows that went in only
        more = writer.returning(rows_of("d4", "d2"), ("id", "first_name", "email_hash"))
        session.commit()
        ids = dict(session.exec(select(Contact.email_hash, Contact.id)).all())
    assert sorted(twice or []) == sorted((k, ids[k]) for k in ("d1", "d2", "d3"))
    assert nothing == []
    assert more == [(ids["d4"], "Zoë", "d4")]


def test_returning_reads_nothing_back_when_every_row_went_in(engine: Engine) -> None:
    """SQLite: the ids follow from the row count and the largest id; the rows are not read again."""
    from sqlalchemy import event

    statements: list[str] = []
    with Session(engine) as session:
        writer = InsertIgnore(session, Contact.__table__, COLUMNS, ("email_hash",))  # type: ignore[attr-defined]
        writer.returning(rows_of("e0"), ("email_hash", "id"))
        note = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", note)
        answered = writer.returning(rows_of(*(f"e{i}" for i in range(1, 40))), ("email_hash", "id"))
        event.remove(engine, "before_cursor_execute", note)
        session.commit()
        ids = dict(session.exec(select(Contact.email_hash, Contact.id)).all())
    assert answered == [(f"e{i}", ids[f"e{i}"]) for i in range(1, 40)]  # in the order given
    if engine.dialect.name == "sqlite":
        assert not [s for s in statements if "email_hash" in s and s.lstrip().upper().startswith("SELECT")]


@pytest.mark.sqlite_only(reason="SQLite gives ids at random only once a table holds the largest possible one")
def test_once_the_largest_id_is_taken_the_import_looks_first_and_still_counts_right(
    engine: Engine, project: Project, funnel: Callable[..., Result]
) -> None:
    """Ids given at random cannot be told from the rows that were there: `returning` declines before
    inserting, and the import looks people up first, enrolling each once and counting the new ones."""
    from funnel.store.bulk import _LARGEST_ROWID

    with Session(engine) as session:
        writer = InsertIgnore(session, Contact.__table__, COLUMNS, ("email_hash",))  # type: ignore[attr-defined]
        session.connection().exec_driver_sql(
            f"INSERT INTO contacts (id, email_hash, discreet, fields, created_at, updated_at) "
            f"VALUES ({_LARGEST_ROWID}, 'top', 0, '{{}}', '2027-01-01 00:00:00', '2027-01-01 00:00:00')"
        )
        assert writer.returning(rows_of("r1", "r2"), ("email_hash", "id")) is None
        session.commit()
        assert set(session.exec(select(Contact.email_hash))) == {"top"}  # nothing inserted
    engine.dispose()
    project.write("signups/webinar-registrations.csv", "Email,First Name\nana@example.test,Ana\nbea@example.test,Bea\n")
    result = funnel("run", "--now", "2027-01-10T03:00:00Z", "--json")
    assert result.code == 0, result.err
    summary = result.json()
    assert isinstance(summary, dict)
    assert summary["sources"]["webinar-registrations"]["created"] == 2, summary["sources"]
    with Session(engine) as session:
        enrolled = (
            session.connection()
            .exec_driver_sql(
                "SELECT c.email, count(*) FROM enrollments e JOIN contacts c ON c.id = e.contact_id GROUP BY c.email"
            )
            .fetchall()
        )
    assert sorted(enrolled) == [("ana@example.test", 1), ("bea@example.test", 1)]


def test_probe_reads_keys_in_chunks(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("funnel.store.bulk.PROBE_CHUNK", 2)
    keys = [f"p{i}" for i in range(5)]
    with Session(engine) as session:
        insert_ignore(session, Contact.__table__, [contact(k) for k in keys[:3]], ("email_hash",))  # type: ignore[attr-defined]
        found = probe_in(session, "SELECT email_hash FROM contacts WHERE email_hash IN", keys)
        counted = probe_in(
            session, "SELECT email_hash FROM contacts WHERE first_name = {mark} AND email_hash IN", keys, "Zoë"
        )
    assert sorted(k for (k,) in found) == keys[:3]
    assert sorted(k for (k,) in counted) == keys[:3]


@pytest.mark.sqlite_only(reason="the page cache is a setting of a SQLite connection")
def test_the_import_cache_is_given_back(engine: Engine) -> None:
    with Session(engine) as session:
        before = session.connection().exec_driver_sql("PRAGMA cache_size").scalar()
        with roomy_cache(session):
            during = session.connection().exec_driver_sql("PRAGMA cache_size").scalar()
        after = session.connection().exec_driver_sql("PRAGMA cache_size").scalar()
        with pytest.raises(RuntimeError), roomy_cache(session):
            raise RuntimeError("an import that fails half-way")
        failed = session.connection().exec_driver_sql("PRAGMA cache_size").scalar()
    assert during == -32768 and after == before == failed


def test_a_runs_deferred_writes_store_values_exactly_as_sqlalchemy_stores_them(engine: Engine) -> None:
    """`funnel.store.deferred` and `funnel.store.driver_sql` (a run's per-email writes) write through the
    driver too: a datetime on SQLite must be SQLAlchemy's own text, or stored times would sort
    and compare differently from the ones the ORM wrote beside them."""
    from funnel.store.deferred import DeferredWrites

    with Session(engine) as session:
        insert_ignore(session, Contact.__table__, [contact("orm"), contact("deferred")], ("email_hash",))  # type: ignore[attr-defined]
        session.commit()
        people = {c.email_hash: c for c in session.exec(select(Contact))}
        for moment in (DENVER, datetime(2027, 1, 10, 17, 0, tzinfo=UTC)):  # with and without microseconds
            people["orm"].last_marketing_at = moment
            people["orm"].discreet = True
            session.add(people["orm"])
            session.commit()
            writes = DeferredWrites()
            writes.set(people["deferred"], last_marketing_at=moment, discreet=True)
            assert people["deferred"].last_marketing_at == moment  # the run reads its own value at once
            writes.write(session)
            session.commit()
            with engine.connect() as conn:
                rows = conn.exec_driver_sql("SELECT email_hash, last_marketing_at, discreet FROM contacts").fetchall()
            raw = {row[0]: tuple(row[1:]) for row in rows}
            assert raw["deferred"] == raw["orm"], moment


def test_values_equal_but_not_alike_are_converted_each_on_its_own() -> None:
    """The repeated hour when clocks go back: two wall times equal as Python compares them within one
    zone, but an hour apart; and True, which equals 1. Each keeps its own conversion."""
    from sqlalchemy.dialects import sqlite

    from funnel.store.bulk import _converted_column
    from funnel.store.models import UTCDateTime

    new_york = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=new_york)
    second = first.replace(fold=1)
    assert first == second
    dialect = sqlite.dialect()
    process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    assert _converted_column(process, [first, second, first]) == [process(first), process(second), process(first)]
    assert process(first) != process(second)
    assert _converted_column(repr, [True, 1, 1.0, "1", True]) == ["True", "1", "1.0", "'1'", "True"]


@pytest.mark.parametrize("per_statement", [500, 2])
def test_update_each_writes_every_row_as_its_own_update_would(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, per_statement: int
) -> None:
    """`DriverSQL.update_each` (a run's outcomes and deferred writes: one `UPDATE ... FROM VALUES` a batch on
    SQLite): each row by its id, a column added to, a condition with its own value, in chunks too."""
    from funnel.store import driver_sql
    from funnel.store.driver_sql import DriverSQL

    monkeypatch.setattr(driver_sql, "_ROWS_PER_UPDATE", per_statement)
    people = [contact(key) for key in "abcde"]
    people[3]["timezone"] = "Europe/Paris"  # d: not matched by the condition
    with Session(engine) as session:
        insert_ignore(session, Contact.__table__, people, ("email_hash",))  # type: ignore[attr-defined]
        session.connection().exec_driver_sql("UPDATE contacts SET unsubscribed_step_run_id = 10")
        ids = {c.email_hash: c.id for c in session.exec(select(Contact))}
        DriverSQL(session).update_each(
            "contacts",
            ("first_name", "unsubscribed_step_run_id", "discreet"),
            [("A", 5, True, ids["a"]), ("C", 7, False, ids["c"]), ("D", 1, True, ids["d"]), ("E", -10, True, ids["e"])],
            add=("unsubscribed_step_run_id",),
            where="timezone = ?",
            params=("America/Denver",),
        )
        session.commit()
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT email_hash, first_name, unsubscribed_step_run_id, discreet FROM contacts ORDER BY email_hash"
        ).fetchall()
    assert [tuple(row) for row in rows] == [
        ("a", "A", 15, True if engine.dialect.name == "postgresql" else 1),
        ("b", "Zoë", 10, False if engine.dialect.name == "postgresql" else 0),
        ("c", "C", 17, False if engine.dialect.name == "postgresql" else 0),
        ("d", "Zoë", 10, False if engine.dialect.name == "postgresql" else 0),
        ("e", "E", 0, True if engine.dialect.name == "postgresql" else 1),
    ]
    if engine.dialect.name == "sqlite":  # stored with the column's own types, as a bound value would be
        with engine.connect() as conn:
            kinds = conn.exec_driver_sql(
                "SELECT DISTINCT typeof(first_name), typeof(unsubscribed_step_run_id), typeof(discreet) FROM contacts"
            ).fetchall()
        assert [tuple(k) for k in kinds] == [("text", "integer", "integer")]


def test_a_driver_error_in_a_runs_plain_sql_is_sqlalchemys_exception_for_it(engine: Engine) -> None:
    """`DriverSQL` runs on the driver's cursor; what the driver raises must still reach callers (and
    `funnel run`'s "the database refused the command" message) as SQLAlchemy's own exception class."""
    from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

    from funnel.store.driver_sql import DriverSQL

    with Session(engine) as session:
        insert_ignore(session, Contact.__table__, [contact("a")], ("email_hash",))  # type: ignore[attr-defined]
        sql = DriverSQL(session)
        assert [tuple(row) for row in sql.execute("SELECT email_hash FROM contacts WHERE email_hash = ?", ["a"])] == [
            ("a",)
        ]
        with pytest.raises(DBAPIError) as raised:
            sql.execute("SELECT nothing FROM no_such_table WHERE id = ?", [1])
        expected = ProgrammingError if engine.dialect.name == "postgresql" else OperationalError
        assert type(raised.value) is expected
        assert isinstance(raised.value.orig, engine.dialect.loaded_dbapi.Error)
        assert "no_such_table" in str(raised.value)
        session.rollback()
        with pytest.raises(DBAPIError):
            sql.executemany("UPDATE no_such_table SET x = ? WHERE id = ?", [(1, 2), (3, 4)])
