"""Delivery through SendGrid: the real `funnel run`, the official client and a fake SendGrid on 127.0.0.1.

Every test drives `funnel` (in-process or as a real process) with
FUNNEL_TRANSPORT=sendgrid and FUNNEL_SENDGRID_HOST pointing at the fake, and
checks what the fake received and what the database says afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest
from conftest import Project, project_db
from fake_sendgrid import FakeSendGrid, _recipients
from sqlalchemy import event

from funnel.config import load_config
from funnel.run.runner import Runner
from funnel.sendgrid.send import SendGridTransport
from funnel.store.db import make_engine
from funnel.timeutil import parse_instant
from funnel.transports.base import Transport

NOW = "2027-01-10T16:00:00Z"
HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"


def registrations(project: Project, count: int, *, start: int = 0) -> list[str]:
    addresses = [f"person{i:05d}@example.test" for i in range(start, start + count)]
    rows = "".join(f"{a},P{i},,2027-01-14 19:00,America/Denver,\n" for i, a in enumerate(addresses))
    project.write("signups/webinar-registrations.csv", HEADER + rows)
    return addresses


def sendgrid_env(fake: FakeSendGrid, key: str = "SG.test-key") -> dict[str, str]:
    return {"FUNNEL_TRANSPORT": "sendgrid", "SENDGRID_API_KEY": key, "FUNNEL_SENDGRID_HOST": fake.url}


def set_delivery(project: Project, **values: object) -> None:
    """Set keys under `delivery:` in the project's sequences.yaml (replacing the shipped ones)."""
    path = project.root / "sequences.yaml"
    text = path.read_text()
    for key in values:
        text = re.sub(rf"^  {key}: .*\n", "", text, flags=re.MULTILINE)
    lines = "".join(f"  {k}: {v}\n" for k, v in values.items())
    path.write_text(text.replace("delivery:\n", "delivery:\n" + lines, 1))


def run_side_by_side(config: Any, engine: Any, fake: FakeSendGrid, now: Any, workers: int) -> list[BaseException]:
    """Run `workers` runners at once on one database, without the run lock; return their errors."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            Runner(config, engine, SendGridTransport("SG.test-key", host=fake.url, concurrency=4), now).run()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def start_run_and_wait_for_requests(project: Project, fake: FakeSendGrid, count: int) -> subprocess.Popen[str]:
    """Start `funnel run` as a real process and return once the fake has seen `count` requests."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "funnel", "run", "--now", NOW],
        cwd=project.root,
        env={**os.environ, **sendgrid_env(fake)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(fake.requests) < count and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for another process's progress, not for a schedule
    return proc


@pytest.fixture
def fake(fake_sendgrid: FakeSendGrid) -> FakeSendGrid:
    return fake_sendgrid


def test_each_due_email_is_one_request_with_our_headers_and_no_personal_data(project: Project, funnel, fake) -> None:
    addresses = registrations(project, 12)
    result = funnel("run", "--now", NOW, "--json", env=sendgrid_env(fake))
    assert result.code == 0, result.err
    assert result.json()["sent"] == 12
    assert sorted(fake.sent_to(a) for a in addresses) == [1] * 12
    body = fake.accepted[0]["body"]
    personalization = body["personalizations"][0]
    assert personalization["to"][0]["email"] in addresses
    assert body["from"]["email"] == "care@healinglightcounseling.test"
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert body["headers"]["List-Unsubscribe"].startswith("<https://mail.healinglightcounseling.test/u/")
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    args = body["custom_args"]
    assert set(args) == {"funnel_send_id", "funnel_sequence", "funnel_step"}
    assert all(isinstance(v, str) for v in args.values())
    assert not any("@" in v or "person" in v.lower() for v in args.values())
    assert body["categories"] == ["webinar-relationship-911"]
    assert body["tracking_settings"]["open_tracking"] == {"enable": False}
    assert body["tracking_settings"]["subscription_tracking"] == {"enable": False}
    assert body["mail_settings"]["sandbox_mode"] == {"enable": False}
    shown = funnel("contacts", "show", addresses[0], "--json").json()
    registered = shown["enrollments"][0]["steps"][0]
    assert registered["status"] == "sent"
    assert registered["message_id"]


def test_sandbox_mode_answers_200_and_counts_as_sent(project: Project, funnel, fake) -> None:
    registrations(project, 3)
    set_delivery(project, sandbox="true")
    result = funnel("run", "--now", NOW, "--json", env=sendgrid_env(fake))
    assert result.code == 0, result.err
    assert result.json()["sent"] == 3
    assert all(r["status"] == 200 for r in fake.requests)
    assert fake.accepted[0]["body"]["mail_settings"]["sandbox_mode"] == {"enable": True}


def test_missing_api_key_is_a_configuration_error_before_anything_is_read(project: Project, funnel_process) -> None:
    registrations(project, 2)
    result = funnel_process("run", "--now", NOW, env={"FUNNEL_TRANSPORT": "sendgrid"})
    assert result.returncode == 2
    assert "SENDGRID_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project.root / "funnel.db").exists()


def test_rate_limit_waits_for_retry_after_and_sends_each_once(project: Project, funnel, fake) -> None:
    addresses = registrations(project, 10)
    fake.fail_next(3, status=429, retry_after="1")
    started = time.monotonic()
    result = funnel("run", "--now", NOW, "--json", env=sendgrid_env(fake))
    assert result.code == 0, result.err
    assert result.json()["sent"] == 10 and result.json()["failed"] == 0
    assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    assert [fake.sent_to(a) for a in addresses] == [1] * 10


def test_server_errors_and_dropped_connections_are_retried(project: Project, funnel, fake) -> None:
    addresses = registrations(project, 6)
    fake.fail_next(2, status=500)
    fake.drop_next(2)
    result = funnel("run", "--now", NOW, "--json", env=sendgrid_env(fake))
    assert result.code == 0, result.err
    assert result.json()["sent"] == 6
    assert [fake.sent_to(a) for a in addresses] == [1] * 6


def test_an_outage_leaves_mail_failed_retryable_for_the_next_run(project: Project, funnel, fake) -> None:
    addresses = registrations(project, 4)
    set_delivery(project, max_attempts=2)
    fake.set_status_for_all(503)
    first = funnel("run", "--now", NOW, "--json", env=sendgrid_env(fake))
    assert first.code == 1
    assert first.json()["failed"] == 4 and first.json()["sent"] == 0
    step = funnel("contacts", "show", addresses[0], "--json").json()["enrollments"][0]["steps"][0]
    assert step["status"] == "failed" and step["reason"].startswith("SendGrid 503")
    fake.set_status_for_all(None)
    second = funnel("run", "--now", "2027-01-10T17:00:00Z", "--json", env=sendgrid_env(fake))
    assert second.code == 0, second.err
    assert second.json()["sent"] == 4
    assert [fake.sent_to(a) for a in addresses] == [1] * 4


def test_a_failure_past_max_late_is_skipped_not_sent_late(project: Project, funnel, fake) -> None:
    addresses = registrations(project, 1)
    set_delivery(project, max_attempts=1)
    fake.set_status_for_all(500)
    assert funnel("run", "--now", NOW, env=sendgrid_env(fake)).code == 1
    fake.set_status_for_all(None)
    late = funnel("run", "--now", "2027-01-14T02:00:00Z", "--json", env=sendgrid_env(fake))
    assert late.json()["sent"] == 1  # the day-before reminder, on time
    step = funnel("contacts", "show", addresses[0], "--json").json()["enrollments"][0]["steps"][0]
    assert step["status"] == "skipped"
    assert step["reason"].startswith("late by 3 days (last attempt: SendGrid 500")
    assert fake.sent_to(addresses[0]) == 1


def test_a_rejected_address_fails_alone_with_sendgrids_message(project: Project, funnel, fake) -> None:
    addresses = registrations(project, 5)
    fake.reject_address(addresses[2], status=400, message="Does not contain a valid address.")
    result = funnel("run", "--now", NOW, "--json", env=sendgrid_env(fake))
    assert result.code == 1
    assert result.json()["sent"] == 4 and result.json()["failed"] == 1
    step = funnel("contacts", "show", addresses[2], "--json").json()["enrollments"][0]["steps"][0]
    assert step == {**step, "status": "failed", "reason": "SendGrid 400: Does not contain a valid address."}
    # not retryable: the next run does not try again
    again = funnel("run", "--now", "2027-01-10T17:00:00Z", "--json", env=sendgrid_env(fake))
    assert again.json()["sent"] == 0 and again.json()["failed"] == 0


def test_a_bad_api_key_stops_the_run_at_once_and_records_nothing_as_sent(
    project: Project, funnel_process, fake
) -> None:
    addresses = registrations(project, 20)
    result = funnel_process("run", "--now", NOW, "--json", env=sendgrid_env(fake, key="SG.wrong"))
    assert result.returncode == 1
    assert "SENDGRID_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(fake.requests) <= 8  # stopped at once: at most the requests already in flight
    assert fake.accepted == []
    fixed = funnel_process("run", "--now", "2027-01-10T16:05:00Z", "--json", env=sendgrid_env(fake))
    assert fixed.returncode == 0, fixed.stderr
    assert [fake.sent_to(a) for a in addresses] == [1] * 20


def test_slow_responses_time_out_and_are_retried(project: Project, funnel, fake) -> None:
    addresses = registrations(project, 2)
    set_delivery(project, request_timeout=0.3, max_attempts=2)
    fake.delay(1.0)
    result = funnel("run", "--now", NOW, "--json", env=sendgrid_env(fake))
    assert result.code == 1
    shown = funnel("contacts", "show", addresses[0], "--json").json()
    step = shown["enrollments"][0]["steps"][0]
    assert step["status"] == "failed" and "did not answer" in step["reason"]
    fake.delay(0)
    assert funnel("run", "--now", "2027-01-10T16:30:00Z", env=sendgrid_env(fake)).code == 0


def test_two_runs_at_once_send_each_email_exactly_once(project: Project, fake) -> None:
    addresses = registrations(project, 40)
    fake.delay(0.05)
    env = {**os.environ, **sendgrid_env(fake)}
    command = [sys.executable, "-m", "funnel", "run", "--now", NOW, "--json"]
    procs = [
        subprocess.Popen(command, cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    codes = sorted(p.wait(timeout=120) for p in procs)
    for p in procs:
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    assert codes in ([0, 0], [0, 75])
    assert [fake.sent_to(a) for a in addresses] == [1] * 40


def test_the_database_alone_prevents_double_sends_without_the_lock(project: Project, fake) -> None:
    """Two runners on one database, no run lock: the unique claim still sends each email once."""
    addresses = registrations(project, 60)
    fake.delay(0.01)
    config = load_config(project.root / "sequences.yaml")
    engine = make_engine(project.database_url)
    now = parse_instant(NOW)
    # both import first, so both see the same due work
    Runner(config, engine, SendGridTransport("SG.test-key", host=fake.url), now, sources=True).run()
    fake_total_after_first = len(fake.accepted)
    more = registrations(project, 60, start=100)
    errors = run_side_by_side(config, engine, fake, now, workers=2)
    assert not errors, errors
    assert fake_total_after_first == 60
    counts = Counter(r["body"]["personalizations"][0]["to"][0]["email"] for r in fake.accepted)
    assert all(n == 1 for n in counts.values())
    assert all(counts[a] == 1 for a in addresses + more)
    engine.dispose()


class _Announcing(Transport):
    """A real transport that says when its request starts, then sends it once `proceed` is set.

    Holding the request until the other run has settled makes the ending
    certain: the outcome cannot be recorded before the recovery looks.
    """

    def __init__(self, transport: SendGridTransport, started: threading.Event, proceed: threading.Event) -> None:
        self.transport = transport
        self.started = started
        self.proceed = proceed
        self.name = transport.name
        self.concurrency = transport.concurrency

    def send(self, email: Any) -> Any:
        self.started.set()
        assert self.proceed.wait(60), "the other run never settled"
        return self.transport.send(email)

    def close(self) -> None:
        self.transport.close()


def _drop_liveness_lock(database_url: str, run_id: int) -> None:
    """End the server session holding run `run_id`'s liveness lock, as an idle-session timeout,
    a restart or a proxy would: the run goes on, but looks dead to the other workers."""
    from sqlalchemy import text

    from funnel.store.workers import RUN_KEY_SPACE

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(
                text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = :space"
                    " AND objid = :run AND objsubid = 2"
                    # advisory locks are per database; other tests' databases hold the same keys
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"space": RUN_KEY_SPACE, "run": run_id},
            ).scalar_one()
            # waits until the backend is gone, and its lock with it
            assert conn.execute(text("SELECT pg_terminate_backend(:pid, 30000)"), {"pid": pid}).scalar_one()
    finally:
        engine.dispose()


def test_a_run_that_looks_dead_never_has_an_email_sent_twice(project: Project, fake) -> None:
    """The interleaving behind the rare double send, forced step by step.

    Run A has claimed her email. Run B takes A for dead (on SQLite without the
    run lock every other run looks dead; on PostgreSQL a run whose liveness lock
    was lost with its connection does) and reads A's rows in hand; *then* A
    hands the email over and its request starts; *then* B settles what it read.
    The old recovery gave the row back as if still only claimed (it deleted any
    row in hand), so B claimed her step afresh and sent it a second time. Each
    move of the ledger now names the state it moves from: B can only turn a
    `sending` row unknown.
    """
    (address,) = registrations(project, 1)
    config = load_config(project.root / "sequences.yaml")
    now = parse_instant(NOW)
    engine_a, engine_b = make_engine(project.database_url), make_engine(project.database_url)
    a_claimed, a_may_go, a_sending = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def claimed(done: int, total: int) -> None:  # A's progress: its claims are committed, nothing handed over
        a_claimed.set()
        assert a_may_go.wait(60), "run B never reached its recovery"

    b_settled = threading.Event()
    transport_a = _Announcing(SendGridTransport("SG.test-key", host=fake.url, concurrency=1), a_sending, b_settled)
    run_a = Runner(config, engine_a, transport_a, now, sources=True, progress=claimed)

    def work_a() -> None:
        try:
            run_a.run()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread_a = threading.Thread(target=work_a)
    thread_a.start()
    try:
        assert a_claimed.wait(60), "run A never claimed her email"
        if not project.on_sqlite:
            assert run_a.run_row is not None and run_a.run_row.id is not None
            _drop_liveness_lock(project.database_url, run_a.run_row.id)

        settling: list[str] = []

        def between_read_and_write(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            """B has read A's rows in hand and is about to settle them: A hands over first."""
            if settling or not statement.lstrip().upper().startswith(("UPDATE STEP_RUNS", "DELETE FROM STEP_RUNS")):
                return
            settling.append(statement)
            a_may_go.set()
            assert a_sending.wait(60), "run A never handed her email over"

        def settled(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            """B's first settling statement has run: A's request may go (its outcome comes after)."""
            if settling and statement == settling[0]:
                b_settled.set()

        event.listen(engine_b, "before_cursor_execute", between_read_and_write)
        event.listen(engine_b, "after_cursor_execute", settled)
        run_b = Runner(config, engine_b, SendGridTransport("SG.test-key", host=fake.url), now, sources=True)
        summary_b = run_b.run()
    finally:
        a_may_go.set()
        b_settled.set()
        thread_a.join(timeout=120)
        engine_a.dispose()
        engine_b.dispose()
    assert not errors, errors
    assert settling, "run B never settled run A's rows"
    assert fake.sent_to(address) == 1
    assert summary_b.sent == 0
    with project_db(project) as db:
        rows = [tuple(row) for row in db.execute("SELECT status, run_id FROM step_runs").fetchall()]
    # the email is A's: B could only report it unknown (A was taken for dead), never take it back
    assert rows == [("unknown", run_a.run_row.id)]


def test_a_run_killed_mid_send_never_resends_and_the_next_run_finishes(project: Project, funnel, fake) -> None:
    addresses = registrations(project, 30)
    set_delivery(project, concurrency=2)
    fake.delay(0.3)
    proc = start_run_and_wait_for_requests(project, fake, 5)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    fake.delay(0)
    received_before = {a for a in addresses if fake.sent_to(a)}
    assert 0 < len(received_before) < 30
    result = funnel("run", "--now", "2027-01-10T16:01:00Z", "--json", env=sendgrid_env(fake))
    assert result.code == 1  # unknown outcomes need a look
    summary = result.json()
    assert summary["unknown"] >= 1
    # nobody received the step twice, and everyone got it or is recorded as unknown
    assert all(fake.sent_to(a) <= 1 for a in addresses)
    unknown = set()
    for address in addresses:
        step = funnel("contacts", "show", address, "--json").json()["enrollments"][0]["steps"][0]
        assert step["status"] in ("sent", "unknown"), step
        if step["status"] == "unknown":
            unknown.add(address)
            assert "not sent again" in step["reason"]
        else:
            assert fake.sent_to(address) == 1
    assert len(unknown) == summary["unknown"]
    report = funnel("report", "--json").json()
    registered = report["sequences"][0]["steps"][0]
    assert registered["unknown"] == len(unknown)
    assert registered["sent"] == 30 - len(unknown)
    # and the run after that is quiet
    quiet = funnel("run", "--now", "2027-01-10T16:02:00Z", "--json", env=sendgrid_env(fake))
    assert quiet.json()["sent"] == 0 and quiet.json()["unknown"] == 0 and quiet.code == 0


def test_suppressions_sync_stops_mail_and_keeps_them_out(project: Project, funnel, fake) -> None:
    addresses = registrations(project, 3)
    funnel("run", "--now", NOW, env=sendgrid_env(fake))
    fake.add_suppression("bounces", addresses[0], 1_700_000_000)
    fake.add_suppression("unsubscribes", addresses[1], 1_700_000_000)
    fake.add_suppression("spam_reports", "stranger@example.test", 1_700_000_000)
    result = funnel("suppressions", "sync", "--now", NOW, "--json", env=sendgrid_env(fake))
    assert result.code == 0, result.err
    first = funnel("contacts", "show", addresses[0], "--json").json()
    assert first["suppressed"] is True and first["unsubscribed"] is False
    second = funnel("contacts", "show", addresses[1], "--json").json()
    assert second["unsubscribed"] is True
    # a stranger on SendGrid's list signing up later gets nothing
    project.append("signups/webinar-registrations.csv", "stranger@example.test,S,,2027-01-14 19:00,America/Denver,\n")
    later = funnel("run", "--now", "2027-01-14T02:00:00Z", "--json", env=sendgrid_env(fake))
    assert fake.sent_to("stranger@example.test") == 0
    assert fake.sent_to(addresses[0]) == 1  # no day-before for the bounced address
    assert later.json()["sent"] == 1  # only the third person's day-before


def test_send_test_goes_through_the_configured_transport(project: Project, funnel, fake) -> None:
    result = funnel("send-test", "consultation", "received", "--to", "me@example.test", env=sendgrid_env(fake))
    assert result.code == 0, result.err
    assert fake.sent_to("me@example.test") == 1
    assert fake.accepted[0]["body"]["subject"].startswith("[Test] ")
    assert "attachments" not in fake.accepted[0]["body"]


def test_send_test_of_the_confirmation_carries_its_calendar_invitation(project: Project, funnel, fake) -> None:
    import base64

    from icalendar import Calendar

    result = funnel(
        "send-test", "webinar-relationship-911", "registered", "--to", "me@example.test", env=sendgrid_env(fake)
    )
    assert result.code == 0, result.err
    (attachment,) = fake.accepted[0]["body"]["attachments"]
    (event,) = Calendar.from_ical(base64.b64decode(attachment["content"])).walk("VEVENT")
    assert str(event["SUMMARY"]) == "Evening webinar with Maya Ellis"  # the sample webinar, a week ahead


@pytest.mark.skipif(
    not os.environ.get("LIVE_SENDGRID_API_KEY"), reason="set LIVE_SENDGRID_API_KEY to test against SendGrid's sandbox"
)
def test_live_sandbox_send(project: Project, funnel) -> None:  # pragma: no cover - needs a real key
    key = os.environ["LIVE_SENDGRID_API_KEY"]
    set_delivery(project, sandbox="true")
    registrations(project, 1)
    result = funnel("run", "--now", NOW, "--json", env={"FUNNEL_TRANSPORT": "sendgrid", "SENDGRID_API_KEY": key})
    assert result.code == 0, result.err
    assert result.json()["sent"] == 1


# --------------------------------------------------------------------------- PostgreSQL


def test_two_runs_at_once_on_postgresql_send_each_email_once(project: Project, fake, postgres_url: str) -> None:
    addresses = registrations(project, 40)
    fake.delay(0.05)
    env = {**os.environ, **sendgrid_env(fake), "FUNNEL_DATABASE_URL": postgres_url}
    command = [sys.executable, "-m", "funnel", "run", "--now", NOW, "--json"]
    procs = [
        subprocess.Popen(command, cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 75]), outputs
    assert [fake.sent_to(a) for a in addresses] == [1] * 40


def test_the_database_alone_prevents_double_sends_on_postgresql(project: Project, fake, postgres_url: str) -> None:
    addresses = registrations(project, 80)
    fake.delay(0.01)
    config = load_config(project.root / "sequences.yaml")
    engine = make_engine(postgres_url)
    now = parse_instant(NOW)
    errors = run_side_by_side(config, engine, fake, now, workers=3)
    engine.dispose()
    assert not errors, errors
    assert [fake.sent_to(a) for a in addresses] == [1] * 80


def test_sigterm_stops_cleanly_leaving_nothing_unknown(project: Project, funnel, fake) -> None:
    addresses = registrations(project, 30)
    set_delivery(project, concurrency=2)
    fake.delay(0.3)
    proc = start_run_and_wait_for_requests(project, fake, 5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err
    fake.delay(0)
    got_before = {a for a in addresses if fake.sent_to(a)}
    assert 0 < len(got_before) < 30
    result = funnel("run", "--now", "2027-01-10T16:01:00Z", "--json", env=sendgrid_env(fake))
    assert result.code == 0, result.err
    assert result.json()["unknown"] == 0  # every request under way was recorded before stopping
    assert result.json()["sent"] == 30 - len(got_before)
    assert [fake.sent_to(a) for a in addresses] == [1] * 30


# --------------------------------------------------------------------------- SIGKILL leaves little unknown


def start_run(project: Project, env: dict[str, str], now: str = NOW) -> subprocess.Popen[str]:
    """`funnel run` as a real process, to kill or to race with other commands."""
    return subprocess.Popen(
        [sys.executable, "-m", "funnel", "run", "--now", now],
        cwd=project.root,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition: Any, seconds: float = 90) -> None:
    """Wait for another process's progress (never for a schedule)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)


def step_statuses(project: Project, env: dict[str, str]) -> Counter[str]:
    """How many `registered` steps are in each status, straight from the database."""
    import sqlalchemy

    engine = make_engine(env.get("FUNNEL_DATABASE_URL") or project.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sqlalchemy.text("SELECT status, count(*) FROM step_runs WHERE step_id = 'registered' GROUP BY status")
            ).all()
    finally:
        engine.dispose()
    return Counter({status: count for status, count in rows})


#: the hand-over window is exactly two batches of `delivery.concurrency`: no margin is needed
CONCURRENCY = 4


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_leaves_at_most_two_batches_unknown_and_the_next_run_sends_the_rest(
    backend: str, project: Project, fake, request: pytest.FixtureRequest
) -> None:
    addresses = registrations(project, 150)
    set_delivery(project, concurrency=CONCURRENCY)
    env = sendgrid_env(fake)
    env["FUNNEL_DATABASE_URL"] = (
        request.getfixturevalue("postgres_url")
        if backend == "postgresql"
        else f"sqlite:///{project.root / 'funnel.db'}"
    )
    fake.delay(0.2)
    proc = start_run(project, env)
    wait_until(lambda: len(fake.requests) >= 20)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    # on SQLite every email was claimed by the dead run (one page); PostgreSQL workers take
    # smaller pages, and what was not taken yet has no row at all; only emails handed over may be unknown
    left = step_statuses(project, env)
    untaken = 150 - (left["claimed"] + left["sending"] + left["sent"])
    assert untaken == 0 if backend == "sqlite" else untaken >= 0, left
    assert set(left) <= {"claimed", "sending", "sent"}, left
    assert left["sending"] <= 2 * CONCURRENCY, left
    fake.delay(0)
    result = subprocess.run(
        [sys.executable, "-m", "funnel", "run", "--now", "2027-01-10T16:01:00Z", "--json"],
        cwd=project.root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = json.loads(result.stdout)
    assert summary["unknown"] == left["sending"]
    assert summary["sent"] == left["claimed"] + untaken  # claimed but never handed over: they go out now
    final = step_statuses(project, env)
    assert final == Counter({"sent": 150 - summary["unknown"], "unknown": summary["unknown"]})
    # nobody got it twice; everyone not unknown got it exactly once
    counts = [fake.sent_to(a) for a in addresses]
    assert max(counts) == 1
    assert counts.count(0) <= summary["unknown"]


def test_sigkill_with_the_outbox_leaves_at_most_two_batches_unknown(project: Project, funnel) -> None:
    addresses = registrations(project, 1500)
    set_delivery(project, concurrency=CONCURRENCY)
    proc = start_run(project, {})
    wait_until(lambda: project.outbox.exists() and len(list(project.outbox.glob("*.eml"))) >= 100, seconds=180)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    left = step_statuses(project, {})
    written = {to for to, _, step in project.sent() if step == "registered"}
    # a file exists for every email recorded as sent; the others handed over may or may not have one
    assert left["sent"] <= len(written) <= left["sent"] + left["sending"]
    assert left["sending"] <= 2 * CONCURRENCY, left
    result = funnel("run", "--now", "2027-01-10T16:01:00Z", "--json")
    assert result.json()["unknown"] == left["sending"]
    sent = Counter(to for to, _, step in project.sent() if step == "registered")
    assert max(sent.values()) == 1
    assert len(addresses) - len(sent) <= left["sending"]  # only an unknown email can be missing


# --------------------------------------------------------------------------- unsubscribe and forget during a run


def test_unsubscribe_and_forget_during_a_run_stop_emails_it_already_claimed(project: Project, fake) -> None:
    import sqlalchemy

    addresses = registrations(project, 80)
    set_delivery(project, concurrency=2)
    env = sendgrid_env(fake)
    fake.delay(0.4)  # keeps the run busy: it claims all 80 at once, then sends two at a time
    proc = start_run(project, env)
    wait_until(lambda: len(fake.requests) >= 2)
    engine = make_engine(project.database_url)
    with engine.connect() as conn:
        # the last two claimed (in enrollment order): claimed long before their turn to be handed over
        # (SQLite claims all 80 in one page; PostgreSQL workers take pages of 50)
        leaving, erased = conn.execute(
            sqlalchemy.text(
                "SELECT c.email FROM step_runs s JOIN enrollments e ON e.id = s.enrollment_id"
                " JOIN contacts c ON c.id = e.contact_id WHERE s.status = 'claimed' ORDER BY e.id DESC LIMIT 2"
            )
        ).scalars()
        claimed = conn.execute(sqlalchemy.text("SELECT count(*) FROM step_runs WHERE status = 'claimed'")).scalar()
        assert claimed >= 40, claimed
    # both at once: on a loaded machine two commands one after the other took longer than the
    # ~10 s the run needs to reach these two (48 emails ahead on PostgreSQL, two at a time, 0.4 s each)
    commands = [
        subprocess.Popen(
            [sys.executable, "-m", "funnel", *args, "--now", NOW],
            cwd=project.root,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in (["contacts", "unsubscribe", leaving], ["contacts", "forget", erased])
    ]
    for command in commands:
        _, command_err = command.communicate(timeout=120)
        assert command.returncode == 0, command_err
    assert proc.poll() is None, "the run finished before the test could unsubscribe anyone"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert fake.sent_to(leaving) == 0
    assert fake.sent_to(erased) == 0
    assert sorted(fake.sent_to(a) for a in addresses) == [0, 0] + [1] * 78
    assert step_statuses(project, env) == Counter({"sent": 78, "skipped": 2})
    with engine.connect() as conn:
        reasons = sorted(
            conn.execute(sqlalchemy.text("SELECT reason FROM step_runs WHERE status = 'skipped'")).scalars()
        )
    engine.dispose()
    assert reasons == ["erased", "unsubscribed"]


def test_an_unsubscribe_after_the_hand_over_stops_the_request_not_yet_started(project: Project, funnel, fake) -> None:
    """Suppression is read again on the sender thread right before each request, not only per batch.

    One sender thread (concurrency 1): while the first email's request is at the fake, the other
    is already handed over (`sending`: the window is two batches). Her unsubscribe lands then; her
    request, which starts only after the first one's answer, must not go out.
    """
    import sqlalchemy

    people = set(registrations(project, 2))
    set_delivery(project, concurrency=1)
    env = sendgrid_env(fake)
    engine = make_engine(project.database_url)
    seen: list[str] = []
    failures: list[str] = []

    def status_of(address: str) -> tuple[str, str | None]:
        with engine.connect() as conn:
            row = conn.execute(
                sqlalchemy.text(
                    "SELECT s.status, s.reason FROM step_runs s JOIN enrollments e ON e.id = s.enrollment_id"
                    " JOIN contacts c ON c.id = e.contact_id WHERE c.email = :email AND s.step_id = 'registered'"
                ),
                {"email": address},
            ).one_or_none()
        return (row[0], row[1]) if row else ("", None)

    def unsubscribe_the_other(record: dict[str, Any]) -> None:
        """(The fake's thread, while the first request waits for its answer.)"""
        seen.extend(_recipients(record["body"]))
        if len(seen) > 1:
            return
        (other,) = people - set(seen)
        try:
            wait_until(lambda: status_of(other)[0] == "sending", seconds=30)
            done = subprocess.run(
                [sys.executable, "-m", "funnel", "contacts", "unsubscribe", other, "--now", NOW],
                cwd=project.root,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        except AssertionError as exc:  # raised on the fake's thread: carried to the test
            failures.append(str(exc))

    fake.on_mail(unsubscribe_the_other)
    try:
        result = funnel("run", "--now", NOW, env=env)
    finally:
        fake.on_mail(None)
    assert result.code == 0, result.err
    assert failures == []
    assert len(seen) == 1, seen
    (other,) = people - set(seen)
    assert status_of(other) == ("skipped", "unsubscribed")
    engine.dispose()


def test_the_confirmation_carries_the_calendar_invitation_through_sendgrid(project: Project, funnel, fake) -> None:
    import base64

    from icalendar import Calendar

    project.write(
        "signups/webinar-registrations.csv",
        HEADER
        + "ana@example.test,Ana,,2027-01-14 19:00,America/Los_Angeles,\n"
        + "carla@example.test,Carla,,2027-01-14 19:00,America/Denver,yes\n",
    )
    result = funnel("run", "--now", NOW, "--json", env=sendgrid_env(fake))
    assert result.code == 0, result.err
    bodies = {r["body"]["personalizations"][0]["to"][0]["email"]: r["body"] for r in fake.accepted}
    summaries = {}
    for address, body in bodies.items():
        (attachment,) = body["attachments"]
        assert (attachment["type"], attachment["filename"], attachment["disposition"]) == (
            "text/calendar",
            "invite.ics",
            "attachment",
        )
        calendar = Calendar.from_ical(base64.b64decode(attachment["content"]))
        assert str(calendar["METHOD"]) == "PUBLISH"
        (event,) = calendar.walk("VEVENT")
        assert event.decoded("DTSTART") == parse_instant("2027-01-15T02:00:00Z")  # 19:00 in Denver, for both
        assert event.decoded("DTEND") == parse_instant("2027-01-15T03:00:00Z")
        assert address not in event.to_ical().decode()
        summaries[address] = str(event["SUMMARY"])
    assert summaries == {
        "ana@example.test": "Evening webinar with Maya Ellis",  # webinars.relationship-911.event_title
        "carla@example.test": "Appointment",  # discreet
    }


def test_the_check_before_each_request_reads_every_kind_of_suppression_and_the_latest_commit(project: Project) -> None:
    """`SuppressionCheck` (a sender thread's read right before a request): each reason, an empty reason,
    a person not committed yet, and an unsubscribe committed by another connection after its first read."""
    from datetime import UTC, datetime

    from sqlmodel import Session

    from funnel.store.db import migrate
    from funnel.store.ledger import SuppressionCheck
    from funnel.store.models import Contact

    engine = make_engine(project.database_url)
    migrate(engine)
    when = datetime(2027, 1, 10, tzinfo=UTC)
    people = {
        "clear": {},
        "blank reason": {"suppressed_reason": ""},
        "erased": {"erased_at": when, "unsubscribed_at": when},
        "unsubscribed": {"unsubscribed_at": when, "suppressed_reason": "bounce"},
        "bounced": {"suppressed_reason": "bounce"},
    }
    with Session(engine) as session:
        rows = {
            name: Contact(email_hash=name, created_at=when, updated_at=when, **values)  # type: ignore[arg-type]
            for name, values in people.items()
        }
        session.add_all(rows.values())
        session.commit()
        ids = {name: row.id or 0 for name, row in rows.items()}
    check = SuppressionCheck(engine)
    try:
        found = {name: check(contact_id) for name, contact_id in ids.items()}
        assert found == {
            "clear": None,
            "blank reason": None,
            "erased": "erased",
            "unsubscribed": "unsubscribed",
            "bounced": "bounce",
        }
        assert check(max(ids.values()) + 1000) is None  # not committed yet: the hand-over's read covered her
        assert check(0) is None
        with Session(engine) as session:
            clear = session.get(Contact, ids["clear"])
            assert clear is not None
            clear.unsubscribed_at = when
            session.commit()
        assert check(ids["clear"]) == "unsubscribed"  # the same thread's connection sees the newer commit
    finally:
        check.close()
        engine.dispose()


def test_a_run_collects_cyclic_garbage_less_often_and_leaves_the_collector_as_it_was(project: Project, funnel) -> None:
    """`fewer_collections` around every run (an in-process caller, `funnel serve` or the tests, gets
    its own settings back), also when the run fails; cycles made during a run are still collected."""
    import gc

    from funnel.collector import THRESHOLDS as RUN_GC_THRESHOLDS
    from funnel.collector import fewer_collections

    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    registrations(project, 3)
    assert funnel("run", "--now", NOW).code == 0
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), fewer_collections():
        assert gc.get_threshold() == RUN_GC_THRESHOLDS
        assert gc.get_freeze_count() >= frozen
        raise Boom
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    with fewer_collections():
        import weakref

        cycle = Cycle()
        gone = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert gone() is None


def test_the_funnel_program_sets_the_collector_for_its_whole_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from funnel.cli import main
    from funnel.collector import THRESHOLDS

    before = gc.get_threshold()
    monkeypatch.setattr(sys, "argv", ["funnel", "--help"])
    try:
        main()  # prints the help and returns
        assert gc.get_threshold() == THRESHOLDS
    finally:
        gc.set_threshold(*before)


def test_the_collector_is_given_back_as_found_with_objects_the_caller_froze_and_runs_in_threads() -> None:
    """Found by a break-it session: leaving `fewer_collections` unfroze what the caller had frozen,
    and two runs overlapping in threads left the process with the runs' thresholds."""
    import gc

    from funnel.collector import THRESHOLDS, fewer_collections

    before = gc.get_threshold()
    keep = [[i] for i in range(1000)]
    gc.freeze()
    try:
        with fewer_collections():
            assert gc.get_threshold() == THRESHOLDS
        # still frozen (a frozen object that lost its last reference is freed all the same: no exact count)
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == before
    finally:
        gc.unfreeze()
    del keep

    inside, first_out = threading.Barrier(2), threading.Event()

    def run(wait_for: threading.Event | None) -> None:
        with fewer_collections():
            inside.wait(timeout=10)
            if wait_for is not None:
                wait_for.wait(timeout=10)
        if wait_for is None:
            first_out.set()

    threads = [threading.Thread(target=run, args=(None,)), threading.Thread(target=run, args=(first_out,))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, 0)


class _LosingItsSession(Transport):
    """A real transport; as the first request starts, the server ends every session of the sender
    except the one holding its liveness lock (a failover, a proxy's idle timeout): the serve is
    alive, but the transaction that records this email, and the hand-over of the next, fail."""

    def __init__(self, transport: SendGridTransport, database_url: str) -> None:
        self.transport, self.database_url = transport, database_url
        self.name, self.concurrency = transport.name, transport.concurrency
        self.cut = False

    def send(self, email: Any) -> Any:
        if not self.cut:
            self.cut = True
            from sqlalchemy import text

            from funnel.store.workers import RUN_KEY_SPACE

            engine = make_engine(self.database_url)
            try:
                with engine.connect() as conn:
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid NOT IN"
                            " (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = :space)"
                        ),
                        {"space": RUN_KEY_SPACE},
                    )
            finally:
                engine.dispose()
        return self.transport.send(email)

    def close(self) -> None:
        self.transport.close()


def test_a_serve_that_fails_mid_batch_gives_back_what_it_never_handed_over(project: Project, fake, funnel) -> None:
    """`funnel serve` claims the due transactional steps of the enrollments a click names, then sends
    them one by one. If that stops on an error (here its database session is lost after the first
    request started), the steps it claimed but never handed over go back, as a run's do: the serve
    lives on and holds its liveness lock, so no run would take them from it, and they would wait,
    unsent, until the serve restarted. The one whose request started stays in hand (unknown later)."""
    if project.on_sqlite:
        pytest.skip("ends server sessions: PostgreSQL")
    from funnel.run.instant import ServeSender

    addresses = registrations(project, 2)
    imported = funnel("import", "webinar-registrations", "signups/webinar-registrations.csv", "--now", NOW)
    assert imported.code == 0, imported.err
    config = load_config(project.root / "sequences.yaml")
    engine = make_engine(project.database_url)
    now = parse_instant(NOW)
    sender = ServeSender(
        config, engine, _LosingItsSession(SendGridTransport("SG.test-key", host=fake.url), project.database_url)
    )
    try:
        with project_db(project) as db:
            ids = [i for (i,) in db.execute("SELECT id FROM enrollments ORDER BY id").fetchall()]
        assert len(ids) == 2
        with pytest.raises(Exception):  # noqa: B017,PT011  # the lost session's error, whichever the driver says
            sender.send_due_transactional(ids, now)
        assert sum(fake.sent_to(a) for a in addresses) == 1
        with project_db(project) as db:
            states = sorted(s for (s,) in db.execute("SELECT status FROM step_runs").fetchall())
        assert states == ["sending"]  # the one under way; the other went back
        # a cron run meanwhile (the serve alive) sends the one given back, and only that one
        engine_b = make_engine(project.database_url)
        try:
            Runner(config, engine_b, SendGridTransport("SG.test-key", host=fake.url), now).run()
        finally:
            engine_b.dispose()
        assert [fake.sent_to(a) for a in addresses] == [1, 1]
    finally:
        sender.close()
        engine.dispose()
