"""Storing signups, and what hostile or untimely input does to whole runs.

The real `funnel` CLI over the shipped sequences.yaml, a real SQLite file and
the outbox (or the fake SendGrid): bad rows beside good ones, values an older
version stored, attendance read before registration, discretion kept, files
still being written.
"""

from __future__ import annotations

import email
import email.policy
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Project, ProjectDatabase, project_db
from fake_sendgrid import FakeSendGrid
from sqlmodel import Session, select

from funnel.config import load_config
from funnel.signups.sources import SignupRow, read_mapping
from funnel.signups.store import PENDING_DAYS, apply_rows
from funnel.store.db import make_engine
from funnel.store.models import PendingTag, Tag
from funnel.text import email_hash
from funnel.timeutil import zone

HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
REGISTRATIONS = "signups/webinar-registrations.csv"
ATTENDANCE = "signups/webinar-attendance.csv"
SEQ = "webinar-relationship-911"
BEFORE = "2027-01-10T16:00:00Z"  # Sunday 9:00 in Denver, days before the Thursday 7 pm webinar


def row(
    email: str, first: str = "Ann", start: str = "2027-01-14 19:00", tz: str = "America/Denver", d: str = ""
) -> str:
    return f"{email},{first},Lee,{start},{tz},{d}\n"


def db(project: Project) -> ProjectDatabase:
    return project_db(project)


def sent_steps(project: Project, address: str) -> list[str]:
    return [step for to, _seq, step in project.sent() if to == address]


# --------------------------------------------------------------------------- item 4: one bad row stops nothing


def test_bad_dates_and_zones_in_an_export_reject_only_their_rows(project: Project, funnel) -> None:
    project.write(
        REGISTRATIONS,
        HEADER
        + row("ann@example.test")
        + row("far@example.test", start="9999-12-30 10:00")
        + row("zone@example.test", tz="A" * 5000)
        + row("old@example.test", start="1900-01-01 10:00")
        + row("bob@example.test"),
    )
    result = funnel("run", "--now", BEFORE, "--json")
    assert result.code == 0, result.err  # rejected rows are reported, they do not fail the run
    summary = result.json()
    assert summary["rejected"] == 2 and summary["sent"] == 3
    assert any(p.startswith(f"{REGISTRATIONS}:3: ") and "1970 and 2099" in p for p in summary["problems"])
    assert any(p.startswith(f"{REGISTRATIONS}:5: ") for p in summary["problems"])
    assert any(w.startswith(f"{REGISTRATIONS}:4: ") and "practice" in w for w in summary["warnings"])
    assert sorted(to for to, _s, _step in project.sent()) == [
        "ann@example.test",
        "bob@example.test",
        "zone@example.test",
    ]
    # and every later command still works, for everyone
    later = funnel("run", "--now", "2027-01-14T01:00:00Z", "--json")
    assert later.code == 0, later.err
    assert funnel("plan", "--now", BEFORE, "--json").code == 0
    shown = funnel("contacts", "show", "zone@example.test", "--json")
    assert shown.code == 0 and shown.json()["timezone"] == "America/Denver"


def test_a_stored_year_9999_start_or_unusable_zone_fails_only_that_person(project: Project, funnel) -> None:
    """Rows an older version let in: the run, `plan` and `contacts show` go on for everyone else."""
    project.write(REGISTRATIONS, HEADER + row("ann@example.test") + row("far@example.test") + row("zone@example.test"))
    assert funnel("run", "--now", BEFORE).code == 0
    with db(project) as conn:
        conn.execute(
            "UPDATE enrollments SET webinar_start = '9999-12-31 23:00:00.000000', next_due_at = NULL"
            " WHERE contact_id = (SELECT id FROM contacts WHERE email = 'far@example.test')"
        )
        conn.execute("UPDATE contacts SET timezone = ? WHERE email = 'zone@example.test'", ("A" * 5000,))
        conn.execute("UPDATE enrollments SET next_due_at = NULL")
    # the day before the webinar: reminders are due for all three
    plan = funnel("plan", "--now", "2027-01-13T10:00:00Z", "--json")
    assert plan.code == 0, plan.err
    assert {item["email"] for item in plan.json()} >= {"ann@example.test", "zone@example.test"}
    shown = funnel("contacts", "show", "far@example.test", "--json")
    assert shown.code == 0, shown.err
    assert funnel("contacts", "show", "zone@example.test").code == 0
    with db(project) as conn:
        conn.execute("UPDATE enrollments SET next_due_at = '2027-01-13 00:00:00.000000'")
    run = funnel("run", "--now", "2027-01-14T02:00:00Z", "--json")
    assert "Traceback" not in run.err and run.code in (0, 1), run.err
    assert "day-before" in sent_steps(project, "ann@example.test")
    assert "day-before" in sent_steps(project, "zone@example.test")
    assert "day-before" not in sent_steps(project, "far@example.test")
    far = funnel("contacts", "show", "far@example.test", "--json").json()["enrollments"][0]
    explained = [s for s in far["steps"] if s["status"] in ("failed", "skipped") and s.get("reason")]
    assert explained or far["reason"], far
    # the next run is clean: nothing is retried blindly for her
    again = funnel("run", "--now", "2027-01-14T03:00:00Z", "--json")
    assert again.code == 0, again.out
    assert funnel("plan", "--now", "2027-01-14T03:00:00Z").code == 0


def test_times_that_cannot_be_computed_are_skipped_for_that_person_with_a_reason(project: Project, funnel) -> None:
    """A stored start no schedule can use (year 9999) settles that person's steps with a reason; the run goes on."""
    project.write(REGISTRATIONS, HEADER + row("ann@example.test") + row("far@example.test"))
    assert funnel("run", "--now", BEFORE).code == 0
    with db(project) as conn:
        conn.execute(
            "UPDATE enrollments SET webinar_start = '9999-12-31 23:59:00.000000', next_due_at = '2027-01-10 00:00:00'"
            " WHERE contact_id = (SELECT id FROM contacts WHERE email = 'far@example.test')"
        )
    run = funnel("run", "--now", "2027-01-11T16:00:00Z", "--json")
    assert run.code == 0, run.out
    enrollment = funnel("contacts", "show", "far@example.test", "--json").json()["enrollments"][0]
    # the confirmation went before the data was damaged; every step timed from the webinar is settled
    # with the reason, and steps that do not depend on it keep their times
    steps = {s["id"]: s for s in enrollment["steps"]}
    for step_id in ("day-before", "hour-before", "replay", "thank-you"):
        assert steps[step_id]["status"] == "skipped" and steps[step_id]["reason"] == "due time out of range"
    assert steps["consultation-invite"]["status"] == "pending" and steps["consultation-invite"]["due_at"]
    ann = funnel("contacts", "show", "ann@example.test", "--json").json()["enrollments"][0]
    assert any(s["status"] == "sent" for s in ann["steps"])
    assert funnel("plan", "--now", "2027-01-11T17:00:00Z").code == 0
    assert funnel("run", "--now", "2027-01-11T17:00:00Z").code == 0


# --------------------------------------------------------------------------- item 5: addresses and names


def test_undeliverable_addresses_are_rejected_at_import_with_their_line(project: Project, funnel) -> None:
    project.write(REGISTRATIONS, HEADER + row("\u00fcser@example.test") + row("ann@B\u00fccher.test"))
    result = funnel("import", "webinar-registrations", REGISTRATIONS, "--now", BEFORE, "--json")
    assert result.code == 0
    summary = result.json()
    assert summary["rejected"] == 1
    assert summary["problems"][0].startswith("webinar-registrations.csv:2: ")
    run = funnel("run", "--now", BEFORE, "--json")
    assert run.code == 0 and run.json()["failed"] == 0
    (message,) = project.messages()
    assert message["To"].addresses[0].addr_spec == "ann@xn--bcher-kva.test"  # punycode in the header
    assert funnel("contacts", "show", "ann@b\u00fccher.test").code == 0  # found by either spelling


def test_a_stored_name_with_a_line_break_never_fails_a_send(project: Project, funnel) -> None:
    project.write(REGISTRATIONS, HEADER + row("ann@example.test"))
    assert funnel("run", "--now", BEFORE).code == 0
    with db(project) as conn:  # as an older version stored it
        conn.execute("UPDATE contacts SET first_name = ?", ("Ann\r\nBcc: victim@example.test",))
    run = funnel("run", "--now", "2027-01-14T02:00:00Z", "--json")  # the day-before reminder
    assert run.code == 0 and run.json()["sent"] == 1, run.out
    message = project.messages()[-1]
    assert message["To"].addresses[0].display_name == "Ann Bcc: victim@example.test Lee"
    assert "Bcc" not in message.keys()


def test_the_run_summary_names_each_failed_address_and_why(project: Project, funnel, fake_sendgrid) -> None:
    fake: FakeSendGrid = fake_sendgrid  # type: ignore[assignment]
    project.write(REGISTRATIONS, HEADER + row("ann@example.test") + row("bob@example.test"))
    fake.reject_address("bob@example.test", status=400, message="Does not contain a valid address.")
    env = {"FUNNEL_TRANSPORT": "sendgrid", "SENDGRID_API_KEY": "SG.test-key", "FUNNEL_SENDGRID_HOST": fake.url}
    result = funnel("run", "--now", BEFORE, "--json", env=env)
    assert result.code == 1
    assert result.json()["failures"] == [
        {
            "email": "bob@example.test",
            "sequence": SEQ,
            "step": "registered",
            "reason": "SendGrid 400: Does not contain a valid address.",
        }
    ]
    project.append(REGISTRATIONS, row("cat@example.test"))
    fake.reject_address("cat@example.test", status=400, message="Does not contain a valid address.")
    verbose = funnel("run", "--now", BEFORE, "--verbose", env=env)
    assert verbose.code == 1
    assert f"failed: cat@example.test {SEQ}/registered: SendGrid 400: Does not contain a valid address." in verbose.out
    quiet = funnel("run", "--now", BEFORE, env=env)  # under cron: no addresses in the mail cron sends
    assert "@" not in quiet.out + quiet.err


# --------------------------------------------------------------------------- item 6: attendance before registration


def test_attendance_read_before_the_registration_gets_the_thank_you(project: Project, funnel) -> None:
    # the webinar: Thursday 2027-01-14 19:00 in Denver = 2027-01-15 02:00 UTC
    project.write(ATTENDANCE, "Email,Attended\nANN@example.test,Yes\nbob@example.test,No\n")
    first = funnel("run", "--now", "2027-01-15T03:30:00Z", "--json")
    assert first.code == 0 and first.json()["sources"]["webinar-attendance"]["not_contacts"] == 1
    assert funnel("contacts", "show", "ann@example.test").code == 1  # not a contact: nothing personal kept
    with db(project) as conn:
        assert conn.execute("SELECT email_hash, tag, source, origin FROM pending_tags").fetchall() == [
            (email_hash("ann@example.test"), "webinar-attended", "webinar-attendance", "webinar-attendance.csv:2")
        ]
    # the registration export arrives later
    project.write(REGISTRATIONS, HEADER + row("ann@example.test") + row("bob@example.test", first="Bob"))
    assert funnel("run", "--now", "2027-01-15T04:00:00Z").code == 0
    assert "webinar-attended" in funnel("contacts", "show", "ann@example.test", "--json").json()["tags"]
    with db(project) as conn:
        assert conn.execute("SELECT count(*) FROM pending_tags").fetchone() == (0,)
    # the morning after (8:30 in Denver): she gets the thank-you, he gets the replay
    assert funnel("run", "--now", "2027-01-15T15:30:00Z").code == 0
    assert "thank-you" in sent_steps(project, "ann@example.test")
    assert "replay" not in sent_steps(project, "ann@example.test")
    assert "replay" in sent_steps(project, "bob@example.test")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_pending_tags_reach_people_who_arrive_by_a_form_and_expire(
    project: Project, backend: str, request: pytest.FixtureRequest
) -> None:
    config = load_config(project.root / "sequences.yaml")
    url = f"sqlite:///{project.root / 'funnel.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    now = datetime(2027, 1, 15, 4, tzinfo=UTC)
    attended = config.sources["webinar-attendance"]
    rows = [SignupRow(line=2, email="ann@example.test", file="a.csv"), SignupRow(line=3, email="old@example.test")]
    with Session(engine) as session:
        result = apply_rows(session, config, "webinar-attendance", attended, rows[:1], now)
        apply_rows(session, config, "webinar-attendance", attended, rows[1:], now - timedelta(days=PENDING_DAYS + 1))
        session.commit()
    assert result.unknown == 1 and result.pending == 1
    form = config.sources["consultation-form"]
    later = now + timedelta(days=1)
    read = read_mapping("consultation-form", form, {"email": "Ann@example.test", "name": "Ann"}, zone("UTC"))
    with Session(engine) as session:
        applied = apply_rows(session, config, "consultation-form", form, read.rows, later)
        session.commit()
        tags = {(t.tag, t.source) for t in session.scalars(select(Tag))}
        left = list(session.scalars(select(PendingTag)))
    assert applied.pending_applied == 1
    assert ("webinar-attended", "webinar-attendance") in tags
    assert left == []  # hers applied, the 91-day-old one dropped
    engine.dispose()


# --------------------------------------------------------------------------- item 8: blank never overwrites


def _discreet_email_checks(project: Project, message: object, subject: str) -> None:
    config = load_config(project.root / "sequences.yaml")
    assert message["From"].addresses[0].display_name == config.practice.discreet_from_name  # type: ignore[index]
    assert message["Subject"] == subject  # type: ignore[index]
    # text only: no HTML part (a confirmation may carry the calendar invitation beside the text)
    parts = [part.get_content_type() for part in message.walk()]  # type: ignore[attr-defined]
    assert "text/html" not in parts and "text/plain" in parts
    assert message.get_body(("plain",)) is not None  # type: ignore[attr-defined]


def test_a_blank_discreet_cell_or_form_field_never_turns_discretion_off(project: Project, funnel) -> None:
    config = load_config(project.root / "sequences.yaml")
    project.write(REGISTRATIONS, HEADER + row("ann@example.test", first="Ann", d="yes"))
    assert funnel("run", "--now", BEFORE).code == 0
    (registered,) = project.messages()
    _discreet_email_checks(project, registered, config.find_step(SEQ, "registered")[1].discreet_subject or "")
    # she signs up again with the Discreet cell empty (and no name): nothing she told us is lost
    project.append(REGISTRATIONS, row("ann@example.test", first="", tz="", d=""))
    assert funnel("run", "--now", "2027-01-10T17:00:00Z").code == 0
    shown = funnel("contacts", "show", "ann@example.test", "--json").json()
    assert shown["discreet"] is True and shown["first_name"] == "Ann" and shown["timezone"] == "America/Denver"
    # and through the consultation form, discreet left empty
    form = config.sources["consultation-form"]
    read = read_mapping(
        "consultation-form", form, {"email": "ann@example.test", "name": "", "discreet": ""}, zone("UTC")
    )
    engine = make_engine(project.database_url)
    with Session(engine) as session:
        apply_rows(session, config, "consultation-form", form, read.rows, datetime(2027, 1, 10, 18, tzinfo=UTC))
        session.commit()
    engine.dispose()
    assert funnel("run", "--now", "2027-01-10T18:00:00Z").code == 0
    (path,) = project.outbox.glob("*_consultation_received_*.eml")
    received = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    _discreet_email_checks(project, received, config.find_step("consultation", "received")[1].discreet_subject or "")
    # only an explicit "no" turns it off
    project.append(REGISTRATIONS, row("ann@example.test", d="no"))
    assert funnel("run", "--now", "2027-01-10T19:00:00Z").code == 0
    assert funnel("contacts", "show", "ann@example.test", "--json").json()["discreet"] is False


# --------------------------------------------------------------------------- item 9: half-written exports


def test_a_half_written_export_is_not_imported_until_its_last_line_is_complete(project: Project, funnel) -> None:
    path = project.write(REGISTRATIONS, HEADER + row("ann@example.test") + "maria.gonzalez@example.co")
    first = funnel("run", "--now", BEFORE, "--json")
    assert first.code == 0
    assert sent_steps(project, "maria.gonzalez@example.co") == []
    assert funnel("contacts", "show", "maria.gonzalez@example.co").code == 1
    assert any("still being written" in w for w in first.json()["warnings"])
    project.append(REGISTRATIONS, "m,Maria,Gonzalez,2027-01-14 19:00,America/Denver,no\n")
    second = funnel("run", "--now", "2027-01-10T16:15:00Z", "--json")
    assert second.json()["imported"] == 1
    assert sent_steps(project, "maria.gonzalez@example.com") == ["registered"]
    assert sent_steps(project, "maria.gonzalez@example.co") == []
    # a hand-made file whose last line never gets its newline: read once the file has been still a minute
    project.append(REGISTRATIONS, row("bob@example.test").rstrip("\n"))
    assert funnel("run", "--now", "2027-01-10T16:30:00Z").code == 0
    assert sent_steps(project, "bob@example.test") == []
    old = time.time() - 120
    os.utime(path, (old, old))
    assert funnel("run", "--now", "2027-01-10T16:45:00Z").code == 0
    assert sent_steps(project, "bob@example.test") == ["registered"]


# --------------------------------------------------------------------------- item 13: exports as offices make them


def test_excel_semicolon_windows_1252_export_is_read(project: Project, funnel) -> None:
    text = HEADER.replace(",", ";") + "jose@example.test;Jos\u00e9;P\u00e9rez;2027-01-14 19:00;America/Denver;no\r\n"
    (project.root / REGISTRATIONS).write_bytes(text.encode("cp1252"))
    result = funnel("run", "--now", BEFORE, "--json")
    assert result.code == 0 and result.json()["sent"] == 1
    assert any("Windows-1252" in w for w in result.json()["warnings"])
    assert funnel("contacts", "show", "jose@example.test", "--json").json()["first_name"] == "Jos\u00e9"


def test_a_stored_start_no_zone_can_show_fails_only_that_email(project: Project, funnel) -> None:
    path = project.write(
        "signups/consultation-requests.jsonl", '{"email": "ann@example.test"}\n{"email": "bob@example.test"}\n'
    )
    assert funnel("import", "consultation-requests", str(path), "--now", BEFORE).code == 0
    with db(project) as conn:  # as an older version might have stored them
        conn.execute("UPDATE contacts SET timezone = 'Asia/Tokyo' WHERE email = 'ann@example.test'")
        conn.execute(
            "UPDATE enrollments SET webinar = 'relationship-911', webinar_start = '9999-12-31 23:00:00.000000'"
            " WHERE contact_id = (SELECT id FROM contacts WHERE email = 'ann@example.test')"
        )
    run = funnel("run", "--now", BEFORE, "--json", "--config", str(project.root / "sequences.yaml"))
    assert run.code == 1, run.err
    assert [f["email"] for f in run.json()["failures"]] == ["ann@example.test"]
    assert sent_steps(project, "bob@example.test") == ["received"]


def test_forget_also_drops_tags_kept_for_the_address(project: Project, funnel) -> None:
    project.write(ATTENDANCE, "Email,Attended\nann@example.test,Yes\n")
    assert funnel("run", "--now", BEFORE).code == 0
    with db(project) as conn:  # known only by hash, as `suppressions sync` leaves an address
        conn.execute(
            "INSERT INTO contacts (email_hash, discreet, fields, created_at, updated_at, suppressed_reason)"
            " VALUES (?, FALSE, '{}', '2027-01-10 16:00:00', '2027-01-10 16:00:00', 'bounce')",
            (email_hash("ann@example.test"),),
        )
    assert funnel("contacts", "forget", "ann@example.test", "--now", BEFORE).code == 0
    with db(project) as conn:
        assert conn.execute("SELECT count(*) FROM pending_tags").fetchone() == (0,)


# --------------------------------------------------------------------------- imports at scale


def test_an_import_with_nothing_due_sets_each_enrollments_first_look(project: Project, funnel) -> None:
    """A new enrollment is first looked at when a step can happen, not at once for nothing.

    The confirmation here comes an hour after signing up: the import leaves
    next_due_at at that hour (a run in between has nothing to decide); the
    run at that hour sends it.
    """
    config = project.root / "sequences.yaml"
    shipped = "      - id: registered\n        wait: 0m\n"
    assert shipped in config.read_text()
    config.write_text(config.read_text().replace(shipped, "      - id: registered\n        wait: 1h\n"))
    project.write(REGISTRATIONS, HEADER + row("ann@example.test") + row("bob@example.test", tz="America/New_York"))
    imported = funnel("import", "webinar-registrations", REGISTRATIONS, "--now", "2027-01-10T09:00:00Z", "--json")
    assert imported.code == 0, imported.err
    assert imported.json()["enrolled"] == 2
    with db(project) as conn:
        due = [str(value)[:19] for (value,) in conn.execute("SELECT next_due_at FROM enrollments ORDER BY id")]
    assert due == ["2027-01-10 10:00:00", "2027-01-10 10:00:00"]
    assert funnel("run", "--now", "2027-01-10T09:59:00Z", "--json").json()["sent"] == 0
    later = funnel("run", "--now", "2027-01-10T10:00:00Z", "--json")
    assert later.json()["sent"] == 2
