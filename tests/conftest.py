"""Shared fixtures: a temp project folder with the shipped funnel, and ways to run `funnel`."""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner

from funnel.cli import cli

REPO = Path(__file__).resolve().parent.parent
SECRET = "test-secret-key"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's real settings, and never use a proxy for loopback."""
    for name in list(os.environ):
        if name.startswith(("FUNNEL_", "SENDGRID_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FUNNEL_SECRET_KEY", SECRET)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@dataclass
class Project:
    """A temp folder holding sequences.yaml, email_templates/ and signups/."""

    root: Path

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def append(self, relative: str, text: str) -> None:
        with (self.root / relative).open("a", encoding="utf-8") as handle:
            handle.write(text)

    def messages(self) -> list[EmailMessage]:
        """Every .eml in the outbox, parsed, oldest first."""
        if not self.outbox.exists():
            return []
        return [
            email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in sorted(self.outbox.glob("*.eml"))
        ]

    def sent(self) -> list[tuple[str, str, str]]:
        """(to address, sequence, step) for every email in the outbox."""
        result = []
        for path in sorted(self.outbox.glob("*.eml")) if self.outbox.exists() else []:
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            _stamp, sequence, step, _id = path.stem.split("_")
            result.append((str(message["To"].addresses[0].addr_spec), sequence, step))
        return result


REGISTRATIONS = """Email,First Name,Last Name,Webinar Start,Time Zone,Discreet
ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no
"""


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """The shipped sequences.yaml and templates, with empty signup files to fill."""
    root = tmp_path / "practice"
    root.mkdir()
    shutil.copy(REPO / "sequences.yaml", root / "sequences.yaml")
    shutil.copytree(REPO / "email_templates", root / "email_templates")
    (root / "signups").mkdir()
    return Project(root)


@pytest.fixture
def example_project(project: Project) -> Project:
    """The shipped project with the shipped example signups (invented people)."""
    for path in (REPO / "signups" / "examples").iterdir():
        shutil.copy(path, project.root / "signups" / path.name)
    return project


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


@pytest.fixture
def funnel(project: Project) -> Callable[..., Result]:
    """Run the real CLI in-process (fast), in the project folder."""

    def call(*args: str, env: dict[str, str] | None = None) -> Result:
        runner = CliRunner()
        old = Path.cwd()
        os.chdir(project.root)
        try:
            result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        finally:
            os.chdir(old)
        return Result(result.exit_code, result.stdout, result.stderr)

    return call


@pytest.fixture
def funnel_process(project: Project) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real `funnel` console program as a subprocess (exit codes, stderr, signals)."""

    def call(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "funnel", *args],
            cwd=project.root,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return call


@pytest.fixture
def fake_sendgrid() -> Iterator[object]:
    from fake_sendgrid import FakeSendGrid

    server = FakeSendGrid(api_key="SG.test-key")
    server.start()
    try:
        yield server
    finally:
        server.stop()


POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the local server (started by .ci/run), dropped afterwards."""
    import uuid

    import psycopg

    name = f"funnel_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def funnel_server(project: Project) -> Iterator[Callable[..., object]]:
    """Start real `funnel serve` subprocesses in the project folder (free loopback port, /healthz waited for).

    `server = funnel_server("--now", "2026-12-08T16:00:00Z", env={...})`; `server.url`,
    `server.client()`; every server is stopped at the end of the test.
    """
    from web_server import FunnelServer

    started: list[FunnelServer] = []

    def start(*args: str, env: dict[str, str] | None = None) -> FunnelServer:
        server = FunnelServer(project.root, args, env)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()
