"""Running it for real: the `.env` settings file, alerts to the practice, the heartbeat.

Real parts only: `funnel` in-process and as subprocesses, `funnel serve` on
loopback, the fake SendGrid (a real HTTP server) for alert emails, and a tiny
HTTP server standing in for a healthchecks-style heartbeat service.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, Result

from funnel.envfile import key_fingerprint

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
