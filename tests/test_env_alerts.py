"""Running it for real: the `.env` settings file, alerts to the practice, the heartbeat.

Real parts only: `funnel` in-process and as subprocesses, `funnel serve` on
loopback, the fake SendGrid (a real HTTP server) for alert emails, and a tiny
HTTP server standing in for a healthchecks-style heartbeat service.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, Result

from funnel.ops.envfile import key_fingerprint

HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
REGISTRATIONS = "signups/webinar-registrations.csv"
NOW = "2026-12-01T16:00:00Z"
KEY = "key-from-the-env-file"

Run = Callable[..., Result]


def row(who: str, domain: str = "example.test") -> str:
    return f"{who}@{domain},{who.title()},,2027-01-14 19:00,,no\n"


def link_tokens(project: Project) -> list[str]:
    found = []
    for message in project.messages():
        match = re.search(r"/u/([^>]+)>", str(message["List-Unsubscribe"]))
        assert match
        found.append(match.group(1))
    return found


@pytest.fixture
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite sets FUNNEL_SECRET_KEY for every test; here the key comes from the file."""
    monkeypatch.delenv("FUNNEL_SECRET_KEY", raising=False)


# --------------------------------------------------------------------------- .env


def test_run_and_serve_read_the_same_key_from_the_env_file_even_with_a_note_after_it(
    project: Project, funnel_process: Any, funnel_server: Any, no_env_key: None
) -> None:
    # the README's old env file: a note after the value. systemd kept it, a shell dropped it;
    # both now go through funnel, which reads it one way for every command
    project.write(".env", f"# the key that signs unsubscribe links\nFUNNEL_SECRET_KEY={KEY}   # keep it secret\n")
    project.write(REGISTRATIONS, HEADER + row("ana"))
    result = funnel_process("run", "--now", NOW)
    assert result.returncode == 0, result.stderr
    [token] = link_tokens(project)
    server = funnel_server("--now", NOW)
    with server.client() as http:
        health = http.get("/healthz", headers={"accept": "application/json"}).json()
        assert health == {"status": "ok", "key_fingerprint": key_fingerprint(KEY)}
        assert f"key fingerprint: {key_fingerprint(KEY)}" in http.get("/healthz").text
        assert KEY not in http.get("/healthz").text
        assert http.get(f"/u/{token}").status_code == 200
        assert http.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code in (200, 303)


def test_the_real_environment_wins_over_the_env_file(
    project: Project, funnel: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write(".env", "FUNNEL_TRANSPORT=carrier-pigeon\n")
    assert funnel("run", "--now", NOW).code == 2  # the file is read: its (bad) transport is refused
    monkeypatch.setenv("FUNNEL_TRANSPORT", "outbox")
    assert funnel("run", "--now", NOW).code == 0


def test_the_env_file_can_live_elsewhere(project: Project, funnel: Run, tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc-funnel.env"
    elsewhere.write_text("FUNNEL_TRANSPORT=carrier-pigeon\n")
    assert funnel("run", "--now", NOW, env={"FUNNEL_ENV_FILE": str(elsewhere)}).code == 2
    assert funnel("run", "--now", NOW).code == 0  # no .env beside sequences.yaml: nothing applied


def test_settings_from_the_env_file_do_not_outlive_the_command(project: Project, funnel: Run) -> None:
    import os

    project.write(".env", "FUNNEL_SOMETHING_ELSE=1\n")
    assert funnel("check").code == 0
    assert "FUNNEL_SOMETHING_ELSE" not in os.environ


def test_an_unreadable_env_file_is_one_sentence_and_exit_2(project: Project, funnel: Run) -> None:
    path = project.write(".env", "FUNNEL_TRANSPORT=outbox\n")
    path.write_bytes(b"FUNNEL_TRANSPORT=\xff\xfe\n")
    result = funnel("run", "--now", NOW)
    assert result.code == 2
    assert ".env: cannot be read" in result.err
    assert "Traceback" not in result.err


# --------------------------------------------------------------------------- alerts and the heartbeat

ALERTS_TO = "therapist@alerts.example.test"


class Heartbeat:
    """A tiny healthchecks-style server: records each path asked for."""

    def __init__(self) -> None:
        pings: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                pings.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *_: object) -> None:
                return None

        self.pings = pings
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ping/abc"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def heartbeat() -> Iterator[Heartbeat]:
    server = Heartbeat()
    try:
        yield server
    finally:
        server.close()


def with_alerts(project: Project, heartbeat_url: str | None = None) -> None:
    text = f"\nalerts:\n  email: {ALERTS_TO}\n"
    if heartbeat_url:
        text += f"  heartbeat_url: {heartbeat_url}\n"
    project.append("sequences.yaml", text)


def through_sendgrid(fake: Any) -> dict[str, str]:
    return {"FUNNEL_TRANSPORT": "sendgrid", "SENDGRID_API_KEY": "SG.test-key", "FUNNEL_SENDGRID_HOST": fake.url}


def alerts_sent(fake: Any) -> list[dict[str, Any]]:
    """The alert emails SendGrid accepted, as request bodies."""
    return [r["body"] for r in fake.accepted if r["body"]["personalizations"][0]["to"][0]["email"] == ALERTS_TO]


def alert_text(body: dict[str, Any]) -> str:
    return str(body["content"][0]["value"])


def outbox_alerts(project: Project) -> list[Any]:
    return [m for m in project.messages() if m["To"].addresses[0].addr_spec == ALERTS_TO]


def test_a_refused_file_is_told_once_a_day_and_the_heartbeat_hears_of_it(
    project: Project, funnel: Run, fake_sendgrid: Any, heartbeat: Heartbeat
) -> None:
    with_alerts(project, heartbeat.url)
    (project.root / REGISTRATIONS).write_bytes((HEADER + row("ana")).encode("utf-16-le"))
    env = through_sendgrid(fake_sendgrid)
    assert funnel("run", "--now", NOW, env=env).code == 1  # a refused file: exit 1, after the rest
    [alert] = alerts_sent(fake_sendgrid)
    assert alert["subject"] == "A signups file was refused: signups/webinar-registrations.csv"
    assert "UTF-16" in alert_text(alert) and "export the file again" in alert_text(alert)
    assert heartbeat.pings == ["/ping/abc/fail"]

    # the same problem an hour later and 23 hours later: no second email; a day later: one more
    assert funnel("run", "--now", "2026-12-01T17:00:00Z", env=env).code == 1  # a refused file: exit 1, after the rest
    assert funnel("run", "--now", "2026-12-02T15:59:00Z", env=env).code == 1  # a refused file: exit 1, after the rest
    assert len(alerts_sent(fake_sendgrid)) == 1
    assert funnel("run", "--now", "2026-12-02T16:00:00Z", env=env).code == 1  # a refused file: exit 1, after the rest
    assert len(alerts_sent(fake_sendgrid)) == 2
    assert heartbeat.pings == ["/ping/abc/fail"] * 4

    # fixed: a good run pings the heartbeat itself
    project.write(REGISTRATIONS, HEADER + row("ana"))
    assert funnel("run", "--now", "2026-12-02T16:10:00Z", env=env).code == 0
    assert heartbeat.pings[-1] == "/ping/abc"
    assert len(alerts_sent(fake_sendgrid)) == 2


def test_a_config_that_cannot_be_read_is_told_to_the_address_the_last_good_one_named(
    project: Project, funnel: Run, fake_sendgrid: Any, heartbeat: Heartbeat
) -> None:
    with_alerts(project, heartbeat.url)
    env = through_sendgrid(fake_sendgrid)
    assert funnel("run", "--now", NOW, env=env).code == 0
    assert heartbeat.pings == ["/ping/abc"]
    project.append("sequences.yaml", "delivery:\n\tsend_window: 08:00\n")  # a tab: not YAML
    result = funnel("run", "--now", "2026-12-01T16:15:00Z", env=env)
    assert result.code == 2
    [alert] = alerts_sent(fake_sendgrid)
    assert alert["subject"] == "No email is going out: sequences.yaml cannot be read"
    assert "sequences.yaml:" in alert_text(alert) and "funnel check" in alert_text(alert)
    assert heartbeat.pings == ["/ping/abc", "/ping/abc/fail"]
    assert funnel("run", "--now", "2026-12-01T16:30:00Z", env=env).code == 2
    assert len(alerts_sent(fake_sendgrid)) == 1  # once a day


def test_before_any_good_run_funnel_alert_email_names_the_address(project: Project, funnel: Run) -> None:
    project.write("sequences.yaml", "practice: [this is not right\n")
    assert funnel("run", "--now", NOW).code == 2
    assert not (project.root / "funnel.db").exists() or not project.on_sqlite  # nobody named: nothing made
    assert funnel("run", "--now", NOW, env={"FUNNEL_ALERT_EMAIL": ALERTS_TO}).code == 2
    [alert] = outbox_alerts(project)  # no transport known yet: the outbox
    assert alert["Subject"] == "No email is going out: sequences.yaml cannot be read"
    assert funnel("run", "--now", NOW, env={"FUNNEL_ALERT_EMAIL": ALERTS_TO}).code == 2
    assert len(outbox_alerts(project)) == 1


def test_failed_sends_are_told_without_naming_anyone(
    project: Project, funnel: Run, fake_sendgrid: Any, heartbeat: Heartbeat
) -> None:
    with_alerts(project, heartbeat.url)
    project.write(REGISTRATIONS, HEADER + row("ana") + row("bea"))
    fake_sendgrid.reject_address("bea@example.test")
    assert funnel("run", "--now", NOW, env=through_sendgrid(fake_sendgrid)).code == 1
    [alert] = alerts_sent(fake_sendgrid)
    assert alert["subject"] == "1 email(s) could not be sent"
    assert "SendGrid 400: Does not contain a valid address." in alert_text(alert)
    assert "bea" not in alert_text(alert).lower()
    assert heartbeat.pings == ["/ping/abc/fail"]


def test_a_refused_key_is_told_through_the_outbox(
    project: Project, funnel: Run, fake_sendgrid: Any, heartbeat: Heartbeat
) -> None:
    with_alerts(project, heartbeat.url)
    project.write(REGISTRATIONS, HEADER + row("ana"))
    fake_sendgrid.set_status_for_all(401)
    assert funnel("run", "--now", NOW, env=through_sendgrid(fake_sendgrid)).code == 1
    [alert] = outbox_alerts(project)
    assert alert["Subject"] == "No email is going out: SendGrid refused the API key"
    assert "SENDGRID_API_KEY" in alert.get_content()
    assert heartbeat.pings == ["/ping/abc/fail"]


def test_a_missing_api_key_is_told_through_the_outbox(project: Project, funnel: Run) -> None:
    with_alerts(project)
    assert funnel("check").code == 0  # makes nothing; the first run makes the database
    assert funnel("run", "--now", NOW).code == 0
    assert funnel("run", "--now", NOW, env={"FUNNEL_TRANSPORT": "sendgrid"}).code == 2
    [alert] = outbox_alerts(project)
    assert alert["Subject"] == "No email is going out: the mail settings are incomplete"
    assert "SENDGRID_API_KEY is not set" in alert.get_content()


def test_emails_left_unknown_by_a_killed_run_are_told(
    project: Project, funnel: Run, funnel_process: Any, fake_sendgrid: Any
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    with_alerts(project)
    project.write(REGISTRATIONS, HEADER + row("ana"))
    env = through_sendgrid(fake_sendgrid)
    arrived = threading.Event()
    fake_sendgrid.on_mail(lambda _record: arrived.set())
    fake_sendgrid.delay(30)
    process = subprocess.Popen(
        [sys.executable, "-m", "funnel", "run", "--now", NOW],
        cwd=project.root,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert arrived.wait(60)
        time.sleep(0.2)  # the request is on the wire, the row says `sending`
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    fake_sendgrid.delay(0)
    fake_sendgrid.on_mail(None)
    assert funnel("run", "--now", "2026-12-01T16:15:00Z", env=env).code == 1
    [alert] = alerts_sent(fake_sendgrid)
    assert alert["subject"] == "1 email(s) may or may not have gone out"
    assert "will not send them again" in alert_text(alert)


def test_a_heartbeat_that_cannot_be_reached_is_a_warning_only(project: Project, funnel: Run) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with_alerts(project, f"http://127.0.0.1:{port}/ping")
    result = funnel("run", "--now", NOW)
    assert result.code == 0
    assert "warning: the heartbeat at alerts.heartbeat_url could not be reached" in result.err


# --------------------------------------------------------------------------- a new practice folder


def test_init_makes_a_practice_folder_without_example_people(tmp_path: Path, funnel: Run) -> None:
    import stat

    from conftest import REPO

    folder = tmp_path / "srv" / "practice"
    result = funnel("init", str(folder))
    assert result.code == 0, result.err
    assert sorted(p.name for p in folder.iterdir()) == [".env", "email_templates", "sequences.yaml", "signups"]
    assert (folder / "sequences.yaml").read_text() == (REPO / "sequences.yaml").read_text()
    assert "# alerts:" in (folder / "sequences.yaml").read_text()
    assert sorted(p.name for p in (folder / "email_templates").iterdir()) == sorted(
        p.name for p in (REPO / "email_templates").iterdir()
    )
    assert list((folder / "signups").iterdir()) == []
    env = folder / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    [key_line] = [line for line in env.read_text().splitlines() if line.startswith("FUNNEL_SECRET_KEY=")]
    assert len(key_line.split("=", 1)[1]) >= 40
    assert not any("#" in line for line in env.read_text().splitlines() if "=" in line and not line.startswith("#"))

    again = funnel("init", str(tmp_path / "other"))
    other_key = (tmp_path / "other" / ".env").read_text()
    assert again.code == 0 and key_line not in other_key  # a new key each time


def test_init_refuses_a_folder_that_is_not_empty(tmp_path: Path, funnel: Run) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "sequences.yaml").write_text("mine\n")
    result = funnel("init", str(folder))
    assert result.code == 2
    assert "is not an empty folder" in result.err
    assert (folder / "sequences.yaml").read_text() == "mine\n"


def test_sendgrid_skips_reserved_domains_on_its_own_api_host(
    example_project: Project, funnel: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the real api.sendgrid.com: every example person is skipped before any request is made
    # (this test has no network, so a request would fail the emails instead)
    monkeypatch.setenv("FUNNEL_TRANSPORT", "sendgrid")
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.not-a-real-key")
    summary = funnel("run", "--now", NOW, "--json")
    assert summary.code == 0, summary.err
    counts = summary.json()
    assert isinstance(counts, dict)
    assert counts["sent"] == 0 and counts["failed"] == 0 and counts["skipped"] > 0
    shown = funnel("contacts", "show", "ana.reyes@example.test", "--json").json()
    assert isinstance(shown, dict)
    reasons = {s.get("reason") for e in shown["enrollments"] for s in e["steps"] if s["status"] == "skipped"}
    assert "not sent: example.test is a reserved example domain that receives no mail" in reasons


def test_a_test_host_still_receives_reserved_domains(project: Project, funnel: Run, fake_sendgrid: Any) -> None:
    project.write(REGISTRATIONS, HEADER + row("ana"))
    env = {"FUNNEL_TRANSPORT": "sendgrid", "SENDGRID_API_KEY": "SG.test-key", "FUNNEL_SENDGRID_HOST": fake_sendgrid.url}
    assert funnel("run", "--now", NOW, env=env).code == 0
    assert fake_sendgrid.sent_to("ana@example.test") == 1


def test_a_production_install_on_a_fresh_folder(tmp_path: Path, no_env_key: None) -> None:
    """As the README says: `funnel init`, the letters made one's own, cron's `funnel run` and the
    service's `funnel serve` each started bare (no settings in their environment), sharing .env."""
    import os
    import subprocess
    import sys

    from web_server import FunnelServer

    folder = tmp_path / "srv" / "funnel"
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("FUNNEL_", "SENDGRID_"))}

    def funnel_in(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "funnel", *args], cwd=folder, env=bare, capture_output=True, text=True, timeout=120
        )

    made = subprocess.run(
        [sys.executable, "-m", "funnel", "init", str(folder)], env=bare, capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    assert funnel_in("check").returncode == 0
    (folder / "signups" / "webinar-registrations.csv").write_text(HEADER + row("ana"))
    ran = funnel_in("run", "--now", NOW, "--json")
    assert ran.returncode == 0, ran.stderr
    assert '"enrolled": 1' in ran.stdout  # ana only: no example people came with the folder
    messages = list((folder / "outbox").glob("*.eml"))
    assert len(messages) == 1
    token = re.search(r"/u/([^>\s]+)>", messages[0].read_text()).group(1)  # type: ignore[union-attr]

    key = [line for line in (folder / ".env").read_text().splitlines() if line.startswith("FUNNEL_SECRET_KEY=")][0]
    server = FunnelServer(folder, ("--now", NOW), None)
    server.env = bare
    server.start()
    try:
        with server.client() as http:
            health = http.get("/healthz", headers={"accept": "application/json"}).json()
            assert health["key_fingerprint"] == key_fingerprint(key.split("=", 1)[1])
            assert http.get(f"/u/{token}").status_code == 200
            assert http.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code in (200, 303)
    finally:
        server.stop()
    shown = funnel_in("contacts", "show", "ana@example.test", "--json")
    assert '"unsubscribed": true' in shown.stdout
    people = funnel_in("doctor", "--json")
    assert '"example people"' in people.stdout
