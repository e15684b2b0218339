"""`funnel serve` through real HTTP: a real subprocess on a free loopback port.

Each test starts the shipped project's server (`funnel_server` fixture) and
talks to it with httpx; state is checked with the real CLI afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from conftest import POSTGRES_ADMIN, Project

NOW = "2026-12-08T16:00:00Z"


def test_healthz_answers_when_the_database_does(funnel_server: Callable[..., Any]) -> None:
    server = funnel_server("--now", NOW)
    with server.client() as http:
        answer = http.get("/healthz")
    assert answer.status_code == 200
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"


def test_healthz_is_503_when_the_database_is_gone(
    funnel_server: Callable[..., Any], postgres_url: str, project: Project
) -> None:
    server = funnel_server("--now", NOW, env={"FUNNEL_DATABASE_URL": postgres_url})
    with server.client() as http:
        assert http.get("/healthz").status_code == 200
        name = postgres_url.rsplit("/", 1)[1]
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        answer = http.get("/healthz")
        assert answer.status_code == 503
        assert "database" in answer.text
