"""Unsubscribe links over time: key rotation, a first FUNNEL_SECRET_KEY, a restored backup, links of old."""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, Result, project_db
from sqlalchemy.engine import make_url
from sqlmodel import Session

from funnel.mail.unsubscribe import TokenRef, Tokens, find, legacy_token, reading_tokens
from funnel.store.db import make_engine

HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
REGISTRATIONS = "signups/webinar-registrations.csv"
NOW = "2026-12-01T16:00:00Z"
KEY, SEND = secrets.token_hex(16), secrets.token_hex(16)


def row(who: str) -> str:
    return f"{who}@example.test,{who.title()},,2027-01-14 19:00,,no\n"


def test_a_previous_key_still_reads_old_tokens_and_new_tokens_use_the_new_key() -> None:
    old_token = Tokens("old-key", previous=[]).make(KEY, SEND)
    rotated = Tokens("new-key", previous=["older-key", "old-key"])
    assert rotated.read(old_token) == TokenRef(token_key=KEY, send_id=SEND)
    assert Tokens("new-key", previous=[]).read(old_token) is None  # without it, the old link is dead
    new_token = rotated.make(KEY)
    assert Tokens("new-key", previous=[]).read(new_token) == TokenRef(token_key=KEY)  # signed with the new key only
    assert Tokens("old-key", previous=[]).read(new_token) is None
    assert rotated.read(old_token[:-2] + ("AA" if not old_token.endswith("AA") else "BB")) is None  # forgeries fail


def test_previous_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    old_token = Tokens("old-key", previous=[]).make(KEY)
    monkeypatch.setenv("FUNNEL_SECRET_KEY_PREVIOUS", " retired-key , old-key ,")
    assert Tokens("new-key").read(old_token) == TokenRef(token_key=KEY)
    monkeypatch.delenv("FUNNEL_SECRET_KEY_PREVIOUS")
    assert Tokens("new-key").read(old_token) is None


def link_tokens(project: Project) -> list[str]:
    """The token of the List-Unsubscribe header of every email in the outbox, oldest first."""
    found = []
    for message in project.messages():
        match = re.search(r"/u/([^>]+)>", str(message["List-Unsubscribe"]))
        assert match, message["List-Unsubscribe"]
        found.append(match.group(1))
    return found


def token_to(project: Project, address: str) -> str:
    """The token in the newest email to `address`."""
    found = [
        t
        for m, t in zip(project.messages(), link_tokens(project), strict=True)
        if m["To"].addresses[0].addr_spec == address
    ]
    assert found, f"no email to {address}"
    return found[-1]


def named_by(project: Project, token: str) -> int | None:
    """Whom a token names, as `funnel serve` reads it (reading only): the contact id, or None."""
    engine = make_engine(project.database_url)
    try:
        with Session(engine) as session:
            tokens = reading_tokens(session)
            ref = tokens.read(token) if tokens else None
            named = find(session, ref) if ref else None
            return named.contact.id if named else None
    finally:
        engine.dispose()


def test_rotating_the_secret_key_keeps_links_already_sent_working(
    project: Project, funnel: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write(REGISTRATIONS, HEADER + row("ana"))
    monkeypatch.setenv("FUNNEL_SECRET_KEY", "the-old-key")
    assert funnel("run", "--now", NOW).code == 0
    [sent_before] = link_tokens(project)
    contact_id = named_by(project, sent_before)
    assert contact_id is not None

    monkeypatch.setenv("FUNNEL_SECRET_KEY", "the-new-key")
    assert named_by(project, sent_before) is None  # rotated without a grace period: dead link
    monkeypatch.setenv("FUNNEL_SECRET_KEY_PREVIOUS", "the-old-key")
    assert named_by(project, sent_before) == contact_id

    assert funnel("run", "--now", "2027-01-14T02:00:00Z").code == 0  # the day-before reminder goes out
    sent_after = link_tokens(project)[-1]
    assert sent_after != sent_before
    assert Tokens("the-new-key", previous=[]).read(sent_after) is not None
    assert Tokens("the-old-key", previous=[]).read(sent_after) is None


def test_setting_the_secret_key_for_the_first_time_keeps_links_already_sent_working(
    project: Project,
    funnel: Callable[..., Result],
    funnel_server: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by issue 16 (3.16): a first FUNNEL_SECRET_KEY silently killed every link the generated key signed."""
    monkeypatch.delenv("FUNNEL_SECRET_KEY")
    project.write(REGISTRATIONS, HEADER + row("ana"))
    assert funnel("run", "--now", NOW).code == 0  # signs with a key it generates and keeps
    [sent_before] = link_tokens(project)
    ana = named_by(project, sent_before)
    assert ana is not None

    monkeypatch.setenv("FUNNEL_SECRET_KEY", "chosen-by-the-practice")
    assert named_by(project, sent_before) == ana  # the kept key still reads what it signed
    with project_db(project) as db:
        [(stored,)] = db.execute("SELECT value FROM settings WHERE key = 'secret_key'").fetchall()
    # and it is said, once, where someone looks: a run on a terminal (-v) and serve's start; no key printed
    project.write(REGISTRATIONS, HEADER + row("ana") + row("bea"))
    run = funnel("run", "--now", NOW, "-v")
    assert run.code == 0, run.err
    notice = [line for line in run.err.splitlines() if "FUNNEL_SECRET_KEY" in line]
    assert len(notice) == 1 and "still work" in notice[0]
    assert stored not in run.err + run.out and "chosen-by-the-practice" not in run.err + run.out
    quiet = funnel("run", "--now", NOW)  # under cron: nothing new to say
    assert "FUNNEL_SECRET_KEY" not in quiet.err
    assert Tokens("chosen-by-the-practice", previous=[]).read(token_to(project, "bea@example.test")) is not None
    server = funnel_server("--now", NOW)
    with server.client() as http:
        assert http.post(f"/u/{sent_before}", data={"confirm": "yes"}, follow_redirects=True).status_code == 200
    assert funnel("contacts", "show", "ana@example.test", "--json").json()["unsubscribed"] is True
    said = "".join(server.stderr_lines)
    assert said.count("FUNNEL_SECRET_KEY") == 1 and stored not in said


def backup(project: Project, file: Path, funnel: Callable[..., Result]) -> None:
    """A backup as the README says: `funnel db backup` on SQLite, pg_dump on PostgreSQL."""
    if project.database_url.startswith("postgresql"):
        libpq = make_url(project.database_url).set(drivername="postgresql").render_as_string(False)
        subprocess.run(["pg_dump", "--format=custom", f"--file={file}", libpq], check=True, timeout=60)
    else:
        assert funnel("db", "backup", str(file)).code == 0


def restore(project: Project, file: Path) -> None:
    """A restore as the README says: the backup in place of funnel.db, or pg_restore --clean."""
    if project.database_url.startswith("postgresql"):
        libpq = make_url(project.database_url).set(drivername="postgresql").render_as_string(False)
        subprocess.run(["pg_restore", "--clean", f"--dbname={libpq}", str(file)], check=True, timeout=60)
    else:
        database = project.root / "funnel.db"
        for leftover in (Path(f"{database}-wal"), Path(f"{database}-shm")):
            leftover.unlink(missing_ok=True)
        database.write_bytes(file.read_bytes())


def test_a_link_sent_before_a_restore_never_unsubscribes_someone_else(
    project: Project, funnel: Callable[..., Result], funnel_server: Callable[..., Any], tmp_path: Path
) -> None:
    """Found by issue 16 (3.10): links named the row id, which a restored backup gives to the next new person."""
    project.write(REGISTRATIONS, HEADER + row("ana"))
    assert funnel("run", "--now", NOW).code == 0
    saved = tmp_path / "funnel-backup"
    backup(project, saved, funnel)
    project.write(REGISTRATIONS, HEADER + row("ana") + row("bea"))
    assert funnel("run", "--now", NOW).code == 0
    bea_link = token_to(project, "bea@example.test")

    restore(project, saved)  # Bea's row is gone with the restore ...
    project.write(REGISTRATIONS, HEADER + row("ana") + row("cleo"))
    assert funnel("run", "--now", NOW).code == 0  # ... and Cleo gets the row id Bea had
    with project_db(project) as db:
        ids = dict(db.execute("SELECT email, id FROM contacts").fetchall())
    assert ids["cleo@example.test"] == 2

    with funnel_server("--now", NOW).client() as http:
        page = http.get(f"/u/{bea_link}")
        assert page.status_code == 400 and "This link does not work" in page.text
        answer = http.post(f"/u/{bea_link}", data={"confirm": "yes"})
        assert answer.status_code == 400
        assert http.post(f"/u/{bea_link}/resubscribe").status_code == 400
    for who in ("ana", "cleo"):
        assert funnel("contacts", "show", f"{who}@example.test", "--json").json()["unsubscribed"] is False


def test_links_sent_before_token_keys_work_only_for_people_who_were_there(
    project: Project, funnel: Callable[..., Result], funnel_server: Callable[..., Any]
) -> None:
    """Old-format links (`[contact id, step run id]`) keep working up to the highest id migration 0007 saw."""
    project.write(REGISTRATIONS, HEADER + row("ana") + row("bea"))
    assert funnel("run", "--now", NOW).code == 0
    with project_db(project) as db:
        ids = dict(db.execute("SELECT email, id FROM contacts").fetchall())
        steps = dict(
            db.execute(
                "SELECT c.email, s.id FROM step_runs s JOIN enrollments e ON e.id = s.enrollment_id "
                "JOIN contacts c ON c.id = e.contact_id"
            ).fetchall()
        )
        ana, bea = ids["ana@example.test"], ids["bea@example.test"]
        # as if the database had moved to token keys when Ana alone was there
        db.execute("INSERT INTO settings (key, value) VALUES ('legacy_token_contacts', ?)", (str(ana),))
    key = "test-secret-key"
    with funnel_server("--now", NOW).client() as http:
        # Bea came after the move: no link of the old kind was ever made for her id
        assert http.post(f"/u/{legacy_token(key, bea)}", data={"confirm": "yes"}).status_code == 400
        # an old link that names Ana with someone else's email is not one funnel made
        assert http.post(f"/u/{legacy_token(key, ana, steps['bea@example.test'])}").status_code == 400
        assert http.get(f"/u/{legacy_token(key, ana, steps['ana@example.test'])}").status_code == 200
        one_click = http.post(
            f"/u/{legacy_token(key, ana, steps['ana@example.test'])}",
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert one_click.status_code == 200 and "You are unsubscribed" in one_click.text
    assert funnel("contacts", "show", "ana@example.test", "--json").json()["unsubscribed"] is True
    assert funnel("contacts", "show", "bea@example.test", "--json").json()["unsubscribed"] is False
